"""One worker process of a spread simulated fleet (``SimSettings.workers`` > 1).

Started by ``kernex_agent.simulate.WorkerProcess`` as ``python -m kernex_agent.simworker``.
It reads ``{"settings": ..., "worker": k}`` from the first line of stdin, enrolls its share
of the devices, says ``{"enrolled": n}``, waits for ``run``, then runs them in its own
event loop and writes one JSON line per status report until ``stop`` or end of input.
Its stdout carries only those lines: anything else printed goes to stderr (the log file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, BinaryIO

from kernex_agent.simulate import SimFleet, SimSettings
from kernex_core.errors import KernexError


class _Lines:
    """JSON lines to the parent, on a private copy of the original stdout."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message).encode() + b"\n")
        self.out.flush()


async def _commands(stop: asyncio.Event, run: asyncio.Event) -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"run":
            run.set()
        elif line.strip() == b"stop":
            break
    stop.set()
    run.set()


async def work(settings: SimSettings, worker: int, lines: _Lines) -> None:
    fleet = SimFleet(settings, worker=worker, listener=lines.send)
    stop, run = asyncio.Event(), asyncio.Event()
    commands = asyncio.ensure_future(_commands(stop, run))
    try:
        try:
            await fleet.enroll_all()
        except KernexError as exc:
            lines.send({"error": str(exc), "hint": exc.hint})
            raise
        lines.send({"enrolled": len(fleet.agents)})
        await run.wait()
        if not stop.is_set():
            await fleet.run(stop)
    finally:
        commands.cancel()
        await fleet.aclose()


def _first_line() -> bytes:
    """Read the settings line unbuffered, so no later command is taken from the pipe."""
    line = bytearray()
    while (byte := os.read(0, 1)) and byte != b"\n":
        line += byte
    return bytes(line)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches it too)
    logging.getLogger("kernex.agent").addHandler(logging.NullHandler())
    logging.getLogger("kernex.agent").propagate = False
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not break the protocol
    first = json.loads(_first_line())
    settings = SimSettings.from_dict(first["settings"])
    try:
        asyncio.run(work(settings, int(first["worker"]), _Lines(out)))
    except KernexError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
