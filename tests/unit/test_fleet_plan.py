"""Plans: bundle and config changes classified per device, groups joined and left."""

from __future__ import annotations

import pytest

from kernex_core.fleet import BundleVersion, DesiredState, compare_versions, compute_plan

SHA1, SHA2 = "1" * 64, "2" * 64


def state(bundles: dict[str, str], config: dict[str, object] | None = None,
          groups: tuple[str, ...] = (), sha: str = SHA1) -> DesiredState:  # fmt: skip
    return DesiredState(
        bundles={n: BundleVersion(n, v, sha, 1) for n, v in bundles.items()},
        config=config or {},
        groups=groups,
    )


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("1.10.0", "1.9.0", 1),
        ("1.0", "1.0.0", 0),
        ("1.4.0-rc1", "1.4.0", -1),
        ("1.4.0-rc2", "1.4.0-rc10", -1),
        ("1.4.0", "1.4.0.post1", -1),
        ("v2", "1.99", 1),
        ("2024.01.5", "2024.1.10", -1),
        ("main", "dev", 1),
        ("1.0+build7", "1.0", 0),
    ],
)
def test_compare_versions(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order
    assert compare_versions(b, a) == -order


def test_bundle_changes_are_classified_and_flagged() -> None:
    base = {"d": state({"up": "1.9", "down": "2.0", "gone": "1", "same": "1", "swap": "1"})}
    head = {"d": state({"up": "1.10", "down": "1.5", "new": "1", "same": "1"})}
    head["d"] = DesiredState(
        bundles={**head["d"].bundles, "swap": BundleVersion("swap", "1", SHA2, 1)},
        config={},
        groups=(),
    )
    plan = compute_plan(base, head)
    [device] = plan.devices
    kinds = {b.name: (b.kind, b.warning) for b in device.bundles}
    assert kinds == {
        "up": ("upgraded", False),
        "down": ("downgraded", True),
        "gone": ("removed", True),
        "new": ("added", False),
        "swap": ("replaced", True),
    }
    assert device.warning
    summary = plan.summary()
    assert summary["bundles_downgraded"] == 1
    assert summary["bundles_removed"] == 1
    assert summary["devices_changed"] == 1


def test_config_changes_use_dotted_paths() -> None:
    base = {"d": state({}, {"app": {"level": "info", "port": 1, "old": {"x": 1}}, "l": [1]})}
    head = {"d": state({}, {"app": {"level": "debug", "port": 1, "new": True}, "l": [1, 2]})}
    [device] = compute_plan(base, head).devices
    assert [(c.path, c.kind, c.old, c.new) for c in device.config] == [
        ("app.level", "changed", "info", "debug"),
        ("app.new", "added", None, True),
        ("app.old.x", "removed", 1, None),
        ("l", "changed", [1], [1, 2]),
    ]


def test_groups_joined_and_left_and_devices_added_and_removed() -> None:
    shared = state({"a": "1"}, groups=("all",))
    base = {"stay": shared, "same": shared, "old": shared}
    head = {"stay": state({"a": "1"}, groups=("canary",)), "same": shared, "fresh": shared}
    plan = compute_plan(base, head)
    by_id = {d.device_id: d for d in plan.devices}
    assert sorted(by_id) == ["fresh", "old", "stay"]
    assert by_id["stay"].groups_joined == ("canary",)
    assert by_id["stay"].groups_left == ("all",)
    assert not by_id["stay"].state_changes
    assert by_id["fresh"].status == "added"
    assert by_id["old"].status == "removed"
    assert by_id["old"].warning
    assert plan.unchanged == 1
    data = plan.to_dict()
    assert data["has_changes"] is True
    assert data["summary"]["devices_added"] == 1


def test_no_changes() -> None:
    s = state({"a": "1"}, {"k": 1})
    plan = compute_plan({"d": s}, {"d": state({"a": "1"}, {"k": 1})})
    assert not plan.has_changes
    assert plan.to_dict()["devices"] == []
    assert plan.unchanged == 1


def test_type_change_of_equal_value_is_a_change() -> None:
    [device] = compute_plan({"d": state({}, {"k": 1})}, {"d": state({}, {"k": True})}).devices
    assert device.config[0].kind == "changed"
