"""Benchmarks of keyrotor (run on purpose: ``make bench``; not part of the test suite)."""
