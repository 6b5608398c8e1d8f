"""Repository meta-tests: dvc.yaml, params.yaml, dvc.lock, code deps, docs and benchmarks agree."""
