"""Unit tests: one module's functions, on hand-computed values and small fixtures."""
