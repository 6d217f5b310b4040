__all__ = ['ttypes', 'constants', 'Supervisor']
