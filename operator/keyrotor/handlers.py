"""kopf registrations only: thin, typed, no boto3 or Kubernetes calls of their own.

One function carries resume, create and update, so nothing is left unattended after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import kopf

from keyrotor import claims, deletion, metrics, sync
from keyrotor.decisions import DecisionQueue
from keyrotor.errors import KeyrotorError
from keyrotor.event_consumer import EventConsumer
from keyrotor.event_push import PushDelivery, PushListener
from keyrotor.k8s.client import kopf_session
from keyrotor.k8s.objects import LIST_PAGE_SIZE
from keyrotor.model import (
    GROUP,
    KOPF_PREFIX,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    PLURAL,
    VERSION,
)
from keyrotor.runtime import Runtime
from keyrotor.shards import Shard
from keyrotor.sync import SyncLoop

RESOURCE = (GROUP, VERSION, PLURAL)
# How long kopf waits for the watch to bring back the version of its own last patch before it
# handles an older body (kopf's default is 5 s). The reconcile writes status before kopf writes
# its last-handled-configuration annotation, so the watch delivers that status write first, as a
# body without the annotation: kopf takes it for a new object unless its own patch arrives within
# this window. When hundreds of objects arrive together the watch lags far more than 5 s (25 s
# seen at 1,000), and the create handler ran a second time for most objects. A newer event ends
# the wait at once; only a genuine change whose expected version never comes (a re-list skipped
# it) waits this long.
CONSISTENCY_TIMEOUT = 120.0
WORKER_IDLE_TIMEOUT = 1.0  # seconds an idle kopf worker (and the last event it holds) lives


def _shard(memo: Any) -> Shard:
    shard = getattr(memo, "shard", None)
    return shard if isinstance(shard, Shard) else Shard()


def in_shard(*, memo: Any, namespace: str | None, labels: Any, **_: Any) -> bool:
    """kopf's filter: the object is this process's shard's (always true unsharded)."""
    return _shard(memo).serves(namespace or "", dict(labels or {}))


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # One finalizer per shard: kopf takes its finalizer off an object its filters no longer
    # match (it moved to another shard), which must not be the new shard's.
    settings.persistence.finalizer = _shard(memo).finalizer
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT
    # kopf ignores every annotation under the prefix of its own storage when it compares
    # objects, so it must not be keyrotor.io itself: keyrotor.io/rotate-now has to count.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    # Server-side: only keyrotor's own Secrets come down the Secret watch (a cluster holds many
    # others, Helm releases of tens of KiB each, which kopf would decode and give a worker of its
    # own at every start); and the first listing of each kind comes in pages, not as one
    # response with every object in it.
    settings.watching.label_selectors["v1", "secrets"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    settings.watching.chunk_size = LIST_PAGE_SIZE
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    runtime: Runtime = await asyncio.to_thread(memo.make_runtime)
    # Every object kopf will watch, before any decision: kopf starts its watchers (and so every
    # handler) only after this handler returned, and the sync loop starts below.
    patterns = runtime.settings.namespaces
    try:
        await asyncio.to_thread(claims.resync, runtime.kube, runtime.claims, patterns)
    except KeyrotorError as exc:  # kopf runs this handler again; nothing was started yet
        raise kopf.TemporaryError(f"cannot list AccessKeyRotation objects: {exc}", delay=5) from exc
    # The reconcile handler hands each object to keyrotor's own decision threads and returns
    # (keyrotor.decisions), so kopf's per-object worker, and the body it holds, goes as soon as
    # its handlers ran. An idle worker keeps its last event until it exits: after 1 s, not 5.
    # settings.queueing.worker_limit stays unset: a worker not yet started keeps its object's
    # event in its queue all the same (kopf queues every listed event at once), so a limit
    # would bound nothing but the order. kopf's threads run the finalizers and Secret repairs.
    settings.queueing.idle_timeout = WORKER_IDLE_TIMEOUT
    settings.execution.max_workers = runtime.settings.reconcile_workers
    memo.handler_threads = settings.execution.executor  # also for the Secret repairs
    memo.decisions = DecisionQueue(
        partial(sync.decide_object, runtime), runtime.settings.reconcile_workers
    )
    memo.runtime = runtime
    memo.stop_sync = asyncio.Event()
    memo.sync_task = asyncio.create_task(SyncLoop(runtime).run(memo.stop_sync))
    memo.claims_task = asyncio.create_task(
        claims.keep_current(runtime.kube, runtime.claims, patterns, memo.stop_sync)
    )
    if runtime.settings.event_push:  # EventBridge calls the listener; no queue
        listener: PushListener | None = getattr(memo, "push_listener", None)
        if listener is None:  # started by kopf alone (keyrotor run starts it before the election)
            listener = PushListener(runtime.settings).start()
        memo.push_listener = listener
        memo.events = PushDelivery(runtime, SyncLoop(runtime), listener).start()
    elif runtime.settings.event_mode:  # beside the sync loop, stopped with it
        memo.events = EventConsumer(runtime, SyncLoop(runtime)).start()


@kopf.on.login()
async def login(
    *, logger: kopf.Logger, settings: kopf.OperatorSettings, **_: Any
) -> kopf.AiohttpSession | None:
    """The credentials kopf would find itself (in-cluster, else the kubeconfig), on a session
    with a bounded number of connections (see ``KOPF_CONNECTIONS``)."""
    info = await asyncio.to_thread(kopf.login_via_client, logger=logger, settings=settings)
    return kopf_session(info) if info is not None else None


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
    if getattr(memo, "events", None) is not None:
        await asyncio.to_thread(memo.events.stop)
    if getattr(memo, "decisions", None) is not None:
        await asyncio.to_thread(memo.decisions.close)
    if getattr(memo, "stop_sync", None) is not None:
        memo.stop_sync.set()
        await memo.sync_task
        await memo.claims_task


@kopf.on.event(*RESOURCE)
async def claims_changed(
    *,
    type: str,  # noqa: A002  (kopf's name for the watch event type)
    body: kopf.Body,
    memo: Any,
    **_: Any,
) -> None:
    """Every object, in this shard or not (another shard's object is alive: its claim is never
    taken as stale), into the claims map; kopf calls this before the object's own handlers.
    No I/O: in the event loop, at every event."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:  # always: the start-up handler made it before any watcher began
        runtime.claims.observe(body, deleted=type == "DELETED")


@kopf.on.resume(*RESOURCE, when=in_shard)
@kopf.on.create(*RESOURCE, when=in_shard)
@kopf.on.update(*RESOURCE, when=in_shard)
async def reconcile_object(
    *,
    namespace: str | None,
    name: str,
    uid: str,
    reason: str,
    meta: kopf.Meta,
    memo: Any,
    **_: Any,
) -> None:
    """Have the object decided about (keyrotor.decisions: soon, on keyrotor's own threads, from
    a fresh read). Waits and retries are the sync loop's (the index says when), so nothing here
    raises for an expected wait. A body that is keyrotor's own status write (kopf had not written
    its last-handled-configuration yet, and its consistency wait ran out) was already decided
    on: the decision that wrote it read the object fresh. No I/O: in the event loop."""
    runtime: Runtime = memo.runtime
    version = str(meta.get("resourceVersion") or "")
    if runtime.index.is_own_write(namespace or "", name, version):
        metrics.OWN_WRITES_SEEN.labels(reason=str(reason)).inc()
        return
    memo.decisions.submit(namespace or "", name, uid, str(reason))


@kopf.on.delete(*RESOURCE, when=in_shard)
def finalize_object(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    deletion.finalize(memo.runtime, _plain(body))


@kopf.on.event("v1", "secrets", labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE})
async def target_secret_changed(
    *,
    type: str,  # noqa: A002  (kopf's name for the watch event type)
    body: kopf.Body,
    namespace: str | None,
    memo: Any,
    **_: Any,
) -> None:
    """Put back a mirrored Secret that someone edited or deleted. The check needs no I/O and
    runs here, in the event loop: at start-up every mirrored Secret comes by, and each would
    otherwise wait for a handler thread behind the reconciles, its worker and body kept alive
    meanwhile. Only a repair takes one of those threads."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    owner = (body.get("metadata", {}).get("labels") or {}).get(OWNER_NAME_LABEL)
    if runtime is None or not owner or not namespace:
        return
    deleted = type == "DELETED"
    if sync.secret_needs_repair(runtime, namespace, owner, body, deleted=deleted) is not None:
        # In a handler thread, judged again under the object's lock: it may be our own write.
        repair = partial(
            sync.target_secret_changed, runtime, namespace, owner, body, deleted=deleted
        )
        await asyncio.get_running_loop().run_in_executor(memo.handler_threads, repair)


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata", {})),
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
        "data": dict(body.get("data", {})),
    }
