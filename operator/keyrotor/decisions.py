"""keyrotor's own bounded workers for the decisions kopf's handlers ask for.

kopf gives every object a worker task, which holds the object's decoded body (18.5 KiB for an
AccessKeyRotation with its managedFields) for as long as its handler runs. When kopf's reconcile
handler ran the decision itself, every object listed at a start (or applied in a burst) held its
worker and body until one of the few decision threads came free: about 50 KiB per object at
the peak, most of it kept by the allocator afterwards. The handler now only hands the object's
key to this queue and returns, so kopf's worker and body go at once; a decision reads the object
fresh anyway (``reconcile.converge``), so the body was never needed.

Nothing is lost to a crash: kopf runs every object's resume handler at each start. Each object is
in the queue at most once; a request for an object under decision runs it once more afterwards
(its decision may have read the object before the change that asked), as client-go's work
queues do. ``decide`` keeps its failures to itself (``SyncLoop.decide``: logged, backed off).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from keyrotor import metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Decide = Callable[[str, str, str, str], None]  # (namespace, name, uid, trigger)


class DecisionQueue:
    """``workers`` threads taking keys in the order asked for. A queued object costs its key
    and its latest request, no more (a ThreadPoolExecutor's work item with its Future costs
    about 1.9 KiB: 18 MiB for the 10,000 objects of a start)."""

    def __init__(self, decide: Decide, workers: int) -> None:
        self._decide = decide
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._order: deque[Key] = deque()
        self._queued: dict[Key, tuple[str, str]] = {}  # key -> (uid, trigger), latest request
        self._running: set[Key] = set()
        self._again: dict[Key, tuple[str, str]] = {}  # asked for while under decision
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"keyrotor-decide-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, namespace: str, name: str, uid: str, trigger: str) -> None:
        """Decide about the object soon (no I/O; safe from the event loop)."""
        with self._lock:
            self._enqueue((namespace, name), uid, trigger)

    def _enqueue(self, key: Key, uid: str, trigger: str) -> None:
        if self._closed:
            return  # the next start's resume decides
        if key in self._running:
            self._again[key] = (uid, trigger)
            return
        if key not in self._queued:
            self._order.append(key)
            self._ready.notify()
        self._queued[key] = (uid, trigger)
        metrics.DECISIONS_QUEUED.set(len(self._queued))

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._order and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                key = self._order.popleft()
                uid, trigger = self._queued.pop(key)
                metrics.DECISIONS_QUEUED.set(len(self._queued))
                self._running.add(key)
            try:
                with metrics.RECONCILE_IN_FLIGHT.track():
                    self._decide(key[0], key[1], uid, trigger)
            except Exception:  # decide keeps its failures; this thread must outlive a bug
                log.exception("%s/%s: the decision failed", key[0], key[1])
            finally:
                with self._lock:
                    self._running.discard(key)
                    again = self._again.pop(key, None)
                    if again is not None:
                        self._enqueue(key, *again)

    def pending(self) -> int:
        """Objects waiting for a decision or under one."""
        with self._lock:
            return len(self._queued) + len(self._running)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish the decisions under way; drop those not started (a start decides them)."""
        with self._lock:
            self._closed = True
            self._order.clear()
            self._queued.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
