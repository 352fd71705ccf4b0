"""The payload of a change notification (kernex_server.changes) between server processes."""

from __future__ import annotations

from kernex_server.changes import MAX_IDS, Change, everything


def test_a_change_travels_in_its_notification_payload() -> None:
    sent = Change("p1", {"edge-1"}, {"edge-1", "edge-2"}, deployed=True)
    got = Change.parse(sent.payload())
    assert (got.origin, got.devices, got.manifests) == ("p1", {"edge-1"}, {"edge-1", "edge-2"})
    assert (got.deployed, got.rollouts) == (True, False)
    assert not got.empty()
    assert Change().empty()


def test_many_devices_travel_as_any_device() -> None:
    many = {f"d-{i}" for i in range(MAX_IDS + 1)}
    got = Change.parse(Change("p1", set(), many).payload())
    assert got.manifests is None  # every cached manifest is re-read
    assert got.devices == set()  # device keys stay cached
    longest = {f"{i:02d}" + "x" * 61 for i in range(MAX_IDS)}  # 63 characters: the most
    assert len(Change("p1", longest, longest, True, True).payload()) < 8000  # NOTIFY's limit


def test_an_unreadable_payload_means_everything_changed() -> None:
    got = Change.parse("{not json")
    assert got == everything()
    assert (got.devices, got.manifests, got.deployed) == (None, None, True)
