"""Bundles a deployed revision uses that the server's bundle store lacks.

A commit may pin (by sha256, in its catalog) a bundle version that was never uploaded, or
was uploaded to another server. It still deploys: the store is not Git, and holding back
a good revision for an upload that lags would be worse. But it never deploys silently:
each missing bundle is a warning in the reconcile result, the audit log, the log and the
admin status (``kernex status``), until the bytes are uploaded.

Only versions that the fleet's defaults, groups or devices use are checked (the catalog
may list old versions nobody runs), and none whose bytes are served from elsewhere (a
catalog ``url``, or the server's ``bundle_base_url``).
"""

from __future__ import annotations

from collections.abc import Callable

from kernex_core.fleet import Fleet
from kernex_core.fleet.model import BundleVersion
from kernex_server.wire import BundleWarning


def used_versions(fleet: Fleet) -> dict[str, BundleVersion]:
    """sha256 -> catalog entry, for every version the fleet's defaults, groups and
    devices name."""
    uses = [fleet.settings.defaults.bundles]
    uses += [group.bundles for group in fleet.groups.values()]
    uses += [device.bundles for device in fleet.devices.values()]
    found: dict[str, BundleVersion] = {}
    for mapping in uses:
        for name, version in mapping.items():
            entry = fleet.catalog.get(name, {}).get(version) if version is not None else None
            if entry is not None:
                found.setdefault(entry.sha256, entry)
    return found


def missing_bundles(
    fleet: Fleet | None, has: Callable[[str], bool], *, bundle_base_url: str = ""
) -> list[BundleWarning]:
    """A warning for each used version the store lacks (sorted by bundle and version)."""
    if fleet is None or bundle_base_url:
        return []
    out: list[BundleWarning] = []
    for sha, entry in used_versions(fleet).items():
        if entry.url or has(sha):
            continue
        out.append(
            {
                "severity": "warning",
                "bundle": entry.name,
                "version": entry.version,
                "sha256": sha,
                "message": f"bundle {entry.name}@{entry.version} ({sha[:12]}) is not in the "
                "server's bundle store: devices cannot download it",
                "hint": f"Upload the {entry.name} {entry.version} archive with `kernex bundle "
                f"push FILE`, or PUT its bytes to /v1/admin/bundles/{sha}.",
            }
        )
    return sorted(out, key=lambda w: (w["bundle"], w["version"]))
