"""Plans for people: Rich text on a terminal, Markdown for pull-request comments."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from kernex_cli.output import safe
from kernex_core.fleet import BundleChange, ConfigChange, DevicePlan, Plan

COLLAPSE_OVER = 10  # devices; larger Markdown plans fold each device into <details>

_BUNDLE_WORD = {
    "added": "add",
    "upgraded": "upgrade",
    "downgraded": "DOWNGRADE",
    "replaced": "REPLACED (same version, other bytes)",
    "removed": "REMOVE",
}
_STATUS_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(empty fleet)"


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def bundle_line(change: BundleChange) -> str:
    word = _BUNDLE_WORD.get(change.kind, change.kind)
    if change.kind == "added":
        text = f"{change.name} {change.new} ({word})"
    elif change.kind == "removed":
        text = f"{change.name} {change.old} ({word})"
    else:
        text = f"{change.name} {change.old} → {change.new} ({word})"
    return f"⚠ {text}" if change.warning else text


def config_line(change: ConfigChange) -> str:
    if change.kind == "added":
        return f"+ {change.path} = {_value(change.new)}"
    if change.kind == "removed":
        return f"- {change.path} (was {_value(change.old)})"
    return f"~ {change.path}: {_value(change.old)} → {_value(change.new)}"


def summary_line(plan: Plan) -> str:
    s = plan.summary()
    if not plan.has_changes:
        return f"No changes. {s['devices_unchanged']} device(s) up to date."
    devices = s["devices_changed"] + s["devices_added"] + s["devices_removed"]
    parts = [
        f"{s['bundles_' + k]} {k}"
        for k in ("added", "upgraded", "downgraded", "replaced", "removed")
        if s["bundles_" + k]
    ]
    bundles = ", ".join(parts) or "none"
    return (
        f"{devices} device(s) change ({s['devices_added']} new, {s['devices_removed']} gone), "
        f"{s['devices_unchanged']} unchanged; bundles: {bundles}; "
        f"config changes: {s['config_changes']}; group moves: {s['group_moves']}."
    )


def render_text(plan: Plan, base: str | None, head: str, console: Console) -> None:
    console.print(f"[bold]Plan[/] {_short(base)} → {_short(head)}", highlight=False)
    for device in plan.devices:
        style = "yellow" if device.warning else "cyan"
        mark = _STATUS_MARK[device.status]
        suffix = {"added": " (new)", "removed": " (gone)"}.get(device.status, "")
        console.print(f"[{style}]{mark} {safe(device.device_id)}{suffix}[/]", highlight=False)
        for line in _device_lines(device):
            color = "bold yellow" if line.startswith("⚠") else ""
            text = f"    {safe(line)}"
            console.print(f"[{color}]{text}[/]" if color else text, highlight=False, soft_wrap=True)
    console.print(summary_line(plan), highlight=False, soft_wrap=True)


def _device_lines(device: DevicePlan) -> list[str]:
    lines = [f"bundle {bundle_line(b)}" for b in device.bundles]
    lines += [f"config {config_line(c)}" for c in device.config]
    lines += [f"joins group {g}" for g in device.groups_joined]
    lines += [f"leaves group {g}" for g in device.groups_left]
    return lines


def render_markdown(plan: Plan, base: str | None, head: str) -> str:
    s = plan.summary()
    out = ["## Kernex plan", "", f"`{_short(base)}` → `{_short(head)}`", ""]
    if not plan.has_changes:
        out.append(f"**No changes.** {s['devices_unchanged']} device(s) up to date.")
        return "\n".join(out) + "\n"
    warnings = [d for d in plan.devices if d.warning]
    if warnings:
        out.append(f"> ⚠ **{len(warnings)} device(s) get a downgrade, removal or replacement.**")
        out.append("")
    out += ["| | count |", "|---|---:|"]
    labels = {
        "devices_changed": "devices changed",
        "devices_added": "devices new",
        "devices_removed": "devices gone",
        "devices_unchanged": "devices unchanged",
        "bundles_added": "bundles added",
        "bundles_upgraded": "bundles upgraded",
        "bundles_downgraded": "⚠ bundles downgraded",
        "bundles_replaced": "⚠ bundles replaced",
        "bundles_removed": "⚠ bundles removed",
        "config_changes": "config changes",
        "group_moves": "group moves",
    }
    out += [
        f"| {label} | {s[key]} |" for key, label in labels.items() if s[key] or "devices" in key
    ]
    out.append("")
    collapse = len(plan.devices) > COLLAPSE_OVER
    for device in plan.devices:
        title = f"{'⚠ ' if device.warning else ''}`{device.device_id}`"
        title += {"added": " (new)", "removed": " (gone)"}.get(device.status, "")
        body = [f"- {_md(line)}" for line in _device_lines(device)] or ["- no state change"]
        if collapse:
            out += [f"<details><summary>{title}</summary>", "", *body, "", "</details>"]
        else:
            out += [f"### {title}", "", *body, ""]
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
