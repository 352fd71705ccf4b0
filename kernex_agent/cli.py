"""``kernex-agent enroll|run|status``: the device's command, from the base install.

It needs only what the agent needs (the core, httpx, PyYAML, cryptography): no Typer,
Rich, server or Git library. ``kernex agent ...`` (the ``[cli]`` extra) runs the same code
with richer output; ``python -m kernex_agent`` is this command too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from kernex_agent import AGENT_VERSION
from kernex_agent.config import DATA_DIR_ENV, DEFAULT_DATA_DIR, default_data_dir
from kernex_agent.runner import agent_status, main_env, run_agent, setup_logging
from kernex_core.errors import KernexError

PROG = "kernex-agent"
DATA_DIR_HELP = f"agent data directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Kernex device agent: enroll this device, converge it to its signed "
        "manifest, show its state.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {AGENT_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{enroll,run,status}")
    enroll = sub.add_parser(
        "enroll",
        help="make the device key, enroll with the server, pin its manifest key",
        description="Example: kernex-agent enroll --server https://kx.example:8443 "
        "--token kxe_... --label ring=canary",
    )
    enroll.add_argument("--server", required=True, help="server URL, e.g. https://kernex.example")
    admission = enroll.add_mutually_exclusive_group(required=True)
    admission.add_argument("--token", help="enrollment token (kernex enroll-tokens create)")
    admission.add_argument(
        "--wait-for-approval",
        action="store_true",
        help="without a token: wait until an admin runs `kernex devices accept`",
    )
    enroll.add_argument("--device-id", help="default: the host name")
    enroll.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    enroll.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    enroll.add_argument(
        "--server-key-fingerprint", metavar="SHA256:...", help="expected manifest key"
    )
    enroll.add_argument(
        "--release-key",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="release public key every bundle must be signed by (repeatable)",
    )
    enroll.add_argument("--json", action="store_true", help="print the result as JSON")
    run = sub.add_parser("run", help="run the agent loop: poll, verify, install, report")
    run.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    run.add_argument("--once", action="store_true", help="one cycle, then exit (1 if it failed)")
    status = sub.add_parser("status", help="print the agent's state as JSON")
    status.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    status.add_argument("--json", action="store_true", help="accepted; the output is JSON")
    return parser


def _labels(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"label {pair!r} is not key=value (example: --label site=berlin)")
        out[key] = value
    return out


def _enroll(args: argparse.Namespace, labels: dict[str, str], data_dir: Path) -> None:
    import httpx

    from kernex_agent.enroll import EnrollResult, default_device_id, enroll

    async def go() -> EnrollResult:
        async with httpx.AsyncClient() as http:
            return await enroll(
                http,
                server_url=args.server,
                data_dir=data_dir,
                device_id=args.device_id or default_device_id(),
                token=args.token,
                labels=labels,
                wait_for_approval=args.wait_for_approval,
                expected_fingerprint=args.server_key_fingerprint,
                release_key_files=args.release_key,
                clock=time.time,
                sleep=asyncio.sleep,
            )

    result = asyncio.run(go())
    if args.json:
        out = {**result.__dict__, "state": result.state.value, "data_dir": str(data_dir)}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        return
    lines = [
        f"enrolled {result.device_id} ({result.state.value}) in {data_dir}",
        f"device key:          {result.device_key_id}",
        f"server manifest key: {result.manifest_key_id}",
    ]
    if not result.fingerprint_checked:
        lines.append(
            "compare the server manifest key above with the server's "
            "(or pass --server-key-fingerprint)"
        )
    if result.trust_mode == "manifest-only":
        lines.append(
            "no release keys pinned: bundles are trusted on the manifest signature alone "
            "(pass --release-key)"
        )
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    env = main_env()
    parser = _parser()
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir(env)
    try:
        if args.command == "enroll":
            _enroll(args, _labels(parser, args.label), data_dir)
            return 0
        if args.command == "run":
            setup_logging(env)
            return asyncio.run(run_agent(data_dir, once=args.once, env=env))
        sys.stdout.write(json.dumps(agent_status(data_dir), indent=2, sort_keys=True) + "\n")
        return 0
    except KernexError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return 1
    except OSError as exc:  # e.g. the default data directory is not writable
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        sys.stderr.write(f"hint: pass --data-dir or set ${DATA_DIR_ENV} to a writable path.\n")
        return 1
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The ``kernex-agent`` console script."""
    sys.exit(main())
