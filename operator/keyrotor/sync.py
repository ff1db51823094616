"""The shared sync loop: one loop, over the in-memory index, that watches metadata, not values.

- every ``sync_interval``: one ``ListSecrets`` by the installation's tag (100 secrets a call)
  gives every managed secret's version stages; it may lag by minutes, so it is the background
  signal only;
- every ``focus_interval``: ``DescribeSecret`` (consistent) for the few objects whose rotation
  keyrotor just requested, and (less often) those whose scheduled rotation is due;
- the value is read only when the ``AWSCURRENT`` version differs from what is mirrored, and
  Kubernetes is written only then (``reconcile.sync_current_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta

from keyrotor import metrics, reconcile
from keyrotor.aws import secrets
from keyrotor.aws.clients import error_message
from keyrotor.k8s import objects
from keyrotor.k8s.secrets import TargetConflictError
from keyrotor.model import (
    TAG_CLUSTER,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    Condition,
    ConditionType,
    Observed,
    Reason,
    SpecError,
    isoformat,
)
from keyrotor.runtime import Entry, Runtime

log = logging.getLogger(__name__)

DUE_CHECK_INTERVAL = timedelta(seconds=30)


def _schedule_moved(entry: Entry, observed: Observed) -> bool:
    """AWS reports a later rotation than status does. finishSecret moves AWSCURRENT before
    Secrets Manager records LastRotatedDate, so the version can be mirrored (by any path) while
    the rotation's time is not known yet; without this, status kept the previous rotation's
    times until the next one."""
    if observed.last_rotated is None:
        return False
    reported = entry.reported_last_rotation
    return reported is None or isoformat(observed.last_rotated) > reported


class SyncLoop:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._last_due_check: dict[tuple[str, str], datetime] = {}

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = 0.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.rt.settings.sync_interval
                    await asyncio.to_thread(self.sweep)
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # one bad round must not end the loop
                log.warning("sync loop round failed: %s", error_message(exc))
            metrics.SYNC_SWEEP_SECONDS.observe(time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.rt.settings.focus_interval)

    def sweep(self) -> None:
        """Compare every managed secret's AWSCURRENT version with what is mirrored."""
        entries = {(e.namespace, e.name): e for e in self.rt.index.active()}
        if not entries:
            return
        metrics.SYNC_LOOP_SWEEPS.inc()
        for observed in secrets.list_managed(
            self.rt.aws.secretsmanager,
            tag_key=TAG_CLUSTER,
            tag_value=self.rt.settings.cluster_name,
        ):
            entry = entries.get(
                (observed.tags.get(TAG_NAMESPACE, ""), observed.tags.get(TAG_NAME, ""))
            )
            if entry is None or observed.tags.get(TAG_UID) != entry.uid:
                continue
            entry.next_rotation = observed.next_rotation
            if observed.current_version != entry.mirrored_version or observed.stuck_pending:
                self.resync(entry, observed)
            elif _schedule_moved(entry, observed):
                # ListSecrets may lag: report the schedule from a consistent read.
                fresh = secrets.describe(self.rt.aws.secretsmanager, entry.secret_arn or "")
                if fresh is not None:
                    self.resync(entry, fresh)

    def tick(self) -> None:
        """DescribeSecret for the objects in focus; the previous-key work that is due."""
        now = self.rt.clock()
        for entry in self.rt.index.active():
            if entry.secret_arn is None:
                continue
            focused = entry.focus_until is not None and now <= entry.focus_until
            if not focused:
                entry.focus_until = None
            if not (focused or self._due(entry, now) or self._previous_key_due(entry, now)):
                continue
            observed = secrets.describe(self.rt.aws.secretsmanager, entry.secret_arn)
            if observed is None:
                continue
            entry.next_rotation = observed.next_rotation
            changed = observed.current_version != entry.mirrored_version
            if changed or self._previous_key_due(entry, now) or _schedule_moved(entry, observed):
                self.resync(entry, observed)
            # The rotation we waited for is over and its version mirrored, by this tick or by
            # another path (the sweep, a reconcile): stop looking. Checking only `changed` kept
            # an object mirrored elsewhere in focus for FOCUS_AFTER_REQUEST (15 minutes).
            if (
                entry.focus_until is not None
                and not observed.stuck_pending
                and observed.current_version == entry.mirrored_version
            ):
                entry.focus_until = None

    def _due(self, entry: Entry, now: datetime) -> bool:
        """A scheduled rotation is due (window open): look every 30s, not every tick."""
        if entry.next_rotation is None or not (
            entry.next_rotation <= now <= entry.next_rotation + entry.window + timedelta(hours=1)
        ):
            return False
        key = (entry.namespace, entry.name)
        last = self._last_due_check.get(key)
        if last is not None and now - last < DUE_CHECK_INTERVAL:
            return False
        self._last_due_check[key] = now
        return True

    @staticmethod
    def _previous_key_due(entry: Entry, now: datetime) -> bool:
        return entry.previous_key_due is not None and now >= entry.previous_key_due

    def resync(self, entry: Entry, observed: Observed) -> None:
        """Mirror the current key of one object, from a fresh read of the object."""
        rt = self.rt
        body = objects.get_object(rt.kube, entry.namespace, entry.name)
        if body is None or body["metadata"].get("uid") != entry.uid:
            rt.index.remove(entry.namespace, entry.name)
            return
        if body["metadata"].get("deletionTimestamp"):
            return
        try:
            spec = reconcile.parse(rt, body)
        except SpecError:
            return  # the handler has reported it
        if spec.suspend:
            return
        outcome = reconcile.Outcome()
        try:
            reconcile.clear_stuck_rotation(rt, observed, outcome, rt.clock())
            if observed.current_version is not None:
                reconcile.sync_current_key(rt, body, spec, observed, outcome)
        except Exception as exc:
            # A failure here is reported, and the object stays in the loop to be tried again.
            known = isinstance(exc, TargetConflictError | secrets.SecretOwnedElsewhereError)
            message = str(exc) if known else error_message(exc)
            log.warning("sync of %s/%s failed: %s", entry.namespace, entry.name, message)
            outcome.conditions.append(
                Condition(ConditionType.SYNCED, False, Reason.SYNC_FAILED, message)
            )
        reconcile.apply_outcome(rt, body, outcome)

    def repair(self, entry: Entry) -> None:
        """The target Secret was edited or deleted: look at AWS again and put it back."""
        if entry.secret_arn is None:
            return
        observed = secrets.describe(self.rt.aws.secretsmanager, entry.secret_arn)
        if observed is not None:
            self.resync(entry, observed)
