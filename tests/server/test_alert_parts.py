"""The pure parts of alerts: signing, backoff, receiver settings."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from kernex_server.alert_config import KINDS, parse_receivers
from kernex_server.alert_delivery import backoff, headers, render, signature, verify
from kernex_server.alert_outbox import devices_summary
from kernex_server.errors import ServerSetupError
from kernex_server.settings import Settings, render_settings_file

SECRET = "s" * 64
GOOD = {"name": "ops", "url": "https://hooks.example.com/k", "secret": SECRET}


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"kind":"test"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == f"sha256={expected}"


def test_a_receiver_accepts_only_an_untouched_recent_delivery() -> None:
    body = render("generic", "k1", {"kind": "test", "summary": "hi"})
    sent = headers(SECRET, "k1", "test", body, now=1700000000.5)
    assert sent["Idempotency-Key"] == "k1"
    assert sent["Kernex-Event"] == "test"
    assert sent["Kernex-Timestamp"] == "1700000000"
    assert verify(SECRET, sent, body, now=1700000100)
    assert not verify(SECRET, sent, body + b" ", now=1700000100)  # body changed
    assert not verify("t" * 64, sent, body, now=1700000100)  # another secret
    assert not verify(SECRET, sent, body, now=1700000000 + 301)  # too old: a replay
    moved = {**sent, "Kernex-Timestamp": "1700000050"}  # timestamp changed
    assert not verify(SECRET, moved, body, now=1700000100)
    assert not verify(SECRET, {}, body, now=1700000100)


def test_slack_gets_text_and_generic_gets_the_whole_alert() -> None:
    alert = {"kind": "rollout.halted", "summary": "rollout 3 halted", "detail": {"rollout": 3}}
    assert b'"text":":rotating_light: Kernex: rollout 3 halted"' in render("slack", "k", alert)
    assert render("generic", "k", alert) == (
        b'{"detail":{"rollout":3},"id":"k","kind":"rollout.halted","summary":"rollout 3 halted"}'
    )


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff(n, base=10, cap=300) for n in range(0, 8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff(10_000, base=10, cap=1800) == 1800  # no overflow after many failures


def test_the_grouped_summary_names_five_and_counts_the_rest() -> None:
    listed = [{"device": f"edge-{i}", "phase": "failed"} for i in range(7)]
    assert devices_summary(listed, 120) == (
        "120 devices failed or rolled back: edge-0 (failed), edge-1 (failed), edge-2 (failed), "
        "edge-3 (failed), edge-4 (failed) and 115 more"
    )
    assert devices_summary(listed[:1], 1) == "1 device failed or rolled back: edge-0 (failed)"


def test_receivers_parse_with_defaults_and_never_show_their_secret() -> None:
    [r] = parse_receivers([GOOD])
    assert (r.format, r.events) == ("generic", KINDS)
    assert SECRET not in repr(r)
    assert "hooks.example.com" not in repr(r)
    [slack] = parse_receivers([{**GOOD, "format": "slack", "events": ["rollout.halted"]}])
    assert slack.wants("rollout.halted")
    assert slack.wants("test")
    assert not slack.wants("devices.failed")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({**GOOD, "secret": ""}, "needs a secret of at least 32 characters"),
        ({k: v for k, v in GOOD.items() if k != "secret"}, "needs a secret"),
        ({**GOOD, "url": "ftp://x"}, "needs an http(s) url"),
        ({**GOOD, "name": "Ops Team"}, "needs a name"),
        ({**GOOD, "format": "teams"}, "format must be one of generic, slack"),
        ({**GOOD, "events": ["rollout.paused"]}, "unknown event kind(s) rollout.paused"),
        ({**GOOD, "poll_interval": 5}, "unknown key(s) poll_interval"),
    ],
)
def test_bad_receivers_are_refused_with_a_hint(table: dict[str, object], message: str) -> None:
    with pytest.raises(ServerSetupError, match=re.escape(message)) as e:
        parse_receivers([table])
    assert e.value.hint


def test_a_missing_secret_gets_a_fresh_one_suggested() -> None:
    with pytest.raises(ServerSetupError) as first:
        parse_receivers([{**GOOD, "secret": ""}])
    with pytest.raises(ServerSetupError) as second:
        parse_receivers([{**GOOD, "secret": ""}])
    assert 'secret = "' in (first.value.hint or "")
    assert first.value.hint != second.value.hint  # generated each time, never a default


def test_two_receivers_may_not_share_a_name() -> None:
    with pytest.raises(ServerSetupError, match="two alert receivers are named 'ops'"):
        parse_receivers([GOOD, GOOD])


def test_server_toml_declares_receivers_as_tables_at_its_end(tmp_path: Path) -> None:
    text = render_settings_file("/srv/fleet", "main")
    assert "# [[alerts]]" in text
    (tmp_path / "server.toml").write_text(
        text + '\n[[alerts]]\nname = "ops"\nurl = "https://hooks.example.com/k"\n'
        f'secret = "{SECRET}"\n\n[[alerts]]\nname = "chat"\nformat = "slack"\n'
        f'url = "https://hooks.slack.com/services/T/B/X"\nsecret = "{SECRET}"\n'
    )
    settings = Settings.load(tmp_path, {})
    assert [r.name for r in settings.alerts] == ["ops", "chat"]
    assert Settings.load(tmp_path.parent / tmp_path.name, {}).alerts[1].format == "slack"
