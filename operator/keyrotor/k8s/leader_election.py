"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection package does
it for cert-manager, External Secrets Operator and every controller-runtime manager.

Several replicas may run; exactly one is active. A replica acquires the Lease before the operator
starts handling anything, renews it in the background, and on losing it (no successful renewal for
``renew_deadline``) the process exits, as controller-runtime's manager does: the pod restarts as a
standby, and nothing half-done keeps acting after another replica took over. A standby takes the
Lease over once the holder's last renewal is older than ``lease_duration``, measured on its own
monotonic clock from when it observed that renewal (never comparing two machines' clocks).
Writes use the Lease's resourceVersion, so two standbys racing for an expired Lease cannot both
win: the API server refuses the second with a conflict.

Why not kopf's peering: peering is a priority scheme, not an election. Operators of equal
priority that see each other all freeze ("the cluster becomes not served anymore", kopf's docs),
so two identical replicas of one Deployment would both stop; and an operator only pauses when it
notices a peer, which leaves a window in which both act.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
JITTER = 1.2  # client-go's JitterFactor: retries are spread over retry_period * [1, 1.2)


def default_identity(base: str | None = None) -> str:
    """``<pod or host name>_<random>``, as controller-runtime makes it: a restarted container of
    the same pod is a new candidate and waits for the old holder's lease to expire."""
    return f"{base or socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def default_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    renew_time: str
    lease_duration: float
    transitions: int
    resource_version: str | None


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    renew = spec.renew_time
    return LeaseRecord(
        holder=spec.holder_identity or "",
        renew_time=renew.isoformat() if isinstance(renew, datetime) else str(renew or ""),
        lease_duration=float(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
        resource_version=lease.metadata.resource_version,
    )


class LeaderElector:
    """One candidate for one Lease. ``acquire()`` blocks until this candidate leads; then
    ``start_renewing(on_lost)`` keeps the Lease in a daemon thread and calls ``on_lost`` once if
    a renewal deadline passes; ``release()`` hands the Lease over at a clean shutdown."""

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period * JITTER:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period x 1.2"
            )
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.acquired_at: float | None = None

    # -- one attempt -----------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew: True when this candidate holds the Lease
        after it (created, taken over, or renewed)."""
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        record = _record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        mine = record.holder == self.identity
        expired = self.clock() > self._observed_at + (record.lease_duration or self.lease_duration)
        if record.holder and not mine and not expired:
            return False
        spec = lease.spec
        if not mine:
            spec.acquire_time = now
            spec.lease_transitions = record.transitions + (1 if record.holder else 0)
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = int(self.lease_duration)
        spec.renew_time = now
        try:
            # replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
            updated = self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._observed, self._observed_at = _record(updated), self.clock()
        if not mine:
            log.info(
                "leader election: %s took over Lease %s/%s from %r",
                self.identity,
                self.namespace,
                self.name,
                record.holder or None,
            )
        return True

    def _create(self, now: datetime) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self.lease_duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            created = self.api.create_namespaced_lease(self.namespace, body)
        except client.ApiException as exc:
            if exc.status == 409:
                return False  # another candidate created it first
            raise
        self._observed, self._observed_at = _record(created), self.clock()
        log.info(
            "leader election: %s created Lease %s/%s", self.identity, self.namespace, self.name
        )
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as exc:  # an API server that does not answer is a failed round
            log.warning(
                "leader election: Lease %s/%s: %s",
                self.namespace,
                self.name,
                getattr(exc, "status", None) or type(exc).__name__,
            )
            return False

    def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when stopping."""
        return self._stop.wait(seconds)

    # -- the loops -------------------------------------------------------------------------------

    def acquire(self) -> None:
        log.info(
            "leader election: %s waiting for Lease %s/%s",
            self.identity,
            self.namespace,
            self.name,
        )
        while not self._attempt():
            if self._sleep(self.retry_period * random.uniform(1.0, JITTER)):  # noqa: S311
                raise InterruptedError("leader election stopped")
        self.acquired_at = self.clock()
        log.info(
            "leader election: %s is the leader (Lease %s/%s)",
            self.identity,
            self.namespace,
            self.name,
        )

    def start_renewing(self, on_lost: Callable[[], None]) -> None:
        def renew() -> None:
            last_renewed = self.clock()
            while not self._sleep(self.retry_period):
                if self._attempt():
                    last_renewed = self.clock()
                    continue
                if self.clock() - last_renewed >= self.renew_deadline:
                    if self._stop.is_set():
                        return
                    log.error(
                        "leader election lost: %s could not renew Lease %s/%s for %.0fs",
                        self.identity,
                        self.namespace,
                        self.name,
                        self.renew_deadline,
                    )
                    on_lost()
                    return

        self._thread = threading.Thread(target=renew, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_period * 2)

    def release(self) -> None:
        """Stop renewing and hand the Lease over (an empty holder), so a standby takes over at
        once after a clean shutdown instead of waiting for the lease to expire."""
        self.stop()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info(
                "leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name
            )
        except Exception as exc:  # the standby takes over when the lease expires
            log.warning(
                "leader election: could not release Lease %s/%s: %s",
                self.namespace,
                self.name,
                getattr(exc, "status", None) or type(exc).__name__,
            )
