"""``bundles/*.yaml``: the bundle catalog, each version with its sha256, size and release
signatures."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from kernex_core.envelope import Signature
from kernex_core.fleet.checks import FORMAT_HINTS, Checker, file_stem
from kernex_core.fleet.model import BundleVersion
from kernex_core.fleet.source import IssueCollector, KeyPath
from kernex_core.formats import NAME_RE, SHA256_RE, VERSION_RE

BUNDLE_KEYS = frozenset({"name", "description", "versions"})
VERSION_KEYS = frozenset({"sha256", "size", "release_signatures", "url"})
SIGNATURE_KEYS = frozenset({"keyid", "sig"})


def read_catalog(
    paths: list[str],
    values: Mapping[str, Any],
    collector: IssueCollector,
    known_versions: dict[str, set[str]],
) -> dict[str, dict[str, BundleVersion]]:
    """The bundle catalog from ``bundles/*.yaml``; each file's versions go into
    ``known_versions`` even when they have errors, so a reference is reported once."""
    catalog: dict[str, dict[str, BundleVersion]] = {}
    for path in paths:
        stem = file_stem(path)
        c = Checker(collector, path)
        if not NAME_RE.match(stem):
            c.issue(
                (),
                f"'{stem}' is not a valid bundle name (from the file name)",
                FORMAT_HINTS["bundle name"],
            )
        known_versions[stem] = set()
        if path not in values:
            continue
        doc = c.mapping(values[path], (), BUNDLE_KEYS, ("name", "versions"))
        if doc is None:
            continue
        if "name" in doc and doc["name"] != stem:
            c.issue(
                ("name",),
                f"name is {doc['name']!r} but the file is {path}",
                f"Set `name: {stem}`, or rename the file to match.",
            )
        if "description" in doc:
            c.string(doc["description"], ("description",))
        versions = c.mapping(doc.get("versions", {}), ("versions",)) or {}
        entries: dict[str, BundleVersion] = {}
        for version, spec in versions.items():
            if not isinstance(version, str):
                continue  # reported by mapping()
            known_versions[stem].add(version)
            entry = _bundle_version(c, stem, version, spec)
            if entry is not None:
                entries[version] = entry
        catalog[stem] = entries
    return catalog


def _bundle_version(c: Checker, name: str, version: str, value: Any) -> BundleVersion | None:
    path: KeyPath = ("versions", version)
    if not VERSION_RE.match(version):
        c.issue(path, f"'{version}' is not a valid version", FORMAT_HINTS["version"], at_key=True)
    spec = c.mapping(value, path, VERSION_KEYS, ("sha256", "size"))
    if spec is None or "sha256" not in spec or "size" not in spec:
        return None
    sha = spec["sha256"]
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        c.issue(
            (*path, "sha256"),
            f"sha256 must be 64 lowercase hex digits, found {sha!r}",
            FORMAT_HINTS["sha256"],
        )
        sha = None
    size = c.integer(spec["size"], (*path, "size"), minimum=0)
    url = spec.get("url")
    if url is not None and not (isinstance(url, str) and url):
        c.wrong_type((*path, "url"), url, "a string")
        url = None
    signatures = _signatures(c, (*path, "release_signatures"), spec.get("release_signatures"))
    if sha is None or size is None or signatures is None:
        return None
    return BundleVersion(name, version, sha, size, signatures, url)


def _signatures(c: Checker, path: KeyPath, value: Any) -> tuple[Signature, ...] | None:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.wrong_type(path, value, "a list")
        return None
    signatures: list[Signature] = []
    good = True
    for i, item in enumerate(value):
        entry = c.mapping(item, (*path, i), SIGNATURE_KEYS, ("keyid", "sig"))
        if entry is None or "keyid" not in entry or "sig" not in entry:
            good = False
            continue
        keyid = c.string(entry["keyid"], (*path, i, "keyid"))
        sig = entry["sig"]
        try:
            raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            c.issue(
                (*path, i, "sig"),
                "sig must be base64",
                "Copy the signature as `kernex bundle build --sign-key` wrote it.",
            )
        if keyid is None or raw is None:
            good = False
            continue
        signatures.append(Signature(keyid, raw))
    return tuple(signatures) if good else None
