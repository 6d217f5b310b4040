"""Micro-benchmarks; run one as `python -m benchmarks.<name>`."""
