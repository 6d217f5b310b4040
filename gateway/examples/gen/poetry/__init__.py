__all__ = ['ttypes', 'constants', 'Poetry']
