"""Benchmarks (not tests): `python -m bench.models`, `python -m bench.gemm`."""
