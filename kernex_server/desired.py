"""What the server needs from the fleet model, as structural types.

``kernex_core.fleet`` provides the real ones (``load_fleet``, ``Fleet``, ``DesiredState``);
the server depends only on these shapes, so the reconciler can be tested with a stub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kernex_core.envelope import Signature


class BundleVersionLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def release_signatures(self) -> tuple[Signature, ...]: ...


class DesiredStateLike(Protocol):
    @property
    def bundles(self) -> Mapping[str, BundleVersionLike]: ...
    @property
    def config(self) -> Mapping[str, Any]: ...


class FleetSettingsLike(Protocol):
    @property
    def offline_after(self) -> int: ...
    @property
    def manifest_ttl(self) -> int: ...


class FleetDeviceLike(Protocol):
    @property
    def key_fingerprint(self) -> str | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class FleetLike(Protocol):
    @property
    def settings(self) -> FleetSettingsLike: ...
    @property
    def devices(self) -> Mapping[str, FleetDeviceLike]: ...
    def resolve(self, inventory: Mapping[str, Mapping[str, str]]) -> Mapping[str, Any]: ...
    def resolve_device(self, device_id: str, labels: Mapping[str, str]) -> Any: ...


FleetLoader = Callable[[Mapping[str, bytes]], FleetLike]


def default_fleet_loader() -> FleetLoader:
    """The core's ``load_fleet`` (imported late: the server starts without a repo too)."""
    from kernex_core import fleet

    loader: FleetLoader = fleet.load_fleet
    return loader
