"""The hook-runner edge: run a bundle hook as an argv with a timeout and a bounded log.

A hook runs in its own session (process group) so a timeout kills it and everything it
started. Standard output and error are merged and only the last ``MAX_LOG_TAIL_BYTES`` are
kept, so a chatty hook cannot fill memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kernex_core.protocol import MAX_LOG_TAIL_BYTES


@dataclass(frozen=True)
class HookResult:
    exit_code: int | None  # None when it was killed on timeout or could not start
    timed_out: bool
    log_tail: str
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class HookRunner(Protocol):
    async def run(
        self, argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
    ) -> HookResult: ...


class _Tail:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")


class SubprocessHookRunner:
    """Runs hooks as real processes (asyncio subprocesses)."""

    def __init__(self, base_env: Mapping[str, str], *, log_limit: int = MAX_LOG_TAIL_BYTES):
        self.base_env = dict(base_env)
        self.log_limit = log_limit

    async def run(
        self, argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
    ) -> HookResult:
        tail = _Tail(self.log_limit)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env={**self.base_env, **env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return HookResult(None, False, "", error=f"cannot run {argv[0]}: {exc.strerror}")

        async def pump() -> None:
            assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
            while chunk := await proc.stdout.read(65536):
                tail.add(chunk)

        reader = asyncio.ensure_future(pump())
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
                await reader
        except TimeoutError:
            await _kill_group(proc)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            return HookResult(None, True, tail.text())
        except BaseException:
            # Cancelled (the agent is stopping): the hook must not run on unsupervised.
            await asyncio.shield(_kill_group(proc))
            raise
        finally:
            if not reader.done():
                reader.cancel()
        return HookResult(proc.returncode, False, tail.text())


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the hook's session (process group) and reap the hook."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
