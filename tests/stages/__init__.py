"""Stage smoke tests: each stage, or a method, run a few steps on the tiny model."""
