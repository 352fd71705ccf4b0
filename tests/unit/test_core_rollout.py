"""Rollout arithmetic (kernex_core.rollout): policy lookup, wave membership, failure
thresholds, tallies, the next step of an active rollout and the operator's acts."""

from __future__ import annotations

from typing import Any

import pytest
from kit.fleet import base_files

from kernex_core.fleet import load_fleet
from kernex_core.rollout import (
    ABORTED,
    COMPLETE,
    COMPLETED,
    FLEET_DEFAULT,
    HALT,
    HALTED,
    PAUSED,
    PROMOTE,
    RUNNING,
    MemberReport,
    act_refusal,
    by_policy,
    failures_allowed,
    halt_reason,
    next_step,
    policy_for,
    progress,
    tally,
    wave_ready,
    waves_of,
)

POLICY: dict[str, Any] = {
    "waves": [20, 100],
    "failure_threshold": 10,
    "pause": 60,
    "promotion": "auto",
    "auto_rollback": False,
}


def member(
    device_id: str,
    wave: int = 0,
    *,
    new: int | None = 2,
    reported: int | None = 2,
    phase: str | None = "healthy",
    online: bool = True,
    rolled_back: bool = False,
) -> MemberReport:
    return MemberReport(device_id, wave, new, reported, phase, online, rolled_back)


def test_wave_membership_is_stable_and_exact() -> None:
    ids = [f"d-{i}" for i in range(40)]
    first = waves_of("stable", ids, (10, 50, 100))
    assert sum(1 for w in first.values() if w == 0) == 4
    assert sum(1 for w in first.values() if w <= 1) == 20
    assert waves_of("stable", reversed(ids), (10, 50, 100)) == first  # order does not matter
    assert waves_of("other", ids, (10, 50, 100)) != first  # each group has its own canaries
    tiny = waves_of("stable", ["only"], (5, 100))
    assert tiny == {"only": 0}  # a first wave always has a device


@pytest.mark.parametrize(
    ("admitted", "threshold", "allowed"),
    [(1, 10, 0), (9, 10, 0), (10, 10, 1), (19, 10, 1), (20, 10, 2), (3, 50, 1), (4, 100, 4)],
)
def test_failures_allowed_is_the_floor_of_the_threshold(
    admitted: int, threshold: int, allowed: int
) -> None:
    assert failures_allowed(admitted, threshold) == allowed


def test_tally_counts_each_member_once_by_its_report() -> None:
    t = tally(
        [
            member("healthy"),
            member("failed", phase="failed"),
            member("failed-old", reported=1, phase="failed"),  # a failure of the old serial
            member("pending", reported=1, phase="healthy"),
            member("offline", reported=1, online=False),
            member("back", phase="rolled_back", rolled_back=True),
            member("waiting", wave=1, new=None, reported=1),
        ],
        2,
    )
    first, second = t.waves
    assert first.to_dict() == {
        "size": 6,
        "admitted": True,
        "healthy": 1,
        "failed": 2,  # a device that rolled itself back failed, whatever the server did
        "pending": 2,
        "offline": 1,
        "rolled_back": 0,
    }
    assert (second.size, second.admitted) == (1, False)
    assert (t.admitted, t.failed, t.unsettled) == (6, 2, 2)


def test_a_wave_is_ready_with_evidence_and_nothing_online_pending() -> None:
    assert wave_ready(tally([member("a"), member("b", online=False, reported=1)], 2), 0)
    assert not wave_ready(tally([member("a"), member("b", reported=1)], 2), 0)
    assert not wave_ready(tally([member("a", online=False, reported=1)], 2), 0)


def step(members: list[MemberReport], **changes: Any) -> str | None:
    position: dict[str, Any] = {
        "state": RUNNING,
        "wave": 0,
        "policy": POLICY,
        "failure_allowance": 0,
        "wave_started_at": 1000.0,
        "now": 1100.0,
    }
    position.update(changes)
    return next_step(tally(members, len(position["policy"]["waves"])), **position)


def test_next_step() -> None:
    canary, rest = member("c"), member("r", wave=1, new=None, reported=1)
    assert step([canary, rest]) == PROMOTE
    assert step([canary, rest], now=1059.0) is None  # the pause has not passed
    assert step([canary, rest], state=PAUSED) is None
    assert step([canary, rest], policy={**POLICY, "promotion": "manual"}) is None
    assert step([canary, member("r", wave=1)], wave=1) == COMPLETE
    failed = member("c", phase="failed")
    assert step([failed, rest]) == HALT
    assert step([failed, rest], state=PAUSED) == HALT  # a paused rollout still halts
    assert step([failed, rest, member("c2")], failure_allowance=1) == PROMOTE


def test_halt_reason_and_progress() -> None:
    t = tally([member("a", phase="failed"), member("b", wave=1, new=None)], 2)
    assert halt_reason(t, POLICY) == "1 of 1 admitted devices failed (threshold 10%: 0 allowed)"
    manual = {**POLICY, "promotion": "manual"}
    ready = tally([member("a"), member("b", wave=1, new=None)], 2)
    shown = progress(ready, state=RUNNING, wave=0, policy=manual)
    assert shown["awaiting_promotion"] is True
    assert [w["percent"] for w in shown["waves"]] == [20, 100]
    assert (shown["failed"], shown["failures_allowed"]) == (0, 0)
    assert progress(ready, state=RUNNING, wave=0, policy=POLICY)["awaiting_promotion"] is False


def test_the_highest_priority_group_with_a_rollout_governs_else_the_fleet() -> None:
    fleet = load_fleet(base_files())
    canary = fleet.resolve_device("dev-1", {"ring": "canary"})
    lab = fleet.resolve_device("dev-2", {"site": "lab"})
    loose = fleet.resolve_device("dev-3", {})
    default = fleet.settings.rollout
    assert default is not None
    found = policy_for(fleet, canary)
    assert found is not None
    assert found[0] == "canary"
    assert found[1]["waves"] == [5, 25, 100]
    # with a fleet default, every group has a rollout: lab's is the default
    assert policy_for(fleet, lab) == ("lab", default.to_dict())
    assert policy_for(fleet, loose) == (FLEET_DEFAULT, default.to_dict())
    desired = {"dev-1": canary, "dev-2": lab, "dev-3": loose}
    at_once, staged = by_policy(fleet, desired, ["dev-1", "dev-2", "dev-3"])
    assert at_once == []
    assert {group: ids for group, (_, ids) in staged.items()} == {
        "canary": ["dev-1"],
        "lab": ["dev-2"],
        FLEET_DEFAULT: ["dev-3"],
    }


def test_without_any_rollout_changes_apply_at_once() -> None:
    files = base_files()
    kernex_yaml = files["kernex.yaml"].decode()
    files["kernex.yaml"] = kernex_yaml[: kernex_yaml.index("rollout:")].encode()
    fleet = load_fleet(files)
    lab = fleet.resolve_device("dev-2", {"site": "lab"})
    assert policy_for(fleet, lab) is None
    canary = fleet.resolve_device("dev-1", {"ring": "canary"})
    at_once, staged = by_policy(fleet, {"dev-1": canary, "dev-2": lab}, ["dev-1", "dev-2"])
    assert at_once == ["dev-2"]
    assert list(staged) == ["canary"]


def test_operator_acts_follow_the_state_machine() -> None:
    assert act_refusal(7, RUNNING, "pause") is None
    assert act_refusal(7, HALTED, "resume") is None
    assert act_refusal(7, PAUSED, "promote") is None
    assert act_refusal(7, HALTED, "abort") is None
    assert act_refusal(7, PAUSED, "pause") == (
        "rollout 7 is paused; only a running rollout can be paused"
    )
    assert act_refusal(7, COMPLETED, "resume") == (
        "rollout 7 is completed; only a paused or halted rollout can be resumed"
    )
    assert act_refusal(7, ABORTED, "abort") is not None
