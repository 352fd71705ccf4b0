"""Entry points shared by ``kernex agent`` and ``python -m kernex_agent``: they read the
environment once, build the edges and run the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from kernex_agent.agent import Agent
from kernex_agent.config import CRASH_AT_ENV, Layout, load_config
from kernex_agent.state import read_json
from kernex_core.trust import TrustAnchors


async def run_agent(data_dir: Path, *, once: bool, env: Mapping[str, str]) -> int:
    """Run the agent; 0 on success, 1 when ``once`` and the cycle failed."""
    config = load_config(data_dir)
    async with httpx.AsyncClient(follow_redirects=False) as http:
        agent = Agent(config, http, crash_at=env.get(CRASH_AT_ENV) or None)
        if once:
            result = await agent.run_once()
            return 0 if result.ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await agent.run_forever(stop)
        return 0


def agent_status(data_dir: Path) -> dict[str, Any]:
    """What `agent status` shows: installed bundles, last manifest, last error, journal."""
    config = load_config(data_dir)
    layout = Layout(data_dir)
    state = read_json(layout.state) or {}
    journal = read_json(layout.journal)
    status = read_json(layout.status) or {}
    anchors = TrustAnchors.from_dict(config.device_id, state.get("trust") or {})
    queued = len(list(layout.reports.glob("*.json"))) if layout.reports.exists() else 0
    return {
        "device_id": config.device_id,
        "server_url": config.server_url,
        "data_dir": str(layout.root),
        "trust_mode": anchors.trust_mode,
        "trust_note": None
        if anchors.release_keys
        else "no release keys pinned: bundles are trusted on the manifest signature alone",
        "manifest_keys": sorted(anchors.manifest_keys),
        "release_keys": sorted(anchors.release_keys.keys) if anchors.release_keys else [],
        "highest_serial": anchors.highest_serial,
        "installed": state.get("installed") or {},
        "applied_serial": state.get("applied_serial"),
        "applied_revision": state.get("applied_revision"),
        "last_manifest": state.get("last_manifest"),
        "failed": state.get("failed"),
        "last_report": status.get("last_report"),
        "last_error": status.get("last_error"),
        "last_error_at": status.get("last_error_at"),
        "journal": None
        if journal is None
        else {k: journal.get(k) for k in ("serial", "step", "error")}
        | {"bundles": {b["name"]: b["step"] for b in journal.get("bundles", [])}},
        "queued_reports": queued,
    }


def setup_logging(env: Mapping[str, str]) -> None:
    logging.basicConfig(
        level=env.get("KERNEX_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main_env() -> dict[str, str]:
    return dict(os.environ)
