"""The Kernex server: reconciles the fleet repository and serves devices signed manifests."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    if name == "create_app":
        from kernex_server.app import create_app

        return create_app
    raise AttributeError(name)
