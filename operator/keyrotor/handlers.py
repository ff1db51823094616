"""kopf registrations only: thin, typed, no boto3 or Kubernetes calls of their own.

One function carries resume, create and update, so nothing is left unattended after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from keyrotor import reconcile
from keyrotor.k8s.secrets import data_hash
from keyrotor.model import (
    DATA_HASH_ANNOTATION,
    FINALIZER,
    GROUP,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    PLURAL,
    VERSION,
    VERSION_ID_ANNOTATION,
    Claim,
    holds_claim,
)
from keyrotor.runtime import Runtime
from keyrotor.sync import SyncLoop

RESOURCE = (GROUP, VERSION, PLURAL)
KOPF_PREFIX = f"kopf.{GROUP}"


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf ignores every annotation under the prefix of its own storage when it compares
    # objects, so it must not be keyrotor.io itself: keyrotor.io/rotate-now has to count.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.execution.max_workers = 8
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    runtime: Runtime = await asyncio.to_thread(memo.make_runtime)
    memo.runtime = runtime
    memo.stop_sync = asyncio.Event()
    memo.sync_task = asyncio.create_task(SyncLoop(runtime).run(memo.stop_sync))


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
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
    **_: Any,
) -> dict[str, Claim]:
    namespace = namespace or ""
    return {
        str(spec.get("iamUser", "")): Claim(
            namespace=namespace,
            name=name,
            uid=uid,
            created=str(meta.get("creationTimestamp", "")),
            holding=holds_claim(dict(status)),
        )
    }


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
def reconcile_object(*, body: kopf.Body, spec: kopf.Spec, memo: Any, **kwargs: Any) -> None:
    claims_by_user: kopf.Index[str, Claim] = kwargs["claims_by_user"]
    claims = list(claims_by_user.get(str(spec.get("iamUser", "")), []))
    outcome = reconcile.reconcile(memo.runtime, _plain(body), claims)
    if outcome.retry_after is not None:
        message = outcome.ready.message if outcome.ready else "not yet"
        raise kopf.TemporaryError(message, delay=outcome.retry_after)


@kopf.on.delete(*RESOURCE)
def finalize_object(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    reconcile.finalize(memo.runtime, _plain(body))


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
    entry = runtime.index.get(namespace, owner) if runtime and owner and namespace else None
    if runtime is None or entry is None or not entry.active or entry.secret_arn is None:
        return
    annotations = body.get("metadata", {}).get("annotations") or {}
    intact = annotations.get(VERSION_ID_ANNOTATION) == entry.mirrored_version and annotations.get(
        DATA_HASH_ANNOTATION
    ) == data_hash(dict(body.get("data") or {}))
    if type != "DELETED" and intact:
        return  # our own write, or a change that left the key alone
    SyncLoop(runtime).repair(entry)


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata", {})),
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
    }
