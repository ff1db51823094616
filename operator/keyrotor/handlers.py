"""kopf registrations only: thin, typed, no boto3 or Kubernetes calls of their own.

One function carries resume, create and update, so nothing is left unattended after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from keyrotor import deletion, metrics, reconcile, sync
from keyrotor.event_consumer import EventConsumer
from keyrotor.model import (
    GROUP,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    PLURAL,
    VERSION,
)
from keyrotor.runtime import Runtime, claim_key
from keyrotor.shards import Shard
from keyrotor.sync import SyncLoop
from keyrotor.tenancy import Claim, holds_claim

RESOURCE = (GROUP, VERSION, PLURAL)
KOPF_PREFIX = f"kopf.{GROUP}"


def _shard(memo: Any) -> Shard:
    shard = getattr(memo, "shard", None)
    return shard if isinstance(shard, Shard) else Shard()


def in_shard(*, memo: Any, namespace: str | None, labels: Any, **_: Any) -> bool:
    """kopf's filter: the object is this process's shard's (always true unsharded)."""
    return _shard(memo).serves(namespace or "", dict(labels or {}))


def not_in_shard(**kwargs: Any) -> bool:
    return not in_shard(**kwargs)


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # One finalizer per shard: kopf takes its finalizer off an object its filters no longer
    # match (it moved to another shard), which must not be the new shard's.
    settings.persistence.finalizer = _shard(memo).finalizer
    # kopf ignores every annotation under the prefix of its own storage when it compares
    # objects, so it must not be keyrotor.io itself: keyrotor.io/rotate-now has to count.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    runtime: Runtime = await asyncio.to_thread(memo.make_runtime)
    # Every handler here is synchronous, so kopf's thread pool bounds the reconciles (and Secret
    # repairs and finalizers) running at once; the sync loop has workers of its own.
    # settings.queueing.worker_limit stays unset: a per-object worker keeps its slot while it
    # idles (queueing.idle_timeout, 5 s) after its object's last event, so a limit of N would
    # pass at most N objects per ~5 s; the workers are cheap tasks waiting for these threads.
    settings.execution.max_workers = runtime.settings.reconcile_workers
    memo.runtime = runtime
    memo.stop_sync = asyncio.Event()
    memo.sync_task = asyncio.create_task(SyncLoop(runtime).run(memo.stop_sync))
    if runtime.settings.event_mode:  # beside the sync loop, stopped with it
        memo.events = EventConsumer(runtime, SyncLoop(runtime)).start()


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
    if getattr(memo, "events", None) is not None:
        await asyncio.to_thread(memo.events.stop)
    if getattr(memo, "stop_sync", None) is not None:
        memo.stop_sync.set()
        await memo.sync_task


@kopf.index(*RESOURCE)
def claims_by_user(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    uid: str,
    meta: kopf.Meta,
    memo: Any,
    **_: Any,
) -> dict[str, Claim]:
    """Every object that wants each user, in this shard or not (another shard's object is
    alive: its claim is never taken as stale)."""
    return {
        claim_key(str(spec.get("iamUser", ""))): Claim(
            namespace=namespace or "",
            name=name,
            uid=uid,
            created=str(meta.get("creationTimestamp", "")),
            holding=holds_claim(dict(status)),
            in_shard=_shard(memo).serves(namespace or "", dict(meta.get("labels") or {})),
        )
    }


@kopf.on.resume(*RESOURCE, when=in_shard)
@kopf.on.create(*RESOURCE, when=in_shard)
@kopf.on.update(*RESOURCE, when=in_shard)
def reconcile_object(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    """Decide about the object now. Waits and retries are the sync loop's (the index says when),
    so nothing here raises for an expected wait."""
    runtime: Runtime = memo.runtime
    runtime.claims_index = kwargs["claims_by_user"]
    with metrics.RECONCILE_IN_FLIGHT.track():
        reconcile.converge(runtime, namespace or "", name)


@kopf.on.event(*RESOURCE, when=not_in_shard)
def object_outside_shard(
    *, namespace: str | None, name: str, uid: str, memo: Any, **_: Any
) -> None:
    """An object this shard does not serve (its labels moved it away, or never matched): it
    leaves the index, so nothing here acts on it again; the shard that serves it takes over."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        reconcile.forget(runtime, namespace or "", name, uid)


@kopf.on.delete(*RESOURCE, when=in_shard)
def finalize_object(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    deletion.finalize(memo.runtime, _plain(body))


@kopf.on.event("v1", "secrets", labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE})
def target_secret_changed(
    *,
    type: str,  # noqa: A002  (kopf's name for the watch event type)
    body: kopf.Body,
    namespace: str | None,
    memo: Any,
    **_: Any,
) -> None:
    """Put back a mirrored Secret that someone edited or deleted."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    owner = (body.get("metadata", {}).get("labels") or {}).get(OWNER_NAME_LABEL)
    if runtime is None or not owner or not namespace:
        return
    sync.target_secret_changed(runtime, namespace, owner, _plain(body), deleted=type == "DELETED")


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata", {})),
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
        "data": dict(body.get("data", {})),
    }
