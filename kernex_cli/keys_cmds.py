"""``kernex keys``: release signing keys, kept off the server.

A release key signs each bundle's name, version, sha256 and size at build time; devices
pin its public half at enrollment, so a breached server cannot make them install bytes
that no release key signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kernex_cli.output import console, fail, print_json
from kernex_core import keys
from kernex_core.fsutil import atomic_write_bytes, atomic_write_text

keys_app = typer.Typer(help="Release signing keys.", no_args_is_help=True)


@keys_app.command("create-release-key")
def create_release_key(
    out: Annotated[Path, typer.Argument(help="Where to write the private key (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Make an Ed25519 release key; writes OUT (private, 0600) and OUT.pub (public).

    Keep the private key with CI or a release manager, never on the Kernex server. Give
    the .pub file to `kernex agent enroll --release-key` and sign bundles with
    `kernex bundle build --sign-key OUT`.

    Example: kernex keys create-release-key ~/.config/kernex/release.key
    """
    pub_path = out.with_name(out.name + ".pub")
    if not force and (out.exists() or pub_path.exists()):
        fail(f"{out} or {pub_path} already exists", hint="Pass --force to overwrite it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = keys.generate_ed25519()
    atomic_write_bytes(out, keys.private_key_to_pem(key), mode=0o600)
    atomic_write_text(pub_path, keys.public_key_to_pem(key.public_key()))
    fingerprint = keys.fingerprint(key.public_key())
    if as_json:
        print_json({"private_key": str(out), "public_key": str(pub_path), "keyid": fingerprint})
        return
    console.print(f"release key written to [bold]{out}[/] (private, mode 0600)")
    console.print(f"public key written to  [bold]{pub_path}[/]")
    console.print(f"key id: {fingerprint}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
