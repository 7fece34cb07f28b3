"""Entry points: `eartalk <command>` and `python -m jobs.<command>` (for `ray job submit`).

Thin scripts only; nothing imports from jobs/ (tests/test_layout.py enforces it).
"""
