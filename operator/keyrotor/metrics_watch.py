"""kopf registration on the watch stream of AccessKeyRotation objects (every event carries the
object's current status and labels; no API calls):

- it feeds the scrape-time metrics (``metrics.OBJECTS``) with the objects this shard serves;
- an object that left this shard (its labels moved it to another) leaves the index, so nothing
  here acts on it again (every decision also re-reads the object and checks).

One handler for both: one call per event, as before sharding."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from keyrotor import metrics, reconcile
from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor.runtime import Runtime
from keyrotor.shards import Shard


@kopf.on.event(GROUP, VERSION, PLURAL)
async def object_status_seen(
    *,
    type: str,  # noqa: A002  (kopf's name for the watch event type)
    body: kopf.Body,
    namespace: str | None,
    name: str | None,
    memo: Any,
    **_: Any,
) -> None:
    if not namespace or not name:
        return
    shard = getattr(memo, "shard", None)
    served = not isinstance(shard, Shard) or shard.serves(namespace, dict(body.metadata.labels))
    if type == "DELETED" or not served:  # another shard reports the objects it serves
        metrics.OBJECTS.gone(namespace, name)
    else:
        metrics.OBJECTS.seen(namespace, name, body)
    runtime = getattr(memo, "runtime", None)
    if not served and isinstance(runtime, Runtime):
        entry = runtime.index.get(namespace, name)
        if entry is not None and entry.uid == body.metadata.uid:  # rare: it just left
            await asyncio.to_thread(reconcile.forget, runtime, namespace, name, entry.uid)
