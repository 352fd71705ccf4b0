"""The shared text formats: one duration grammar, identifier patterns that end at ``\\Z``."""

from __future__ import annotations

import pytest
from kit.durations import DURATIONS, NOT_DURATIONS

from kernex_core.formats import NAME_RE, SHA256_RE, VERSION_RE, parse_duration


@pytest.mark.parametrize(("text", "seconds"), DURATIONS.items())
def test_durations_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", NOT_DURATIONS)
def test_not_durations_are_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 90s, 5m, 1h30m"):
        parse_duration(text)


def test_zero_is_a_duration_and_the_caller_decides() -> None:
    assert parse_duration("0") == 0
    assert parse_duration("0s") == 0


def test_identifier_patterns() -> None:
    assert NAME_RE.match("agent-tools.v2")
    assert not NAME_RE.match("App")
    assert not NAME_RE.match("app\n")
    assert VERSION_RE.match("1.4.0+build~rc1")
    assert not VERSION_RE.match("-1.0")
    assert SHA256_RE.match("0" * 64)
    assert not SHA256_RE.match("A" * 64)
    assert not SHA256_RE.match("0" * 64 + "\n")
