"""The test suite is a package, so every module is imported once under one
name (tests.test_sweep, also used by tests/faults/helpers.py)."""
