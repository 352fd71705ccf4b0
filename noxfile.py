"""Developer sessions: ``nox -s lint typecheck tests``. Virtualenvs are reused."""

from __future__ import annotations

import os

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

PACKAGES = ["kernex_core", "kernex_git", "kernex_server", "kernex_agent", "kernex_cli"]
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", *[f"--package={p}" for p in PACKAGES])


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def tests_postgres(session: nox.Session) -> None:
    """The database tests against KERNEX_TEST_DATABASE_URL (default: local PostgreSQL)."""
    session.install("-e", ".[dev]")
    url = os.environ.get("KERNEX_TEST_DATABASE_URL", DEFAULT_PG)
    session.run("pytest", "-m", "postgres", *session.posargs, env={"KERNEX_TEST_DATABASE_URL": url})


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("kernex", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    for script in sorted(os.listdir("bench")):
        if script.endswith(".py"):
            session.run("python", f"bench/{script}", *session.posargs)
