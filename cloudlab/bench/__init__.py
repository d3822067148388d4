"""Benchmarks: every figure is measured, written to a results file, and set against a baseline
run in the same process (never asserted in a timed test)."""
