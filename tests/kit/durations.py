"""Durations every entry point reads alike: kernex.yaml, ``--timeout`` and ``audit --since``
(tests/unit/test_core_formats.py and tests/cli/test_cli_durations.py)."""

DURATIONS = {
    "90": 90,
    "90s": 90,
    "5m": 300,
    "1h30m": 5400,
    "1h 30m": 5400,
    " 7d ": 7 * 86400,
    "2w": 14 * 86400,
    "30 s": 30,
    "1d12h": 36 * 3600,
}
NOT_DURATIONS = ["", " ", "x", "soon", "1.5h", "-5m", "+5m", "1y", "h", "1h30", "5m x", "1 2s"]
