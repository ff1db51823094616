"""The shared sync loop: one loop, over the in-memory index, that watches metadata, not values,
and says when each object is decided about again.

- every ``sync_interval``: one ``ListSecrets`` by the installation's tag (100 secrets a call)
  gives every managed secret's version stages; it may lag by minutes, so it is the background
  signal only;
- every ``focus_interval``: ``DescribeSecret`` (consistent) for the few objects whose rotation
  keyrotor just requested, whose previous key is due, and (less often) those whose scheduled
  rotation is due; and a new decision for every object whose ``next_check`` came (a refusal to
  look at again, a rotate-now waiting for a running rotation, a failure's backoff);
- the value is read only when the ``AWSCURRENT`` version differs from what is mirrored, and
  Kubernetes is written only then (the decision itself: ``reconcile.converge``).

Each round's per-object work (decisions, looks, dead-key checks) runs on at most
``--sync-workers`` threads at once; an object appears at most once in a round, and every path
that acts on it holds its lock (:meth:`keyrotor.index.ObjectIndex.lock`), so there is still one
writer per object. A round ends when all its objects are done. One object's failure never ends a
round for the others: it is logged and backed off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from keyrotor import metrics, reconcile
from keyrotor.allocator import release_free_memory
from keyrotor.aws import credential_report, secrets
from keyrotor.aws.clients import translate
from keyrotor.errors import failure_for
from keyrotor.index import Entry, Key
from keyrotor.k8s.secrets import is_intact
from keyrotor.mirroring import (
    DUE_CHECK_INTERVAL,
    focus_look_due,
    needs_decision,
    rotation_watched,
    schedule_moved,
    scheduled_rotation_due,
)
from keyrotor.model import TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID
from keyrotor.observation import Observed
from keyrotor.runtime import Runtime

log = logging.getLogger(__name__)

DEAD_KEY_REPORT_WAIT = 30.0  # seconds: a credential report being generated is asked for again


class SyncLoop:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def for_each(self, calls: Iterable[Callable[[], object]]) -> None:
        """Run each call (one object's work), at most ``sync_workers`` at once; return when all
        are done. Each call keeps its object's failures to itself (logs and backs off)."""
        todo = list(calls)
        if not todo:
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.rt.settings.sync_workers, thread_name_prefix="keyrotor-sync"
                )
            pool = self._pool

        def tracked(call: Callable[[], object]) -> None:
            with metrics.SYNC_IN_FLIGHT.track():
                call()

        for future in [pool.submit(tracked, call) for call in todo]:
            future.result()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._rounds(stop)
        finally:
            await asyncio.to_thread(self.close)

    async def _rounds(self, stop: asyncio.Event) -> None:
        next_sweep = 0.0
        next_installation_check = time.monotonic() + self.rt.settings.installation_recheck
        next_dead_key_check = time.monotonic() + self.rt.settings.dead_key_check
        while not stop.is_set():
            started = time.monotonic()
            try:
                if time.monotonic() >= next_installation_check:
                    next_installation_check += self.rt.settings.installation_recheck
                    await asyncio.to_thread(self.check_installation)
                if time.monotonic() >= next_dead_key_check:
                    # A report being generated (or a failed check) is asked for again soon.
                    wait = self.rt.settings.dead_key_check
                    next_dead_key_check = time.monotonic() + min(wait, DEAD_KEY_REPORT_WAIT)
                    if await asyncio.to_thread(self.check_dead_keys):
                        next_dead_key_check = time.monotonic() + wait
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.rt.settings.sync_interval
                    swept = time.monotonic()
                    await asyncio.to_thread(self.sweep)
                    metrics.SYNC_LAST_SWEEP_SECONDS.set(time.monotonic() - swept)
                    # What a burst of decisions freed goes back to the system (a start over
                    # thousands of objects, a burst of applies), at the sweep's pace.
                    await asyncio.to_thread(release_free_memory)
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # one bad round must not end the loop
                log.warning("sync loop round failed: %s", failure_for(exc).message)
            metrics.SYNC_SWEEP_SECONDS.observe(time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.rt.settings.focus_interval)

    def check_installation(self) -> None:
        """The role, Lambda and permission, checked at a fixed period while objects use them:
        a Lambda deleted out of band comes back without waiting for an object's event."""
        if self.rt.index.active():
            self.rt.installation.forget()
            self.rt.installation.ensure()

    def check_dead_keys(self) -> bool:
        """Every mirrored key, looked up in IAM's credential report: O(1) AWS calls for the whole
        installation (a key's CreateDate comes with its value, or from one ListAccessKeys when
        it is mirrored: see executor._mirror_key). A key deleted or
        deactivated outside keyrotor makes its object decide again (DeadKey, and a rotation);
        a deleted user shows at that decision (UserNotFound). False: the report is not ready."""
        entries = [e for e in self.rt.index.active() if e.state.access_key_id and e.state.iam_user]
        if not entries:
            return True
        iam = self.rt.aws.iam
        max_age = timedelta(seconds=self.rt.settings.dead_key_check)
        try:
            report = credential_report.fetch_report(iam, now=self.rt.clock(), max_age=max_age)
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc
        if report is None:
            return False
        metrics.DEAD_KEY_CHECKS.inc()
        self.for_each(partial(self._check_key, report, entry) for entry in entries)
        return True

    def _check_key(self, report: credential_report.CredentialReport, entry: Entry) -> None:
        try:
            if self._key_is_dead(entry, report):
                self.decide(entry)
        except Exception as exc:
            log.warning("%s/%s: %s", entry.namespace, entry.name, failure_for(exc).message)

    def _key_is_dead(self, entry: Entry, report: credential_report.CredentialReport) -> bool:
        key_id, user = entry.state.access_key_id or "", entry.state.iam_user or ""
        created = (
            entry.key_created if entry.key_created and entry.key_created[0] == key_id else None
        )
        if created is None:
            when = credential_report.key_created(self.rt.aws.iam, user, key_id)
            created = (key_id, when) if when is not None else None
        state = credential_report.key_state(report, user, created[1]) if created else "gone"
        verdict = {"gone": "gone", "user-gone": "gone", "inactive": "inactive"}.get(state)
        dead = (key_id, verdict) if verdict else None
        self.rt.index.note_key(
            entry.namespace, entry.name, entry.uid, created=created, verdict=dead
        )
        return dead is not None

    def decide(self, entry: Entry, observed: Observed | None = None, trigger: str = "sync") -> None:
        """A new decision on one object; whatever happens stays with that object. ``observed``:
        its secret as just described (the decision does not describe it again); ``trigger``:
        what asked (for the reconcile counter)."""
        try:
            reconcile.converge(
                self.rt, entry.namespace, entry.name, trigger=trigger, observed=observed
            )
        except Exception as exc:
            failure = failure_for(exc)
            log.log(failure.log_level, "%s/%s: %s", entry.namespace, entry.name, failure.message)
            settings = self.rt.settings
            self.rt.index.failed(
                entry.namespace,
                entry.name,
                entry.uid,
                now=self.rt.clock(),
                base=settings.retry_base,
                cap=settings.retry_cap,
            )

    def sweep(self) -> None:
        """Compare every managed secret's AWSCURRENT version with what is mirrored."""
        entries = {e.key: e for e in self.rt.index.active()}
        if not entries:
            return
        metrics.SYNC_LOOP_SWEEPS.inc()
        now, stuck_after = self.rt.clock(), self.rt.settings.stuck_after
        to_decide: dict[Key, Entry] = {}  # each object once a round
        for observed in secrets.list_managed(
            self.rt.aws.secretsmanager,
            tag_key=TAG_CLUSTER,
            tag_value=self.rt.settings.cluster_name,
        ):
            entry = entries.get(
                (observed.tags.get(TAG_NAMESPACE, ""), observed.tags.get(TAG_NAME, ""))
            )
            if entry is None or observed.tags.get(TAG_UID) != entry.uid or entry.failures:
                continue  # not ours, or backing off (its next_check decides)
            watched = rotation_watched(entry.focus_until, entry.focus_since, now, stuck_after)
            if needs_decision(
                entry.state.mirrored_version,
                entry.reported_last_rotation,
                observed,
                pending=not watched,
            ):
                to_decide[entry.key] = entry
        self.for_each(partial(self.decide, entry) for entry in to_decide.values())

    def tick(self) -> None:
        """Decisions that are due; DescribeSecret for the objects in focus. Which objects need
        either is decided here, cheaply; the work itself runs on the workers."""
        now = self.rt.clock()
        calls: list[Callable[[], None]] = []
        for entry in self.rt.index.entries():
            if entry.next_check is not None and now >= entry.next_check:
                calls.append(partial(self.decide, entry))
            elif self._lookable(entry) and self._wants_look(entry, now):
                calls.append(partial(self._look_safely, entry, now))
        self.for_each(calls)

    @staticmethod
    def _lookable(entry: Entry) -> bool:
        return entry.state.active and entry.state.secret_arn is not None and not entry.failures

    def _wants_look(self, entry: Entry, now: datetime) -> bool:
        """In focus and its next look due (the looks of one wait back off: focus_look_due), its
        previous key due, or its scheduled rotation due (and not looked at for 30 s); an object
        whose focus is over leaves it here."""
        in_focus = entry.focus_until is not None and now <= entry.focus_until
        interval = self.rt.settings.focus_interval
        first = self.rt.index.first_look(interval)
        if in_focus and focus_look_due(
            entry.focus_since, entry.focus_looks, now, interval, first=first
        ):
            self.rt.index.note_look(entry.namespace, entry.name, entry.uid)
            return True
        if self._previous_key_due(entry, now) or self._due(entry, now):
            return True
        if entry.focus_until is not None and not in_focus:
            self.rt.index.end_focus(entry.namespace, entry.name, entry.uid)
        return False

    def _look_safely(self, entry: Entry, now: datetime) -> None:
        try:
            self.look(entry, now)
        except Exception as exc:
            log.warning("%s/%s: %s", entry.namespace, entry.name, failure_for(exc).message)

    def look(self, entry: Entry, now: datetime) -> None:
        """DescribeSecret, and a decision when AWSCURRENT (or the schedule) moved or the previous
        key is due."""
        previous_key_due = self._previous_key_due(entry, now)
        observed = secrets.describe(self.rt.aws.secretsmanager, entry.state.secret_arn or "")
        if observed is None:
            return
        state = entry.state
        if previous_key_due or needs_decision(
            state.mirrored_version, entry.reported_last_rotation, observed, pending=False
        ):
            self.decide(entry, handed_over(entry, observed))
        ended = self._end_focus_when_mirrored(entry, observed)
        if (
            ended
            and entry.focus_since is not None
            and observed.current_version != state.mirrored_version
        ):
            # This look saw the rotation its wait was for, and the decision mirrored it: was it
            # the wait's first look? (``entry`` is as the tick found it, before this look.)
            self.rt.index.note_wait_ended(
                seen_at_first=entry.focus_looks == 0, interval=self.rt.settings.focus_interval
            )

    def check(self, entry: Entry) -> None:
        """An event named this object's secret (event mode): one DescribeSecret, and a decision
        only when AWSCURRENT moved (or the schedule did), as the focus tick decides. An object
        backing off is left to its backoff."""
        if entry.failures or not entry.state.active or entry.state.secret_arn is None:
            return
        observed = secrets.describe(self.rt.aws.secretsmanager, entry.state.secret_arn)
        if observed is None:
            return
        if needs_decision(
            entry.state.mirrored_version, entry.reported_last_rotation, observed, pending=False
        ):
            self.decide(entry, handed_over(entry, observed))
        self._end_focus_when_mirrored(entry, observed)  # the event ended the wait: no more looks

    def _end_focus_when_mirrored(self, entry: Entry, observed: Observed) -> bool:
        """The rotation we waited for is over and its version mirrored, by this tick or by
        another path (the sweep, a reconcile): stop looking. True when this ended a wait."""
        fresh = self.rt.index.get(entry.namespace, entry.name)
        if (
            fresh is not None
            and fresh.focus_until is not None
            and not observed.stuck_pending
            and observed.current_version == fresh.state.mirrored_version
        ):
            self.rt.index.end_focus(entry.namespace, entry.name, entry.uid)
            return True
        return False

    def _due(self, entry: Entry, now: datetime) -> bool:
        """A scheduled rotation is due (window open): look every 30s, not every tick."""
        if not scheduled_rotation_due(entry.state.next_rotation, entry.state.window, now):
            return False
        last = entry.last_due_check
        if last is not None and now - last < DUE_CHECK_INTERVAL:
            return False
        self.rt.index.note_due_check(entry.namespace, entry.name, entry.uid, now)
        return True

    @staticmethod
    def _previous_key_due(entry: Entry, now: datetime) -> bool:
        due = entry.state.previous_key_due
        return due is not None and now >= due


def handed_over(entry: Entry, observed: Observed) -> Observed | None:
    """The look's DescribeSecret, for the decision it calls for, unless it may be older than the
    rotation it shows: finishSecret moves AWSCURRENT before Secrets Manager records
    LastRotatedDate, and a decision from that answer would report the previous rotation's times
    (the decision then describes the secret itself)."""
    moved = observed.current_version != entry.state.mirrored_version
    if moved and not schedule_moved(entry.reported_last_rotation, observed):
        return None
    return observed


def secret_needs_repair(
    rt: Runtime, namespace: str, owner: str, body: Mapping[str, Any], *, deleted: bool
) -> Entry | None:
    """The object whose mirrored Secret was edited or deleted, when it must decide again (which
    puts the Secret back); None for keyrotor's own writes and changes that leave the key alone.
    No I/O: cheap enough for the event loop."""
    entry = rt.index.get(namespace, owner)
    if entry is None or not entry.state.active or entry.state.secret_arn is None:
        return None
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    data = dict(body.get("data") or {})
    if not deleted and is_intact(annotations, data, entry.state.mirrored_version):
        return None
    return entry


def target_secret_changed(
    rt: Runtime, namespace: str, owner: str, body: Mapping[str, Any], *, deleted: bool
) -> None:
    """A mirrored Secret was edited or deleted: decide again, which puts it back. Judged again
    under the object's lock, after the decision in flight recorded what it wrote: the watch can
    bring keyrotor's own write of the Secret before that decision ends, and it is no repair."""
    with rt.index.lock(namespace, owner):
        entry = secret_needs_repair(rt, namespace, owner, body, deleted=deleted)
    if entry is not None:
        SyncLoop(rt).decide(entry)


def decide_object(rt: Runtime, namespace: str, name: str, uid: str, trigger: str) -> None:
    """A decision kopf's handler asked for (keyrotor.decisions), with the sync loop's handling
    of a failure: logged, and tried again after the object's backoff."""
    SyncLoop(rt).decide(Entry(namespace, name, uid), trigger=trigger)
