"""Prometheus metrics. Names only; no label ever carries a secret value.

Two kinds:
- counters, histograms and gauges updated where things happen (AWS calls through botocore's
  event hooks on the shared clients, rotations, syncs, the sync loop, the leader gauge);
- per-object gauges computed at scrape time by :class:`ObjectCollector` from the last status
  of each AccessKeyRotation the operator saw on its watch (:data:`OBJECTS`), so that they are
  always current (a key's age grows between two reconciles) and vanish with their object.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

AWS_CALLS = Counter(
    "keyrotor_aws_api_calls_total",
    "AWS API calls made by the operator, by outcome: success, or the AWS error code "
    "(or the exception type when no response came back)",
    ["service", "operation", "outcome"],
)
ROTATIONS_REQUESTED = Counter(
    "keyrotor_rotations_requested_total", "Rotations keyrotor asked Secrets Manager for", ["cause"]
)
ROTATIONS = Counter(
    "keyrotor_rotations_total",
    "Rotations by outcome: started (requested by keyrotor), succeeded (a new AWSCURRENT version "
    "mirrored, the first key included, also of rotations Secrets Manager started on schedule), "
    "failed (a rotation that did not finish and was cleared, or that Secrets Manager refused)",
    ["outcome"],
)
SYNCS = Counter("keyrotor_secret_syncs_total", "Writes of a mirrored Kubernetes Secret", ["cause"])
RECONCILES = Counter(
    "keyrotor_reconciles_total",
    "Decisions about one object (gather, plan, act), by what asked for them: kopf's create, "
    "update or resume handler, or the operator's own loop (sync: a sweep, a focus look, a due "
    "check, a mirrored Secret changed, an event)",
    ["trigger"],
)
OWN_WRITES_SEEN = Counter(
    "keyrotor_own_status_writes_seen_total",
    "kopf handler runs on a body that is keyrotor's own last status write (kopf's own annotation "
    "not there yet): no decision, nothing new to decide on",
    ["reason"],
)
ERRORS = Counter("keyrotor_reconcile_errors_total", "Failed reconciles by reason", ["reason"])
STUCK_CLEARED = Counter("keyrotor_stuck_rotations_cleared_total", "Stuck rotations cleared")
PREVIOUS_KEY_ACTIONS = Counter(
    "keyrotor_previous_key_actions_total", "Previous keys deactivated or deleted", ["action"]
)
INSTALLATION_ENSURED = Counter(
    "keyrotor_installation_ensured_total",
    "Times the shared role, Lambda and permission were ensured",
)
RETRIES = Counter(
    "keyrotor_retries_total", "Failed decisions scheduled again with backoff (per object)"
)
DEAD_KEY_CHECKS = Counter(
    "keyrotor_dead_key_checks_total", "Checks of every mirrored key in IAM's credential report"
)
BACKING_OFF = Gauge("keyrotor_objects_backing_off", "Objects whose last decision failed")
DECISIONS_QUEUED = Gauge(
    "keyrotor_decisions_queued",
    "Objects whose decision kopf's handlers asked for and no decision thread has taken yet",
)
SYNC_LOOP_SWEEPS = Counter("keyrotor_sync_sweeps_total", "ListSecrets sweeps of the sync loop")
SECRET_EVENTS = Counter(
    "keyrotor_secret_events_total",
    "Event mode: queue messages by outcome (checked: an object's secret was looked at; "
    "ignored: not a change of AWSCURRENT, or no object of this installation; failed: the look "
    "failed and the message comes back)",
    ["outcome"],
)
EVENT_PUSH_REQUESTS = Counter(
    "keyrotor_event_push_requests_total",
    "Push delivery: requests to the event listener by outcome (accepted: an object of this "
    "operator queued for a look; ignored: no change of AWSCURRENT or no object here; "
    "unauthorized: a missing or wrong token; too_large, bad_request, method: refused; busy: too "
    "many objects waiting; standby: not the active replica; dropped: too many connections)",
    ["outcome"],
)
FIRST_LOOK_SECONDS = Gauge(
    "keyrotor_focus_first_look_seconds",
    "Seconds from a requested rotation to the first DescribeSecret that looks for its end, as "
    "learnt from the last waits (the focus interval until one ended)",
)
SYNC_LAST_SWEEP_SECONDS = Gauge(
    "keyrotor_sync_last_sweep_duration_seconds",
    "Duration of the last ListSecrets sweep of the sync loop (every managed secret compared, and "
    "the decisions it called for)",
)
SYNC_SWEEP_SECONDS = Histogram(
    "keyrotor_sync_sweep_duration_seconds",
    "Duration of one round of the shared sync loop (ListSecrets sweep or focus tick)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
AWS_RATE_LIMIT_WAITS = Counter(
    "keyrotor_aws_rate_limit_waits_total",
    "AWS requests that waited for their turn in the client-side rate limit, by API family",
    ["family"],
)
AWS_RATE_LIMIT_WAIT_SECONDS = Counter(
    "keyrotor_aws_rate_limit_wait_seconds_total",
    "Seconds AWS requests waited in the client-side rate limit, by API family",
    ["family"],
)
IN_FLIGHT = Gauge(
    "keyrotor_objects_in_flight",
    "Objects being worked on now, by path (sync: the sync loop's workers; reconcile: kopf's "
    "handlers)",
    ["path"],
)
IN_FLIGHT_PEAK = Gauge(
    "keyrotor_objects_in_flight_peak",
    "The most objects worked on at once since the operator started, by path",
    ["path"],
)
LEADER = Gauge(
    "keyrotor_leader",
    "1 on the replica that holds the leader Lease and runs the operator, 0 on a standby",
)
SHARD_INFO = Gauge(
    "keyrotor_shard_info",
    "1, labelled with the shard this operator serves (--shard; empty when unsharded)",
    ["shard"],
)


class InFlight:
    """Objects being worked on along one path now, and the most at once (thread-safe)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            IN_FLIGHT.labels(path=self.path).set(self.now)
            IN_FLIGHT_PEAK.labels(path=self.path).set(self.peak)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1
                IN_FLIGHT.labels(path=self.path).set(self.now)


SYNC_IN_FLIGHT = InFlight("sync")
RECONCILE_IN_FLIGHT = InFlight("reconcile")


# Events whose reason marks a rotation starting or failing (the posting side of the outcomes).
_ROTATION_OUTCOME_BY_EVENT = {
    "RotationRequested": "started",
    "RotationStuck": "failed",
    "RotationFailed": "failed",
}


def count_aws_calls(client: Any) -> None:
    """Count every API call a boto3 client makes, with its outcome (botocore's after-call
    events: one per call, after botocore's own retries)."""
    service = client.meta.service_model.service_name

    def _after_call(http_response: Any, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
        outcome = "success"
        if getattr(http_response, "status_code", 200) >= 300:
            outcome = str((parsed.get("Error") or {}).get("Code") or http_response.status_code)
        AWS_CALLS.labels(service=service, operation=model.name, outcome=outcome).inc()

    def _after_error(exception: BaseException, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        AWS_CALLS.labels(
            service=service, operation=operation, outcome=type(exception).__name__
        ).inc()

    client.meta.events.register("after-call.*.*", _after_call)
    client.meta.events.register("after-call-error.*.*", _after_error)


def count_event(reason: str) -> None:
    """Called for every Event the operator posts."""
    outcome = _ROTATION_OUTCOME_BY_EVENT.get(reason)
    if outcome is not None:
        ROTATIONS.labels(outcome=outcome).inc()


# --- Per-object state, computed at scrape time ----------------------------------------------

_RATE_RE = re.compile(r"^rate\((\d+) (hour|hours|day|days)\)$")
_UNIT = {"hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def max_key_age(effective: Mapping[str, Any]) -> float | None:
    """Interval plus window of ``status.effective``: a key older than this missed its rotation.
    None for cron schedules (no fixed interval)."""
    rotation = effective.get("rotation") or {}
    match = _RATE_RE.match(str(rotation.get("scheduleExpression") or ""))
    if not match:
        return None
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    window = str(rotation.get("window") or "")
    if window.endswith("h") and window[:-1].isdigit():
        seconds += int(window[:-1]) * 3600
    return float(seconds)


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """What the scrape needs of one object's status, and nothing else: the watched status itself
    (conditions with their messages, ``effective``, ...) was kept per object, a few KiB each."""

    iam_user: str
    ready: str  # "True" or "False"
    reason: str  # the Ready condition's, or Unknown, or NotObserved
    version_id: str | None
    last_rotation: float | None = None
    max_age: float | None = None
    next_rotation: float | None = None
    last_sync: float | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectRecord:
        status = body.get("status") or {}
        generation = (body.get("metadata") or {}).get("generation")
        conditions = status.get("conditions") or []
        condition = next((c for c in conditions if c.get("type") == "Ready"), None)
        ready = "True" if condition and condition.get("status") == "True" else "False"
        reason = sys.intern(str(condition.get("reason"))) if condition else "Unknown"
        if generation is not None and status.get("observedGeneration") != generation:
            ready, reason = "False", "NotObserved"
        return cls(
            iam_user=str((body.get("spec") or {}).get("iamUser", "")),
            ready=ready,
            reason=reason,
            version_id=status.get("versionId"),
            last_rotation=_timestamp(status.get("lastRotationTime")),
            max_age=max_key_age(status.get("effective") or {}),
            next_rotation=_timestamp(status.get("nextRotationTime")),
            last_sync=_timestamp(status.get("lastSyncTime")),
        )


class ObjectStatuses:
    """The last seen state of each AccessKeyRotation, as the scrape needs it (no secret values:
    status holds none), fed by a watch handler; read by the collector at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], ObjectRecord] = {}

    def seen(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        record = ObjectRecord.of(body)
        with self._lock:
            old = self._objects.get((namespace, name))
            self._objects[(namespace, name)] = record
        # A new AWSCURRENT version mirrored (the first key too) while this process watched.
        after = record.version_id
        if old is not None and after and old.version_id != after:
            ROTATIONS.labels(outcome="succeeded").inc()

    def gone(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

    def snapshot(self) -> dict[tuple[str, str], ObjectRecord]:
        with self._lock:
            return dict(self._objects)

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()


OBJECTS = ObjectStatuses()


class ObjectCollector:
    """Per-object gauges, computed when Prometheus scrapes."""

    def __init__(self, statuses: ObjectStatuses) -> None:
        self.statuses = statuses

    def describe(self) -> list[Any]:
        return []  # names are known only at collect time; no registration-time collection

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        families = _object_families()
        by_reason: dict[tuple[str, str], int] = {}
        for (namespace, name), record in sorted(self.statuses.snapshot().items()):
            ready, reason = _add_object(families, [namespace, name], record, now)
            by_reason[(ready, reason)] = by_reason.get((ready, reason), 0) + 1
        objects = GaugeMetricFamily(
            "keyrotor_objects",
            "AccessKeyRotation objects by Ready status and reason",
            labels=["ready", "reason"],
        )
        for (ready, reason), count in sorted(by_reason.items()):
            objects.add_metric([ready, reason], count)
        yield from (*families.values(), objects)


def _object_families() -> dict[str, GaugeMetricFamily]:
    labels = ["namespace", "name"]
    return {
        "info": GaugeMetricFamily(
            "keyrotor_object_info", "One per AccessKeyRotation", labels=[*labels, "iam_user"]
        ),
        "ready": GaugeMetricFamily(
            "keyrotor_object_ready",
            "1 when the object is Ready, else 0; reason is the Ready condition's reason "
            "(Unknown before the operator set one, NotObserved while the current generation "
            "was not handled yet)",
            labels=[*labels, "reason"],
        ),
        "age": GaugeMetricFamily(
            "keyrotor_access_key_age_seconds",
            "Seconds since the mirrored key became current (status.lastRotationTime)",
            labels=labels,
        ),
        "max_age": GaugeMetricFamily(
            "keyrotor_access_key_max_age_seconds",
            "Rotation interval plus window: the age a key must not reach (absent for cron)",
            labels=labels,
        ),
        "next": GaugeMetricFamily(
            "keyrotor_next_rotation_seconds",
            "Seconds until the next scheduled rotation (negative: overdue)",
            labels=labels,
        ),
        "sync": GaugeMetricFamily(
            "keyrotor_last_sync_timestamp_seconds",
            "When the mirrored Secret was last written from AWS (status.lastSyncTime)",
            labels=labels,
        ),
    }


def _add_object(
    families: dict[str, GaugeMetricFamily], key: list[str], record: ObjectRecord, now: float
) -> tuple[str, str]:
    """One object's samples; returns its (ready, reason) for the counts by reason."""
    families["info"].add_metric([*key, record.iam_user], 1)
    families["ready"].add_metric([*key, record.reason], 1 if record.ready == "True" else 0)
    if record.last_rotation is not None:
        families["age"].add_metric(key, now - record.last_rotation)
    if record.max_age is not None:
        families["max_age"].add_metric(key, record.max_age)
    if record.next_rotation is not None:
        families["next"].add_metric(key, record.next_rotation - now)
    if record.last_sync is not None:
        families["sync"].add_metric(key, record.last_sync)
    return record.ready, record.reason


REGISTRY.register(ObjectCollector(OBJECTS))
