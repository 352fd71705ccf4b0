"""redact_url / redact_text: no token of a repository URL survives."""

from __future__ import annotations

import pytest
from kit.git import quiet_home  # noqa: F401 - autouse fixture: no outside Git config

from kernex_git import GitCommandError, GitError, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:TOKEN@host/fleet.git", "https://***@host/fleet.git"),
        ("https://TOKEN@host:8443/fleet.git", "https://***@host:8443/fleet.git"),
        ("https://user:p@ss@host/fleet.git", "https://***@host/fleet.git"),
        ("ssh://git@host/fleet.git", "ssh://***@host/fleet.git"),
        ("https://host/fleet.git", "https://host/fleet.git"),
        ("git@github.com:org/fleet.git", "git@github.com:org/fleet.git"),
        ("/srv/fleet", "/srv/fleet"),
        ("file:///srv/fleet", "file:///srv/fleet"),
    ],
)
def test_redact_url_cuts_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_finds_every_url_in_a_message() -> None:
    text = (
        "fatal: unable to access 'https://user:TOKEN@host/fleet.git/': 403\n"
        "remote: see https://x-access-token:T2@host/y and mail ops@example.com"
    )
    shown = redact_text(text)
    assert "TOKEN" not in shown
    assert "T2" not in shown
    assert "'https://***@host/fleet.git/'" in shown
    assert "ops@example.com" in shown  # not a URL: left alone


def test_git_errors_redact_their_message_hint_and_stderr() -> None:
    exc = GitCommandError(
        "cannot fetch https://u:TOKEN@h/f.git",
        returncode=128,
        stderr="fatal: https://u:TOKEN@h/f.git not found",
        hint="check https://u:TOKEN@h/f.git",
    )
    assert isinstance(exc, GitError)
    for text in (exc.message, str(exc), exc.stderr, exc.hint or ""):
        assert "TOKEN" not in text
        assert "https://***@h/f.git" in text
