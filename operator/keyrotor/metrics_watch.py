"""kopf registration that feeds the scrape-time metrics (``metrics.OBJECTS``) from the watch
stream: every AccessKeyRotation event carries the object's current status. No API calls."""

from __future__ import annotations

from typing import Any

import kopf

from keyrotor import metrics
from keyrotor.model import GROUP, PLURAL, VERSION
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
