"""Benchmarks: scripts that print figures measured in one run (never timed unit tests)."""
