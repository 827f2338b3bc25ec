"""Benchmarks: `python -m bench` (`make bench`) runs every `bench/*_bench.py` module's `main()`."""
