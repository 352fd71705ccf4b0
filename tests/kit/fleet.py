"""Fleets for tests: a real Git repository holding a small valid fleet (``FleetRepo``),
the bundle catalog it names, and a fuller fleet as bytes for the fleet model's unit tests."""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Kernex Tests",
    "GIT_AUTHOR_EMAIL": "tests@kernex.dev",
    "GIT_COMMITTER_NAME": "Kernex Tests",
    "GIT_COMMITTER_EMAIL": "tests@kernex.dev",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}

BUNDLE_V1 = b"app bundle version 1.0.0 bytes\n"
BUNDLE_V2 = b"app bundle version 1.1.0 bytes, newer\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundles_yaml() -> str:
    return (
        "name: app\n"
        "versions:\n"
        f"  1.0.0:\n    sha256: {sha(BUNDLE_V1)}\n    size: {len(BUNDLE_V1)}\n"
        f"  1.1.0:\n    sha256: {sha(BUNDLE_V2)}\n    size: {len(BUNDLE_V2)}\n"
    )


def kernex_yaml(version: str = "1.0.0", greeting: str = "hello") -> str:
    return (
        "apiVersion: kernex/v1\n"
        "name: test-fleet\n"
        "defaults:\n"
        f"  bundles:\n    app: {version}\n"
        f"  config:\n    app:\n      greeting: {greeting}\n"
    )


class FleetRepo:
    """A real Git repository holding a small valid fleet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.write("kernex.yaml", kernex_yaml())
        self.write("bundles/app.yaml", bundles_yaml())
        self.write(
            "groups/canary.yaml",
            "selector: ring=canary\npriority: 10\nconfig:\n  app:\n    canary: true\n",
        )
        self.commit("initial fleet")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.path), *args],
            env=GIT_ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str, *extra: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", *extra, "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def y(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").encode()


def base_files() -> dict[str, bytes]:
    return {
        "kernex.yaml": y(
            """
            apiVersion: kernex/v1
            name: test-fleet
            policies:
              offline_after: 2m
              manifest_ttl: 1d
            defaults:
              bundles:
                app: 1.0.0
              config:
                app:
                  level: info
                  port: 8080
            rollout:
              waves: [50%, 100%]
              failure_threshold: 5%
            """
        ),
        "bundles/app.yaml": y(
            f"""
            name: app
            versions:
              1.0.0: {{sha256: {SHA_A}, size: 10}}
              1.1.0: {{sha256: {SHA_B}, size: 11}}
            """
        ),
        "bundles/tools.yaml": y(
            f"""
            name: tools
            versions:
              "2.0": {{sha256: {SHA_C}, size: 5, url: "https://example.com/t.tgz"}}
            """
        ),
        "groups/canary.yaml": y(
            """
            selector: ring=canary
            priority: 10
            bundles:
              app: 1.1.0
            config:
              app:
                level: debug
            rollout:
              waves: [5%, 25%, 100%]
              promotion: manual
            """
        ),
        "groups/lab.yaml": y(
            """
            selector: site in (lab, bench), !retired
            priority: 20
            bundles:
              tools: "2.0"
            config:
              app:
                port: null
                extra: {x: 1}
            """
        ),
        "devices/dev-1.yaml": y(
            """
            labels:
              ring: canary
            key_fingerprint: SHA256:DmEBkR4rbMG/WvvC93zpmubNIIs6wE8FywsbcP4elL4
            """
        ),
        "devices/dev-2.yaml": y(
            """
            labels:
              site: lab
            bundles:
              app: 1.0.0
            config:
              app:
                level: warning
            """
        ),
    }
