"""The in-memory index of AccessKeyRotation objects, and the one lock per object.

Every path that acts on one object (the kopf handler, the sync loop, a Secret event, deletion)
holds that object's lock (:meth:`ObjectIndex.lock`) from its first read to its status write, so
there is one writer per object in fact. An entry changes only through the outcome of a plan
(:meth:`ObjectIndex.apply`, :meth:`ObjectIndex.failed`, :meth:`ObjectIndex.end_focus`), under
the index's own lock. No secret value is ever kept here.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from keyrotor import metrics
from keyrotor.mirroring import next_first_look
from keyrotor.outcome import IndexUpdate

FOCUS_AFTER_REQUEST = timedelta(minutes=15)
OWN_WRITES_KEPT = 4  # status writes remembered per object (ObjectIndex.is_own_write)
Key = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    """One object as the shared sync loop knows it (a snapshot: entries are replaced, not
    changed, so a reader never sees half an update)."""

    namespace: str
    name: str
    uid: str
    state: IndexUpdate = field(default_factory=lambda: IndexUpdate(active=False))
    focus_until: datetime | None = None  # DescribeSecret it on focus ticks until then
    focus_since: datetime | None = None  # when the current wait began (the last decision)
    focus_looks: int = 0  # DescribeSecret looks in the current wait (mirroring.focus_look_due)
    # status.lastRotationTime as last written: a rotation whose new version was mirrored before
    # LastRotatedDate moved (finishSecret comes first) still has its schedule to report.
    reported_last_rotation: str | None = None
    next_check: datetime | None = None  # decide again then (a recheck, a wait, a backoff)
    failures: int = 0  # consecutive failed decisions: the backoff's exponent
    last_due_check: datetime | None = None
    key_created: tuple[str, datetime] | None = None  # (access key id, CreateDate), looked up once
    key_verdict: tuple[str, str] | None = None  # (access key id, "gone"|"inactive"): a dead key

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


def backoff(failures: int, *, base: float, cap: float) -> float:
    """Exponential, capped, jittered (half to full): failing objects do not retry in step."""
    delay = min(cap, base * 2.0 ** max(failures - 1, 0))
    jitter: float = random.uniform(0.5, 1.0)  # noqa: S311  (jitter, not cryptography)
    return delay * jitter


@dataclass
class ObjectIndex:
    _entries: dict[Key, Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _object_locks: dict[Key, threading.Lock] = field(default_factory=dict)
    # The resourceVersions of the last status writes keyrotor made to each object.
    _own_writes: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    # Seconds from the start of a wait for a rotation to its first look (mirroring.focus_look_due);
    # None: not learnt yet (the focus interval).
    _first_look: float | None = None

    @contextmanager
    def lock(self, namespace: str, name: str) -> Iterator[None]:
        """One writer per object: held from the first read to the status write."""
        with self._lock:
            object_lock = self._object_locks.setdefault((namespace, name), threading.Lock())
        with object_lock:
            yield

    def _put(self, entry: Entry) -> Entry:
        self._entries[entry.key] = entry
        metrics.BACKING_OFF.set(sum(1 for e in self._entries.values() if e.failures))
        return entry

    def _current(self, namespace: str, name: str, uid: str) -> Entry:
        entry = self._entries.get((namespace, name))
        return entry if entry is not None and entry.uid == uid else Entry(namespace, name, uid)

    def apply(
        self,
        namespace: str,
        name: str,
        uid: str,
        update: IndexUpdate,
        *,
        now: datetime,
        recheck_after: float | None,
        reported_last_rotation: str | None,
    ) -> Entry:
        """A plan's outcome: what the object is now, and when to look at it again."""
        with self._lock:
            entry = self._current(namespace, name, uid)
            focus_until, focus_since, looks = (
                entry.focus_until,
                entry.focus_since,
                entry.focus_looks,
            )
            if update.focus:  # a decision that waits for a rotation: its looks start again
                focus_until = max(focus_until or now, now + FOCUS_AFTER_REQUEST)
                focus_since, looks = now, 0
            key_created = entry.key_created
            if update.access_key_id and update.key_created:  # from the Secret's annotation
                key_created = (update.access_key_id, update.key_created)
            return self._put(
                replace(
                    entry,
                    state=update,
                    focus_until=focus_until,
                    focus_since=focus_since,
                    focus_looks=looks,
                    reported_last_rotation=reported_last_rotation,
                    next_check=now + timedelta(seconds=recheck_after) if recheck_after else None,
                    failures=0,
                    key_created=key_created,
                )
            )

    def failed(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        now: datetime,
        base: float,
        cap: float,
    ) -> Entry:
        """A failed decision: try again after the next step of its backoff."""
        with self._lock:
            entry = self._current(namespace, name, uid)
            failures = entry.failures + 1
            wait = backoff(failures, base=base, cap=cap)
            metrics.RETRIES.inc()
            return self._put(
                replace(entry, failures=failures, next_check=now + timedelta(seconds=wait))
            )

    def end_focus(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is not None and entry.uid == uid:
                self._put(replace(entry, focus_until=None, focus_since=None, focus_looks=0))

    def note_look(self, namespace: str, name: str, uid: str) -> None:
        """One more look at an object in focus."""
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is not None and entry.uid == uid:
                self._put(replace(entry, focus_looks=entry.focus_looks + 1))

    def note_due_check(self, namespace: str, name: str, uid: str, now: datetime) -> None:
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is not None and entry.uid == uid:
                self._put(replace(entry, last_due_check=now))

    def note_key(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        created: tuple[str, datetime] | None,
        verdict: tuple[str, str] | None,
    ) -> None:
        """The dead-key check's outcome: a key's CreateDate, and whether it is dead."""
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is not None and entry.uid == uid:
                self._put(replace(entry, key_created=created, key_verdict=verdict))

    def first_look(self, interval: float) -> float:
        with self._lock:
            return self._first_look if self._first_look is not None else interval

    def note_wait_ended(self, *, seen_at_first: bool, interval: float) -> None:
        """A wait for a rotation ended: its first look saw the rotation finished, or not."""
        with self._lock:
            first = self._first_look if self._first_look is not None else interval
            self._first_look = next_first_look(
                first, seen_at_first=seen_at_first, interval=interval
            )
            metrics.FIRST_LOOK_SECONDS.set(self._first_look)

    def note_own_write(self, namespace: str, name: str, resource_version: str) -> None:
        """keyrotor wrote the object's status, which made this resourceVersion."""
        with self._lock:
            before = self._own_writes.get((namespace, name), ())
            self._own_writes[(namespace, name)] = (*before, resource_version)[-OWN_WRITES_KEPT:]

    def is_own_write(self, namespace: str, name: str, resource_version: str) -> bool:
        """The object as it was right after one of keyrotor's own status writes: a state some
        decision already read (fresh) and wrote from, so nothing new to decide on."""
        with self._lock:
            return bool(resource_version) and resource_version in self._own_writes.get(
                (namespace, name), ()
            )

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._own_writes.pop((namespace, name), None)
            self._entries.pop((namespace, name), None)
            metrics.BACKING_OFF.set(sum(1 for e in self._entries.values() if e.failures))

    def get(self, namespace: str, name: str) -> Entry | None:
        with self._lock:
            return self._entries.get((namespace, name))

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def active(self) -> list[Entry]:
        return [e for e in self.entries() if e.state.active]
