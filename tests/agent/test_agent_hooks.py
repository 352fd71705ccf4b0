"""The hook runner against real processes: timeouts and cancellation kill the whole group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from kernex_agent.hooks import SubprocessHookRunner

# The hook starts a grandchild, records both pids, then waits far longer than any test.
HOOK = (
    "#!/bin/sh\n"
    'sleep 120 >/dev/null 2>&1 &\necho $! > "$PIDS/child"\n'
    'echo $$ > "$PIDS/hook"\necho started\nexec sleep 120\n'
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of ours that nobody reaped yet is a zombie: dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _hook(tmp_path: Path) -> tuple[Path, Path]:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "hook"
    script.write_text(HOOK)
    script.chmod(0o755)
    return script, pids


def _pids(pids: Path) -> list[int]:
    return [int((pids / n).read_text()) for n in ("hook", "child")]


def test_a_timed_out_hook_and_its_children_are_killed(tmp_path: Path) -> None:
    script, pids = _hook(tmp_path)
    runner = SubprocessHookRunner({"PATH": os.environ["PATH"], "PIDS": str(pids)})
    result = asyncio.run(runner.run([str(script)], cwd=tmp_path, env={}, timeout=1.0))
    assert result.timed_out
    assert not result.ok
    assert "started" in result.log_tail
    assert _gone(_pids(pids))


def test_a_cancelled_hook_and_its_children_are_killed(tmp_path: Path) -> None:
    """Stopping the agent while a hook runs must not leave the hook running on its own."""
    script, pids = _hook(tmp_path)
    runner = SubprocessHookRunner({"PATH": os.environ["PATH"], "PIDS": str(pids)})

    async def cancel_while_running() -> None:
        task = asyncio.ensure_future(runner.run([str(script)], cwd=tmp_path, env={}, timeout=120.0))
        while not (pids / "hook").exists():
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(cancel_while_running())
    assert _gone(_pids(pids))
