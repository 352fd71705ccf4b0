"""Loading and validating fleet files: every error kind, located by file, line and column."""

from __future__ import annotations

import pytest
from kit.fleet import SHA_A, SHA_B, base_files, y

from kernex_core.errors import FleetInvalidError, ValidationIssue
from kernex_core.fleet import (
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    RolloutPolicy,
    is_fleet_file,
    load_fleet,
)


def issues_of(files: dict[str, bytes]) -> list[ValidationIssue]:
    with pytest.raises(FleetInvalidError) as caught:
        load_fleet(files)
    return caught.value.issues


def only_issue(files: dict[str, bytes]) -> ValidationIssue:
    issues = issues_of(files)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


def test_valid_fleet_loads_with_settings_catalog_groups_and_devices() -> None:
    fleet = load_fleet(base_files())
    assert fleet.settings.name == "test-fleet"
    assert fleet.settings.offline_after == 120
    assert fleet.settings.manifest_ttl == 86400
    assert fleet.settings.rollout == RolloutPolicy(waves=(50, 100), failure_threshold=5)
    assert fleet.catalog["app"]["1.1.0"].sha256 == SHA_B
    assert fleet.catalog["tools"]["2.0"].url == "https://example.com/t.tgz"
    assert fleet.groups["canary"].priority == 10
    # The group's rollout block applies over the fleet's defaults, field by field.
    assert fleet.groups["canary"].rollout == RolloutPolicy(
        waves=(5, 25, 100), failure_threshold=5, promotion="manual"
    )
    assert fleet.groups["lab"].rollout == fleet.settings.rollout
    assert fleet.devices["dev-1"].key_fingerprint is not None
    assert fleet.devices["dev-2"].bundles == {"app": "1.0.0"}


def test_policies_are_unset_when_absent_so_the_server_decides() -> None:
    files = base_files()
    files["kernex.yaml"] = y("apiVersion: kernex/v1\nname: f\n")
    files.pop("groups/canary.yaml")
    files.pop("groups/lab.yaml")
    files.pop("devices/dev-2.yaml")
    fleet = load_fleet(files)
    assert fleet.settings.offline_after is None  # server.toml's offline_after applies
    assert fleet.settings.manifest_ttl is None
    assert fleet.settings.rollout is None


def test_other_files_are_ignored_and_patterns_are_exact() -> None:
    files = base_files()
    files["README.md"] = b"\xff not yaml"
    files["groups/sub/x.yaml"] = b": bad"
    files["devices/notes.txt"] = b"x"
    load_fleet(files)
    assert is_fleet_file("devices/a.yaml")
    assert not is_fleet_file("devices/a.yml")
    assert not is_fleet_file("other/a.yaml")


def test_empty_device_file_is_a_device_without_settings() -> None:
    files = base_files()
    files["devices/bare.yaml"] = b"# nothing yet\n"
    assert load_fleet(files).devices["bare"].labels == {}


def test_unknown_key_has_line_and_did_you_mean() -> None:
    files = base_files()
    files["groups/canary.yaml"] = files["groups/canary.yaml"].replace(b"priority:", b"priorty:")
    issue = only_issue(files)
    assert issue.location() == "groups/canary.yaml:2:1"
    assert issue.message == "unknown key 'priorty'"
    assert issue.key_path == "groups.canary.priorty"
    assert issue.hint == "Did you mean 'priority'?"


def test_nested_unknown_key_in_rollout() -> None:
    files = base_files()
    files["groups/canary.yaml"] += b"  autorollback: true\n"
    issue = only_issue(files)
    assert (issue.file, issue.line, issue.column) == ("groups/canary.yaml", 11, 3)
    assert issue.hint == "Did you mean 'auto_rollback'?"
    assert issue.key_path == "groups.canary.rollout.autorollback"


def test_wrong_types_point_at_the_value() -> None:
    files = base_files()
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(b"priority: 20", b"priority: high")
    files["devices/dev-1.yaml"] = files["devices/dev-1.yaml"].replace(b"canary", b"yes")
    issues = issues_of(files)
    assert [str(i) for i in issues] == [
        "devices/dev-1.yaml:2:9: expected a string, found boolean [devices.dev-1.labels.ring]",
        "groups/lab.yaml:2:11: expected an integer, found string [groups.lab.priority]",
    ]
    assert issues[0].hint is not None
    assert "Quote" in issues[0].hint


def test_unquoted_numeric_version_is_explained() -> None:
    files = base_files()
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(b'"2.0"', b"2.0")
    issue = only_issue(files)
    assert issue.location() == "groups/lab.yaml:4:10"
    assert issue.message == "expected a string, found number"


def test_version_missing_from_catalog() -> None:
    files = base_files()
    files["groups/canary.yaml"] = files["groups/canary.yaml"].replace(b"1.1.0", b"1.2.0")
    issue = only_issue(files)
    assert issue.location() == "groups/canary.yaml:4:8"
    assert issue.message == "version '1.2.0' of bundle 'app' is not in the catalog"
    assert issue.hint is not None
    assert "1.0.0, 1.1.0" in issue.hint


def test_bundle_missing_from_catalog_suggests_a_close_name() -> None:
    files = base_files()
    files["kernex.yaml"] = files["kernex.yaml"].replace(b"    app: 1.0.0", b"    apps: 1.0.0")
    issue = only_issue(files)
    assert issue.location() == "kernex.yaml:8:5"
    assert issue.message == "bundle 'apps' is not in the catalog"
    assert issue.hint is not None
    assert issue.hint.startswith("Did you mean 'app'?")


def test_malformed_sha256() -> None:
    files = base_files()
    files["bundles/app.yaml"] = files["bundles/app.yaml"].replace(SHA_B.encode(), b"ABC")
    issue = only_issue(files)
    assert issue.location() == "bundles/app.yaml:4:19"
    assert issue.key_path == 'bundles.app.versions."1.1.0".sha256'
    assert "64 lowercase hex" in issue.message


def test_selector_syntax_error_has_the_column_inside_the_selector() -> None:
    files = base_files()
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(
        b"site in (lab, bench), !retired", b"site in (lab bench)"
    )
    issue = only_issue(files)
    # "selector: " is 10 columns; the unexpected "bench" is at offset 13 of the selector.
    assert issue.location() == "groups/lab.yaml:1:24"
    assert issue.message == "selector syntax error: expected ',' or ')', found 'bench'"


def test_selector_error_column_counts_the_opening_quote() -> None:
    files = base_files()
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(
        b"site in (lab, bench), !retired", b'"ring = = x"'
    )
    issue = only_issue(files)
    assert issue.location() == "groups/lab.yaml:1:19"


def test_device_id_clash_by_case() -> None:
    files = base_files()
    files["devices/Dev-1.yaml"] = files["devices/dev-1.yaml"]
    issues = issues_of(files)
    messages = {i.message for i in issues}
    assert "device id 'dev-1' clashes with devices/Dev-1.yaml" in messages
    assert "'Dev-1' is not a valid device id (from the file name)" in messages


def test_equal_priority_groups_setting_the_same_key_conflict() -> None:
    files = base_files()
    files["groups/blue.yaml"] = y(
        """
        selector: ring=canary
        priority: 10
        config:
          app:
            level: error
        """
    )
    issue = only_issue(files)
    assert issue.location() == "groups/canary.yaml:7:5"
    assert issue.message == (
        "groups 'blue' and 'canary' both have priority 10 and both set config.app.level "
        "for device 'dev-1'"
    )
    assert issue.hint is not None
    assert "priority" in issue.hint


def test_equal_priority_without_overlap_is_fine() -> None:
    files = base_files()
    files["groups/blue.yaml"] = y("selector: ring=canary\npriority: 10\nconfig: {other: 1}\n")
    load_fleet(files)


def test_aliases_are_rejected() -> None:
    files = base_files()
    files["groups/lab.yaml"] = y(
        """
        selector: &s site=lab
        description: *s
        """
    )
    issue = only_issue(files)
    assert issue.location() == "groups/lab.yaml:2:14"
    assert issue.message == "YAML alias '*s' is not allowed"


def test_billion_laughs_is_refused_without_expansion() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    files = base_files()
    files["devices/dev-1.yaml"] = ("\n".join(lines) + "\n").encode()
    issues = issues_of(files)
    assert all(i.file == "devices/dev-1.yaml" for i in issues)
    assert all("alias" in i.message for i in issues)
    assert len(issues) == 72


def test_file_size_limit() -> None:
    files = base_files()
    files["devices/big.yaml"] = b"labels: {}\n" + b"#" * MAX_FILE_BYTES
    issue = only_issue(files)
    assert issue.file == "devices/big.yaml"
    assert "over the 1024 KiB limit" in issue.message


def test_total_size_limit() -> None:
    files = base_files()
    chunk = b"#" * (MAX_FILE_BYTES - 10)
    for i in range(MAX_TOTAL_BYTES // len(chunk) + 1):
        files[f"devices/d{i}.yaml"] = chunk
    issue = only_issue(files)
    assert "over the 64 MiB limit" in issue.message


def test_non_utf8_is_located() -> None:
    files = base_files()
    files["devices/dev-1.yaml"] = b"labels:\n  ring: caf\xe9\n"
    issue = only_issue(files)
    assert issue.location() == "devices/dev-1.yaml:2:12"
    assert issue.message == "file is not valid UTF-8"


def test_yaml_syntax_error_has_its_line() -> None:
    files = base_files()
    files["groups/canary.yaml"] = b"selector: ring=canary\npriority: [10\nbundles: {}\n"
    issue = only_issue(files)
    assert issue.file == "groups/canary.yaml"
    assert issue.line == 3
    assert issue.message.startswith("YAML syntax error")


def test_top_level_must_be_a_mapping() -> None:
    files = base_files()
    files["groups/canary.yaml"] = b"- selector: ring=canary\n"
    issue = only_issue(files)
    assert str(issue) == "groups/canary.yaml:1:1: expected a mapping, found list [groups.canary]"


def test_duplicate_keys_are_reported() -> None:
    files = base_files()
    files["devices/dev-1.yaml"] = b"labels:\n  ring: canary\n  ring: stable\n"
    issue = only_issue(files)
    assert issue.location() == "devices/dev-1.yaml:3:3"
    assert issue.message == "duplicate key 'ring'"


def test_missing_kernex_yaml_and_missing_required_key() -> None:
    files = base_files()
    del files["kernex.yaml"]
    files["groups/lab.yaml"] = b"priority: 3\n"
    issues = issues_of(files)
    assert [(i.file, i.message) for i in issues] == [
        ("groups/lab.yaml", "missing required key 'selector'"),
        ("kernex.yaml", "kernex.yaml is missing"),
    ]


def test_rollout_rules() -> None:
    files = base_files()
    files["groups/canary.yaml"] = y(
        """
        selector: ring=canary
        rollout:
          waves: [25%, 5%, 100%]
          failure_threshold: 150%
          pause: soon
          promotion: sometimes
        """
    )
    issues = issues_of(files)
    assert [(i.line, i.key_path) for i in issues] == [
        (3, "groups.canary.rollout.waves[1]"),
        (4, "groups.canary.rollout.failure_threshold"),
        (5, "groups.canary.rollout.pause"),
        (6, "groups.canary.rollout.promotion"),
    ]


def test_last_wave_must_be_100_and_manual_excludes_pause() -> None:
    files = base_files()
    files["groups/canary.yaml"] = y(
        """
        selector: ring=canary
        rollout:
          waves: [5%, 50%]
          pause: 10m
          promotion: manual
        """
    )
    issues = issues_of(files)
    assert [i.message for i in issues] == [
        "the last wave must be 100%",
        "a pause and manual promotion exclude each other",
    ]


def test_bundle_name_must_match_its_file_and_device_fingerprint_format() -> None:
    files = base_files()
    files["bundles/app.yaml"] = files["bundles/app.yaml"].replace(b"name: app", b"name: ap")
    files["devices/dev-1.yaml"] = files["devices/dev-1.yaml"].replace(b"SHA256:", b"MD5:")
    issues = issues_of(files)
    assert [(i.location(), i.key_path) for i in issues] == [
        ("bundles/app.yaml:1:7", "bundles.app.name"),
        ("devices/dev-1.yaml:3:18", "devices.dev-1.key_fingerprint"),
    ]


def test_every_issue_is_reported_at_once() -> None:
    files = base_files()
    files["kernex.yaml"] = files["kernex.yaml"].replace(b"2m", b"two minutes")
    files["groups/lab.yaml"] = files["groups/lab.yaml"].replace(b"priority: 20", b"prio: 20")
    files["devices/dev-2.yaml"] = files["devices/dev-2.yaml"].replace(b"1.0.0", b"9.9.9")
    files["bundles/tools.yaml"] = files["bundles/tools.yaml"].replace(b"size: 5", b"size: -5")
    issues = issues_of(files)
    assert [i.file for i in issues] == [
        "bundles/tools.yaml",
        "devices/dev-2.yaml",
        "groups/lab.yaml",
        "kernex.yaml",
    ]


def test_config_rejects_dates_and_non_string_keys() -> None:
    files = base_files()
    files["devices/dev-1.yaml"] += b"config:\n  since: 2024-01-01\n  1: one\n"
    issues = issues_of(files)
    assert [(i.line, i.message) for i in issues] == [
        (5, "a date is not allowed in config"),
        (6, "config key 1 is not a string"),
    ]


def test_signatures_in_catalog_are_parsed() -> None:
    files = base_files()
    files["bundles/app.yaml"] = y(
        f"""
        name: app
        versions:
          1.0.0:
            sha256: {SHA_A}
            size: 10
            release_signatures: [{{keyid: "SHA256:k", sig: "c2ln"}}]
          1.1.0: {{sha256: {SHA_B}, size: 11, release_signatures: [{{keyid: k, sig: "!!"}}]}}
        """
    )
    issue = only_issue(files)
    assert issue.message == "sig must be base64"
    assert issue.line == 7
    files["bundles/app.yaml"] = files["bundles/app.yaml"].replace(b'"!!"', b'"c2ln"')
    entry = load_fleet(files).catalog["app"]["1.0.0"]
    assert entry.release_signatures[0].sig == b"sig"
