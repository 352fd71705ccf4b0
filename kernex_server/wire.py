"""The JSON answers and request bodies of the admin API and the operations endpoints.

Each is a ``TypedDict`` the handlers build and ``/openapi.json`` describes
(``kernex_server.schema``); the device protocol's bodies are the dataclasses of
``kernex_core.protocol``. Times are RFC 3339 UTC strings (``Time``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

from kernex_core.errors import ValidationIssue
from kernex_core.protocol import EnrollmentState
from kernex_core.rollout import STATES as ROLLOUT_STATES

Time = Annotated[str | None, {"format": "date-time"}]
RoleName = Annotated[str, {"enum": ["viewer", "operator", "admin"]}]
DeviceStateName = Annotated[str, {"enum": [s.value for s in EnrollmentState]}]
Labels = dict[str, str]
Seconds = Annotated[int | None, {"minimum": 1}, "seconds"]
RolloutState = Annotated[str, {"enum": list(ROLLOUT_STATES)}]


class Error(TypedDict):
    """Every refusal and failure: what went wrong and, where Kernex knows, what to do."""

    error: str
    hint: NotRequired[str]


class Identity(TypedDict):
    name: str
    role: RoleName


class DeviceStatus(TypedDict, total=False):
    """The last status report of a device (kernex_core.protocol.StatusReport)."""

    phase: str
    serial: int | None
    revision: str | None
    bundles: dict[str, str]
    config_hash: str | None
    error: str | None
    log_tail: str | None
    agent_version: str
    reported_at: str | None
    received_at: Time


class Device(TypedDict):
    id: str
    state: DeviceStateName
    fingerprint: str
    algorithm: str
    labels: Labels
    proposed_labels: Annotated[
        Labels | None, "labels the device asked for at re-enrollment, for an admin"
    ]
    admitted_by: str | None
    agent_version: str
    enrolled_at: Time
    last_seen: Time
    online: bool
    desired_serial: int | None
    desired_revision: str | None
    reported_serial: int | None
    deployment_pending: Annotated[bool, "its reported serial is not the one it is served"]
    held_back: Annotated[
        bool,
        "it is served something other than what the deployed revision wants for it "
        "(a staged, halted or aborted rollout holds it)",
    ]
    status: DeviceStatus | None


class Deployment(TypedDict):
    serial: int
    revision: str
    bundles: dict[str, Any]
    desired_digest: str | None
    created_at: Time


class DeviceDetail(Device):
    deployments: list[Deployment]
    status_history: list[DeviceStatus]


class DeviceList(TypedDict):
    devices: list[Device]


class DeviceState(TypedDict):
    id: str
    state: DeviceStateName


class DeviceLabels(TypedDict):
    id: str
    labels: Labels
    proposed_labels: None


class BundleWarning(TypedDict):
    severity: Literal["warning"]
    bundle: str
    version: str
    sha256: str
    message: str
    hint: str


class RevisionStatus(TypedDict):
    current: str | None
    deployed: str | None
    last_reconcile_at: Time
    last_result: Annotated[str | None, {"enum": ["ok", "invalid", "unsigned", "error", None]}]
    last_error: str | None
    errors: list[ValidationIssue]
    forced: bool
    warnings: Annotated[
        list[BundleWarning], "bundles the deployed revision uses that the store lacks"
    ]


class DeviceCounts(TypedDict):
    total: int
    online: int
    offline: int
    pending: int
    by_phase: dict[str, int]
    out_of_sync: int


class RolloutCounts(TypedDict):
    active: Annotated[int, "running or paused"]
    halted: int


class GitFetch(TypedDict):
    running_since: Annotated[Time, "a fetch runs since then; null: none runs"]
    last_success_at: Time
    last_error: str | None
    last_error_at: Time
    failures: Annotated[int, "failed fetches in a row"]
    last_duration: Annotated[float | None, "seconds the last fetch took"]
    problem: Annotated[str | None, "what /readyz's git check says when it fails; else null"]


class FleetStatus(TypedDict):
    revision: RevisionStatus
    devices: DeviceCounts
    rollouts: RolloutCounts
    bundles: int
    git: GitFetch


class Token(TypedDict):
    id: int
    name: str
    role: RoleName
    created_by: str | None
    created_at: Time
    expires_at: Time
    last_used_at: Time
    revoked: bool
    revoked_at: Time


class NewToken(Token):
    token: Annotated[str, "the secret, shown once"]


class TokenCreate(TypedDict):
    name: Annotated[str, {"minLength": 1, "maxLength": 120}]
    role: RoleName
    expires_in: NotRequired[Seconds]


class TokenList(TypedDict):
    tokens: list[Token]


class EnrollmentToken(TypedDict):
    id: int
    name: str
    created_at: Time
    created_by: str | None
    expires_at: Time
    max_uses: int | None
    uses: int
    revoked_at: Time


class NewEnrollmentToken(EnrollmentToken):
    token: Annotated[str, "the secret, shown once"]


class EnrollmentTokenCreate(TypedDict, total=False):
    name: Annotated[str, {"maxLength": 120}]
    expires_in: Annotated[Seconds, {"default": 86400}]
    max_uses: Annotated[int | None, {"minimum": 1}]


class EnrollmentTokenList(TypedDict):
    tokens: list[EnrollmentToken]


class AuditEntry(TypedDict):
    id: int
    at: Annotated[str, {"format": "date-time"}]
    actor: str
    action: str
    target: str
    address: str
    result: Literal["ok", "denied", "error"]
    detail: dict[str, Any]


class AuditList(TypedDict):
    entries: list[AuditEntry]


class StoredBundle(TypedDict):
    sha256: str
    size: int
    created: bool


class BundleInfo(TypedDict):
    sha256: str
    size: int
    uploaded_at: Time
    uploaded_by: str | None


class BundleList(TypedDict):
    bundles: list[BundleInfo]


class RemovedBundle(TypedDict):
    sha256: str
    size: int


class BundleGc(TypedDict):
    dry_run: bool
    removed: list[RemovedBundle]
    removed_bytes: int
    kept: int
    store_bytes: int
    unreadable_revisions: list[str]


class KeyRotation(TypedDict):
    next_key_id: str
    started_at: str
    devices_not_moved: Annotated[list[str], "accepted devices that may not know the new key"]


class ReleaseKeys(TypedDict):
    version: int
    threshold: int
    keys: list[str]


class Keys(TypedDict):
    manifest_key_id: str
    rotation: KeyRotation | None
    release_keys: ReleaseKeys | None
    retired_key_id: NotRequired[Annotated[str, "after a finished rotation"]]
    manifests_reissued: NotRequired[int]


class ReconcileResult(TypedDict):
    fetching: Annotated[bool, "the fetch still runs; the pass read what was fetched before"]
    commit: str | None
    state: Annotated[str, "deployed, invalid, unsigned, unchanged, skipped, no_source or fetching"]
    devices_changed: int
    admitted: list[str]
    errors: list[dict[str, Any]]
    forced: bool
    warnings: Annotated[
        list[BundleWarning], "bundles the deployed revision uses that the store lacks"
    ]


class ReconcileFetching(ReconcileResult):
    git: GitFetch
    hint: str


class Revision(TypedDict):
    id: int
    commit: str
    branch: str
    state: str
    errors: list[dict[str, Any]]
    forced: bool
    previous: str | None
    devices_changed: int
    created_at: Time


class RevisionList(TypedDict):
    revisions: list[Revision]


class Wave(TypedDict):
    index: int
    percent: int
    size: int
    admitted: Annotated[bool, "the wave's devices are served the new revision"]
    healthy: int
    failed: int
    pending: int
    offline: int
    rolled_back: int


class RolloutDevice(TypedDict):
    id: str
    wave: int
    admitted: bool
    new_serial: int | None
    reported_serial: int | None
    phase: str | None
    online: bool
    rolled_back: bool


class Rollout(TypedDict):
    id: int
    group: str | None
    revision: str
    previous_revision: str | None
    state: RolloutState
    policy: dict[str, Any]
    wave: Annotated[int, "highest admitted wave, from 0"]
    waves: list[Wave]
    devices: int
    failed: int
    failures_allowed: int
    failure_allowance: int
    awaiting_promotion: bool
    reason: str | None
    superseded_by: str | None
    wave_started_at: Time
    created_at: Time
    updated_at: Time
    device_list: NotRequired[list[RolloutDevice]]


class RolloutList(TypedDict):
    rollouts: list[Rollout]


class AlertReceiver(TypedDict):
    name: str
    format: str
    url: Annotated[str, "scheme://host[:port] only: a Slack URL's path is its secret"]
    events: list[str]


class AlertRow(TypedDict):
    id: int
    receiver: str
    key: str
    kind: str
    summary: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: Time
    next_attempt_at: Time
    delivered_at: Time
    last_error: str | None


class AlertOverview(TypedDict):
    receivers: list[AlertReceiver]
    outbox: Annotated[dict[str, int], "rows per state"]
    recent: list[AlertRow]


class AlertTest(TypedDict, total=False):
    receiver: Annotated[str, "one receiver; all when left out"]


class AlertDelivery(TypedDict):
    receiver: str
    key: str
    state: Literal["pending", "delivered", "failed"]
    status: Annotated[int | None, "the receiver's HTTP status"]
    error: str | None


class AlertTestResult(TypedDict):
    deliveries: list[AlertDelivery]


class WebhookResult(TypedDict):
    reconcile: bool
    event: str
    ref: str | None


class Health(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    ready: bool
    checks: dict[str, str]
    failing: list[str]


class EnvelopeSignature(TypedDict):
    keyid: str
    sig: str


class Envelope(TypedDict):
    """A DSSE envelope: the payload and its signatures."""

    payloadType: str
    payload: Annotated[str, {"contentEncoding": "base64"}]
    signatures: list[EnvelopeSignature]


class ServerInfo(TypedDict):
    url: str
    version: str
    manifest_key_id: str
    manifest_public_key: str
    proof: NotRequired[Annotated[Envelope, "with ?challenge="]]
