"""Benchmarks of the pipeline and its trainers (not part of the test suite): `python -m bench.run`."""
