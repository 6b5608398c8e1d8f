"""The slow tier (`make test-slow`): end-to-end DVC runs and longer training. conftest.py marks every test here slow."""
