"""Tests of the benchmarks' own logic (their figures are measured by running them, never in tests)."""
