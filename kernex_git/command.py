"""Running git: one function, two environments, time limits that kill the whole group.

``GitEnv.operator()`` is the person's own Git (their identity, signing key, credential
helpers and hooks), used by the CLI on the operator's repository. ``GitEnv.server()`` is
locked down for a daemon: no system or user configuration (only Kernex's own
``gitconfig`` in the data directory, when there is one), no prompt of any kind (no
terminal: git runs in a new session with stdin closed), only the file, git, http(s) and
ssh transports (``ext::`` runs commands), and network limits on every fetch.

Both drop the variables that point git at another repository (``GIT_DIR`` and friends,
set when Kernex runs inside a Git hook) and run git in the C locale, so the messages
Kernex reads are the ones it expects.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kernex_git.errors import GitCommandError, GitNotInstalledError, GitTimeoutError
from kernex_git.redact import redact_text

# `git rev-parse --local-env-vars`: these point git at a repository other than `-C DIR`.
LOCAL_ENV_VARS = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
)
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_RUNNING: set[subprocess.Popen[bytes]] = set()  # git commands running now (see stop_all)
_RUNNING_LOCK = threading.Lock()


@dataclass(frozen=True)
class NetworkLimits:
    """How long a clone or fetch may take, and how slow it may get."""

    timeout: float = 600.0  # seconds for the whole command, then it is killed
    connect_timeout: int = 30  # seconds to open an SSH connection
    low_speed_limit: int = 1000  # bytes/s under which an HTTP transfer counts as stalled...
    low_speed_time: int = 60  # ...for this many seconds, then git gives up


@dataclass(frozen=True)
class GitEnv:
    """The environment git runs in (see the module docstring)."""

    locked: bool = False
    config_file: Path | None = None  # the global config of a locked environment
    limits: NetworkLimits = NetworkLimits()

    @classmethod
    def operator(cls) -> GitEnv:
        return cls()

    @classmethod
    def server(cls, config_file: Path | None = None, limits: NetworkLimits | None = None) -> GitEnv:
        return cls(locked=True, config_file=config_file, limits=limits or NetworkLimits())

    def variables(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        source = os.environ if base is None else base
        env = {k: v for k, v in source.items() if k not in LOCAL_ENV_VARS}
        env["LC_ALL"] = "C"
        env.pop("LANGUAGE", None)
        if not self.locked:
            return env
        env = {k: v for k, v in env.items() if not k.startswith(("GIT_", "SSH_ASKPASS"))}
        has_config = self.config_file is not None and self.config_file.is_file()
        env.update(
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=str(self.config_file) if has_config else os.devnull,
            GIT_TERMINAL_PROMPT="0",
            GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS,
            GIT_HTTP_LOW_SPEED_LIMIT=str(self.limits.low_speed_limit),
            GIT_HTTP_LOW_SPEED_TIME=str(self.limits.low_speed_time),
        )
        if not (has_config and _configures_ssh(self.config_file)):
            env["GIT_SSH_COMMAND"] = shlex.join(
                [
                    "ssh",
                    "-o", "BatchMode=yes",
                    "-o", f"ConnectTimeout={self.limits.connect_timeout}",
                    "-o", "ServerAliveInterval=15",
                    "-o", "ServerAliveCountMax=4",
                ]
            )  # fmt: skip
        return env


def _configures_ssh(config_file: Path | None) -> bool:
    """Whether Kernex's gitconfig names its own SSH command (then it is used as is)."""
    try:
        text = config_file.read_text("utf-8", "replace") if config_file else ""
    except OSError:
        return False
    return "sshcommand" in text.lower()


def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: GitEnv | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git [-C cwd] *args``; raise ``GitCommandError`` on a non-zero exit when
    ``check``, ``GitTimeoutError`` past ``timeout`` (git and its helpers are killed)."""
    genv = env or GitEnv.operator()
    argv = ["git", *(["-C", str(cwd)] if cwd is not None else []), *args]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=genv.variables(),
            start_new_session=genv.locked,  # no controlling terminal: nothing can prompt
        )
    except FileNotFoundError as exc:
        raise GitNotInstalledError("git is not installed") from exc
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise GitTimeoutError(
            f"git {_verb(args)} did not finish within {timeout:g} s and was stopped",
            hint="Check the network path to the repository; a stalled transfer is retried "
            "on the next poll.",
        ) from None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and done.returncode != 0:
        stderr = stderr_text(done.stderr)
        raise GitCommandError(
            f"git {_verb(args)} failed: {stderr or f'exit status {done.returncode}'}",
            returncode=done.returncode,
            stderr=stderr,
        )
    return done


def stop_all() -> int:
    """Kill every git command running now, with its helpers (a server shutting down does
    not leave a fetch hanging on a silent remote); the callers see a failed command."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:
        _signal_group(proc)
    return len(running)


def stderr_text(raw: bytes) -> str:
    """git's stderr as one redacted line per message, without the progress noise."""
    text = raw.decode("utf-8", "replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return redact_text("; ".join(errors or lines))


def _verb(args: Sequence[str]) -> str:
    """The git subcommand (the first argument that is not a `-c key=value` pair)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-c":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return "command"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill git and every helper it started (remote-https, ssh), then reap it."""
    _signal_group(proc)
    proc.communicate()


def _signal_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.pid == os.getpgid(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
