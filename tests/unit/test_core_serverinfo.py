"""The server-info proof: only the holder of the manifest key can answer a fresh challenge."""

from __future__ import annotations

import pytest

from kernex_core import keys, serverinfo
from kernex_core.manifest import MANIFEST_PAYLOAD_TYPE


def test_a_fresh_proof_verifies_and_names_the_key() -> None:
    key = keys.generate_ed25519()
    challenge = serverinfo.new_challenge()
    answer = serverinfo.describe(key, url="https://kx", version="1", challenge=challenge)
    info = serverinfo.verify(answer, challenge=challenge, expected_key_id=answer["manifest_key_id"])
    assert info.manifest_key_id == keys.fingerprint(key.public_key())
    assert (info.url, info.version) == ("https://kx", "1")


def test_an_impostor_cannot_reuse_a_real_servers_answer() -> None:
    real = serverinfo.describe(
        keys.generate_ed25519(), url="u", version="1", challenge=serverinfo.new_challenge()
    )
    with pytest.raises(serverinfo.ServerInfoError, match="another challenge"):
        serverinfo.verify(real, challenge=serverinfo.new_challenge())


def test_an_answer_without_proof_or_signed_by_another_key_is_refused() -> None:
    key, other = keys.generate_ed25519(), keys.generate_ed25519()
    challenge = serverinfo.new_challenge()
    bare = serverinfo.describe(key, url="u", version="1", challenge=None)
    with pytest.raises(serverinfo.ServerInfoError, match="did not prove"):
        serverinfo.verify(bare, challenge=challenge)
    forged = serverinfo.describe(other, url="u", version="1", challenge=challenge)
    forged["manifest_public_key"] = bare["manifest_public_key"]  # names key, signed by other
    forged["manifest_key_id"] = bare["manifest_key_id"]
    with pytest.raises(serverinfo.ServerInfoError, match="did not prove"):
        serverinfo.verify(forged, challenge=challenge)


def test_a_wrong_expected_key_and_a_mismatched_id_are_refused() -> None:
    key = keys.generate_ed25519()
    challenge = serverinfo.new_challenge()
    answer = serverinfo.describe(key, url="u", version="1", challenge=challenge)
    with pytest.raises(serverinfo.ServerInfoError, match="not the expected"):
        serverinfo.verify(answer, challenge=challenge, expected_key_id="SHA256:other")
    with pytest.raises(serverinfo.ServerInfoError, match="announced"):
        serverinfo.verify({**answer, "manifest_key_id": "SHA256:x"}, challenge=challenge)


def test_the_proof_can_never_pass_for_a_manifest() -> None:
    assert serverinfo.PAYLOAD_TYPE != MANIFEST_PAYLOAD_TYPE
