"""Resolution order, deep merge with null removal, conflicts for inventory devices, selectors."""

from __future__ import annotations

import pytest
from kit.fleet import SHA_B, base_files, y

from kernex_core.errors import FleetConflictError
from kernex_core.fleet import (
    SelectorSyntaxError,
    load_fleet,
    merge_patch,
    parse_selector,
)


def test_defaults_only_for_a_device_no_group_matches() -> None:
    state = load_fleet(base_files()).resolve_device("plain", {"ring": "stable"})
    assert {n: b.version for n, b in state.bundles.items()} == {"app": "1.0.0"}
    assert state.config == {"app": {"level": "info", "port": 8080}}
    assert state.groups == ()


def test_groups_apply_by_priority_then_device_file_last() -> None:
    fleet = load_fleet(base_files())
    # canary (10) then lab (20); lab removes app.port with null and adds a bundle.
    state = fleet.resolve_device("x", {"ring": "canary", "site": "bench"})
    assert state.groups == ("canary", "lab")
    assert {n: b.version for n, b in state.bundles.items()} == {"app": "1.1.0", "tools": "2.0"}
    assert state.bundles["app"].sha256 == SHA_B
    assert state.config == {"app": {"level": "debug", "extra": {"x": 1}}}
    # dev-2's file pins app back and overrides the level; its repo label site=lab applies.
    state = fleet.resolve_device("dev-2", {"ring": "canary"})
    assert state.groups == ("canary", "lab")
    assert state.bundles["app"].version == "1.0.0"
    assert state.config["app"]["level"] == "warning"


def test_repo_labels_override_reported_ones() -> None:
    fleet = load_fleet(base_files())
    assert fleet.resolve_device("dev-1", {"ring": "stable"}).groups == ("canary",)


def test_a_group_removes_a_bundle_with_null() -> None:
    files = base_files()
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(b'tools: "2.0"', b"app: null")
    state = load_fleet(files).resolve_device("x", {"site": "lab"})
    assert dict(state.bundles) == {}


def test_resolve_covers_inventory_and_repo_devices() -> None:
    fleet = load_fleet(base_files())
    states = fleet.resolve({"dev-9": {"site": "lab"}, "dev-1": {}})
    assert sorted(states) == ["dev-1", "dev-2", "dev-9"]
    assert states["dev-9"].groups == ("lab",)
    assert states["dev-1"].groups == ("canary",)


def test_devices_with_the_same_labels_share_state_and_digest() -> None:
    fleet = load_fleet(base_files())
    states = fleet.resolve({"a": {"ring": "canary"}, "b": {"ring": "canary"}, "c": {}})
    assert states["a"] is states["b"]
    assert states["a"].digest() == states["b"].digest() != states["c"].digest()


def test_digest_ignores_groups_but_not_config() -> None:
    fleet = load_fleet(base_files())
    a = fleet.resolve_device("a", {})
    files = base_files()
    files["groups/all.yaml"] = y("selector: ''\n")
    b = load_fleet(files).resolve_device("a", {})
    assert b.groups == ("all",)
    assert a.groups == ()
    assert a.digest() == b.digest()
    files["groups/all.yaml"] = y("selector: ''\nconfig: {app: {level: x}}\n")
    assert load_fleet(files).resolve_device("a", {}).digest() != a.digest()


def test_to_dict_is_plain_data() -> None:
    state = load_fleet(base_files()).resolve_device("dev-1", {})
    data = state.to_dict()
    assert data["groups"] == ["canary"]
    assert data["bundles"]["app"]["version"] == "1.1.0"
    assert data["config"] == {"app": {"level": "debug", "port": 8080}}
    assert type(data["config"]) is dict


def test_conflict_for_inventory_device_raises_with_every_device() -> None:
    files = base_files()
    files["groups/eu.yaml"] = y("selector: region=eu\npriority: 10\nbundles: {app: 1.0.0}\n")
    fleet = load_fleet(files)  # no device in the repo has both labels: valid
    inventory = {"d1": {"ring": "canary", "region": "eu"}, "d2": {"ring": "canary", "region": "eu"}}
    with pytest.raises(FleetConflictError) as caught:
        fleet.resolve(inventory)
    [issue] = caught.value.issues
    assert issue.file == "groups/eu.yaml"
    assert "bundles.app for devices 'd1', 'd2'" in issue.message
    with pytest.raises(FleetConflictError):
        fleet.resolve_device("d1", inventory["d1"])
    # Either group alone is fine.
    assert fleet.resolve_device("d3", {"region": "eu"}).bundles["app"].version == "1.0.0"


def test_a_leaf_inside_another_groups_leaf_conflicts() -> None:
    files = base_files()
    files["groups/eu.yaml"] = y("selector: region=eu\npriority: 10\nconfig: {app: plain}\n")
    fleet = load_fleet(files)
    with pytest.raises(FleetConflictError) as caught:
        fleet.resolve_device("d", {"ring": "canary", "region": "eu"})
    assert "config.app " in caught.value.issues[0].message


def test_merge_patch() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "k": 1}
    patch = {"a": {"b": None, "d": {"e": 3}}, "l": [3], "k": {"x": 1}, "gone": None}
    assert merge_patch(target, patch) == {"a": {"c": 2, "d": {"e": 3}}, "l": [3], "k": {"x": 1}}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "k": 1}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("ring=canary", {"ring": "canary"}, True),
        ("ring==canary", {"ring": "stable"}, False),
        ("ring!=canary", {}, True),
        ("ring!=canary", {"ring": "canary"}, False),
        ("region in (eu, us)", {"region": "us"}, True),
        ("region in (eu, us)", {}, False),
        ("site notin (x)", {}, True),
        ("site notin (x)", {"site": "x"}, False),
        ("hw", {"hw": ""}, True),
        ("hw", {}, False),
        ("!legacy", {"legacy": "true"}, False),
        ("ring=canary, region in (eu, us), !legacy, site notin (x), hw",
         {"ring": "canary", "region": "eu", "site": "y", "hw": "rpi"}, True),
        ("example.com/tier=db", {"example.com/tier": "db"}, True),
    ],
)  # fmt: skip
def test_selector_matching(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("selector", "column", "message"),
    [
        ("ring=", None, None),  # the empty value is allowed
        ("ring canary", 5, "expected an operator (=, !=, in, notin) after 'ring', found 'canary'"),
        ("ring in eu", 8, "expected '(' to open a set of values"),
        ("ring in (eu", 11, "expected ',' or ')', found end of selector"),
        ("a=b,,c", 4, "expected a label key, found ','"),
        ("a=b c=d", 4, "expected ',' between requirements, found 'c'"),
        ("a=b; c", 3, "unexpected character ';'"),
        ("!", 1, "expected a label key, found end of selector"),
        ("-a=b", 0, "unexpected character '-'"),
    ],
)
def test_selector_syntax_errors(selector: str, column: int | None, message: str | None) -> None:
    if column is None:
        assert parse_selector(selector).matches({"ring": ""})
        return
    with pytest.raises(SelectorSyntaxError) as caught:
        parse_selector(selector)
    assert (caught.value.column, caught.value.message) == (column, message)
