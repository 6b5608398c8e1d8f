"""The tests, laid out like the code: unit/ (one module's functions, on hand-computed values), stages/ (a stage
run a few steps on a tiny model), slow/ (end-to-end DVC runs and longer training: every test there, and only there, is
marked slow by conftest.py), repo/ (the repository's own consistency: dvc.yaml, params, lock, docs)."""
