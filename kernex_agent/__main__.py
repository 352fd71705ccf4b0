"""``python -m kernex_agent run|status``: the agent without the CLI's dependencies.

On a device this is all that is needed; ``kernex agent ...`` runs the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from kernex_agent.config import default_data_dir
from kernex_agent.runner import agent_status, main_env, run_agent, setup_logging
from kernex_core.errors import KernexError


def main(argv: list[str] | None = None) -> int:
    env = main_env()
    parser = argparse.ArgumentParser(prog="python -m kernex_agent")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent loop")
    run.add_argument("--data-dir", type=Path, default=None)
    run.add_argument("--once", action="store_true", help="one cycle, then exit (1 if it failed)")
    status = sub.add_parser("status", help="print the agent's state as JSON")
    status.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir(env)
    setup_logging(env)
    try:
        if args.command == "run":
            return asyncio.run(run_agent(data_dir, once=args.once, env=env))
        sys.stdout.write(json.dumps(agent_status(data_dir), indent=2, sort_keys=True) + "\n")
        return 0
    except KernexError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
