"""``kernex keys``: release signing keys (kept off the server) and key rotation.

A release key signs each bundle's name, version, sha256 and size at build time; devices
pin its public half at enrollment, so a breached server cannot make them install bytes
that no release key signed. ``rotate-manifest-key`` and ``rotate-release-key`` move the
devices to new keys through manifests their pinned keys signed (docs/security.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, fail, print_json, safe
from kernex_cli.views import JsonOption, admin_session
from kernex_core import keys
from kernex_core.envelope import sign_envelope
from kernex_core.errors import KernexError
from kernex_core.fsutil import atomic_write_bytes, atomic_write_text
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet

keys_app = typer.Typer(
    help="Release signing keys, and rotating the manifest and release keys.",
    no_args_is_help=True,
)


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


def _render(state: dict[str, Any]) -> None:
    console.print(f"manifest key: {safe(state['manifest_key_id'])}", highlight=False)
    rotation = state.get("rotation")
    if rotation:
        waiting = rotation.get("devices_not_moved") or []
        progress = (
            f"[yellow]{len(waiting)} device(s) not moved yet:[/] {safe(', '.join(waiting[:20]))}"
            if waiting
            else "[green]every device has the new key[/]: "
            "`kernex keys rotate-manifest-key --finish`"
        )
        console.print(
            f"rotating to:  {safe(rotation['next_key_id'])} "
            f"(since {safe(rotation['started_at'])}); {progress}",
            highlight=False,
        )
    release = state.get("release_keys")
    if release:
        console.print(
            f"release keys: version {safe(release['version'])}, threshold "
            f"{safe(release['threshold'])}: {safe(', '.join(release['keys']))}",
            highlight=False,
        )
    else:
        console.print("release keys: none handed out by the server", highlight=False)


@keys_app.command("show")
def show(
    server: ServerOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Show the server's manifest key, a rotation in progress and the release-key set.

    Example: kernex keys show
    """
    with admin_session(server, token) as client:
        state = client.get("/v1/admin/keys")
    if as_json:
        print_json(state)
        return
    _render(state)


@keys_app.command("rotate-manifest-key")
def rotate_manifest_key(
    finish: Annotated[
        bool,
        typer.Option("--finish", help="Sign with the new key alone and delete the old one."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --finish: even if some devices have not taken the new key "
            "(they then refuse every manifest until enrolled again).",
        ),
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rotate the server's manifest key in two steps (admin).

    Without --finish: make a new key; manifests, still signed by the current key,
    announce both, and every device takes the new key from its next manifest. Once
    `kernex keys show` lists no device left to move, run with --finish: the new key
    signs alone, devices drop the old one, and the old private key is deleted.

    Example: kernex keys rotate-manifest-key && kernex keys rotate-manifest-key --finish
    """
    with admin_session(server, token) as client:
        if finish:
            suffix = "?force=1" if force else ""
            state = client.post(f"/v1/admin/keys/manifest/finish{suffix}")
        else:
            state = client.post("/v1/admin/keys/manifest/rotate")
    if as_json:
        print_json(state)
        return
    if finish:
        console.print(
            f"retired manifest key {safe(state['retired_key_id'])}; "
            f"{safe(state['manifests_reissued'])} manifest(s) now signed by the new key",
            highlight=False,
        )
    else:
        console.print(
            f"new manifest key {safe(state['rotation']['next_key_id'])} announced in "
            f"{safe(state['manifests_reissued'])} manifest(s)",
            highlight=False,
        )
    _render(state)


@keys_app.command("rotate-release-key")
def rotate_release_key(
    sign_key: Annotated[
        list[Path],
        typer.Option(
            "--sign-key",
            metavar="PEM",
            help="A current release private key (PEM); repeat to reach the set's threshold.",
        ),
    ],
    new_key: Annotated[
        list[Path],
        typer.Option(
            "--new-key",
            metavar="PEM",
            help="A public key (PEM, `.pub`) of the new set; repeat for several. Keys "
            "not named are retired.",
        ),
    ],
    threshold: Annotated[
        int, typer.Option(min=1, help="Signatures each bundle needs under the new set.")
    ] = 1,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hand devices a new release-key set, signed here by the current release key(s) (admin).

    Devices replace their pinned release keys only with a set their pinned keys signed
    and a higher version; from then on every bundle must carry signatures by the new
    set, so sign the deployed bundles with the new key first.

    Example: kernex keys rotate-release-key --sign-key old.key --new-key new.key.pub
    """
    try:
        signers = {}
        for path in sign_key:
            private = keys.load_private_key_pem(_read(path), source=str(path))
            signers[keys.fingerprint(private.public_key())] = private
        new = {}
        for path in new_key:
            public = keys.load_public_key_pem(_read(path).decode("utf-8"), source=str(path))
            new[keys.fingerprint(public)] = public
    except KernexError as exc:
        fail(exc.message, hint=exc.hint)
    if threshold > len(new):
        fail(f"threshold {threshold} is more than the {len(new)} new key(s)")
    with admin_session(server, token) as client:
        current = client.get("/v1/admin/keys").get("release_keys") or {}
        version = int(current.get("version") or 0) + 1
        payload = json.dumps(
            ReleaseKeySet(version=version, keys=new, threshold=threshold).to_dict(),
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        envelope = sign_envelope(RELEASE_KEYS_PAYLOAD_TYPE, payload, signers)
        state = client.request("PUT", "/v1/admin/keys/release", json_body=envelope.to_dict())
    if as_json:
        print_json(state)
        return
    console.print(
        f"release-key set version {version} handed out in "
        f"{safe(state['manifests_reissued'])} manifest(s)",
        highlight=False,
    )
    _render(state)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", hint="Check the path.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
