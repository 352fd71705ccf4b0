"""Bundles for tests: one builder. ``bundle_source`` writes a bundle directory (metadata,
hooks, files); ``bundle_bytes`` builds it with the CLI's own ``kernex bundle build`` code."""

from __future__ import annotations

from pathlib import Path

from kernex_cli.bundle_build import build_bundle

OK = "#!/bin/sh\nexit 0\n"
WRITE_MARKER = (
    '#!/bin/sh\necho "installing $KERNEX_BUNDLE $KERNEX_VERSION"\n'
    'echo "$KERNEX_VERSION" > "$MARKER_DIR/$KERNEX_BUNDLE.installed"\n'
)


def bundle_source(
    root: Path,
    name: str,
    version: str,
    *,
    install: str = WRITE_MARKER,
    health: str = OK,
    reload: str | None = None,
    timeouts: dict[str, float] | None = None,
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A bundle directory under ``root``: ``kernex-bundle.yaml``, the hooks, and ``files``."""
    src = root / f"src-{name}-{version}"
    (src / "hooks").mkdir(parents=True)
    hooks = {"install": install, "health": health}
    if reload is not None:
        hooks["reload"] = reload
    lines = [f"name: {name}", f'version: "{version}"', "hooks:"]
    for hook, body in hooks.items():
        path = src / "hooks" / hook
        path.write_text(body)
        path.chmod(0o755)
        t = (timeouts or {}).get(hook)
        lines.append(
            f"  {hook}: {{run: hooks/{hook}, timeout: {t}}}" if t else f"  {hook}: hooks/{hook}"
        )
    (src / "kernex-bundle.yaml").write_text("\n".join(lines) + "\n")
    for rel, data in (files or {}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            (src / rel).write_bytes(data)
        else:
            (src / rel).write_text(data)
    return src


def bundle_bytes(
    root: Path,
    name: str,
    version: str,
    *,
    install: str = WRITE_MARKER,
    health: str = OK,
    reload: str | None = None,
    timeouts: dict[str, float] | None = None,
    files: dict[str, str | bytes] | None = None,
) -> bytes:
    """The built bundle (a reproducible ``.tar.gz``) of ``bundle_source``'s directory."""
    src = bundle_source(
        root, name, version, install=install, health=health, reload=reload,
        timeouts=timeouts, files=files,
    )  # fmt: skip
    return build_bundle(src)
