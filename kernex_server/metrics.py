"""Prometheus metrics of one app, in a registry of its own (not the process-global one,
so several apps in one process do not clash).

Counters and histograms are updated on the request path; the device gauges are computed
at scrape time from ``DeviceCensus``, an in-memory record of each device's enrollment
state and last reported phase, so a scrape costs no database query.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernex_core.rollout import STATES as ROLLOUT_STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class DeviceCensus:
    """Each device's enrollment state and last reported phase; ``last_seen`` lives in
    ``DeviceAuth`` (it sees every request)."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.phase: dict[str, str] = {}

    def set_state(self, device_id: str, state: str) -> None:
        self.state[device_id] = state

    def set_phase(self, device_id: str, phase: str) -> None:
        self.phase[device_id] = phase


class _DeviceCollector(Collector):
    def __init__(
        self,
        census: DeviceCensus,
        last_seen: Callable[[str], float | None],
        offline_after: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self.census = census
        self.last_seen = last_seen
        self.offline_after = offline_after
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        by_state_phase: Tally[tuple[str, str]] = Tally()
        online: Tally[str] = Tally()
        now, limit = self.clock(), self.offline_after()
        for device_id, state in list(self.census.state.items()):
            by_state_phase[(state, self.census.phase.get(device_id, "none"))] += 1
            if state == "accepted":
                seen = self.last_seen(device_id)
                online["true" if seen and now - seen <= limit else "false"] += 1
        devices = GaugeMetricFamily(
            "kernex_devices",
            "Devices by enrollment state and last reported phase.",
            labels=["state", "phase"],
        )
        for (state, phase), n in sorted(by_state_phase.items()):
            devices.add_metric([state, phase], n)
        yield devices
        up = GaugeMetricFamily(
            "kernex_devices_online", "Accepted devices by online state.", labels=["online"]
        )
        for flag in ("true", "false"):
            up.add_metric([flag], online[flag])
        yield up


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kernex_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kernex_http_request_duration_seconds",
            "HTTP request latency by route template (manifest long polls include the wait).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "kernex_reconcile_duration_seconds",
            "Duration of reconcile passes by result.",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconciles = Counter(
            "kernex_reconciles", "Reconcile passes by result.", ["result"], registry=r
        )
        self.long_polls = Gauge(
            "kernex_manifest_long_polls_open", "Manifest long polls waiting now.", registry=r
        )
        self.bundle_bytes = Counter(
            "kernex_bundle_bytes_served", "Bundle bytes sent to devices.", registry=r
        )
        self.device_rejections = Counter(
            "kernex_device_requests_rejected",
            "Device requests refused, by reason (signature check reasons, forbidden, "
            "rate_limited).",
            ["reason"],
            registry=r,
        )
        self.webhooks = Counter(
            "kernex_webhook_calls", "Git webhook calls by result.", ["result"], registry=r
        )

    def watch_devices(
        self,
        census: DeviceCensus,
        last_seen: Callable[[str], float | None],
        offline_after: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry.register(_DeviceCollector(census, last_seen, offline_after, clock))

    def watch_store(self, total_bytes: Callable[[], float]) -> None:
        Gauge(
            "kernex_bundle_store_bytes",
            "Bytes in the server's bundle store.",
            registry=self.registry,
        ).set_function(total_bytes)

    def device_rejected(self, reason: str) -> None:
        self.device_rejections.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RolloutMetrics:
    """``kernex_rollouts{state}`` (refreshed by every evaluation) and a halt counter."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_state = Gauge("kernex_rollouts", "Rollouts by state.", ["state"], registry=registry)
        self.halts = Counter(
            "kernex_rollout_halts", "Rollouts halted by failures.", registry=registry
        )
        for state in ROLLOUT_STATES:
            self.by_state.labels(state=state).set(0)

    def observe(self, counts: Mapping[str, int], halts: int) -> None:
        for state, n in counts.items():
            self.by_state.labels(state=state).set(n)
        if halts:
            self.halts.inc(halts)


class AlertMetrics:
    """The alert outbox: ``kernex_alert_outbox{state}`` (rows pending, delivered, failed),
    the age of the oldest pending alert, and delivery attempts by result."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outbox = Gauge(
            "kernex_alert_outbox",
            "Alert outbox rows by state (pending, delivered, failed).",
            ["state"],
            registry=registry,
        )
        self.oldest = Gauge(
            "kernex_alert_oldest_pending_seconds",
            "Age of the oldest alert not yet delivered (0 when none is pending).",
            registry=registry,
        )
        self.deliveries = Counter(
            "kernex_alert_deliveries",
            "Alert delivery attempts by result (delivered, retry, failed).",
            ["result"],
            registry=registry,
        )
        for state in ("pending", "delivered", "failed"):
            self.outbox.labels(state=state).set(0)
        for result in ("delivered", "retry", "failed"):
            self.deliveries.labels(result=result)

    def observe(self, counts: Mapping[str, int], oldest_age: float | None) -> None:
        for state, n in counts.items():
            self.outbox.labels(state=state).set(n)
        self.oldest.set(max(0.0, oldest_age or 0.0))

    def attempted(self, result: str) -> None:
        self.deliveries.labels(result=result).inc()
