"""Benchmarks (they report, never assert): run one as `python -m benchmarks.<name>`, or all
of them with `make bench` (`python -m benchmarks.run`), which writes results.md/.json."""
