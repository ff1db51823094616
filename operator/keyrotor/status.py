"""The one writer of status and Events.

Status is written with the resourceVersion it was decided from (a ConflictError means: read
again, decide again), and only when it changed. Events are posted only after that write: an Event
reports a transition that status now records, so a decision that lost a conflict posts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keyrotor import metrics
from keyrotor.conditions import Condition, derive_ready, find_condition, merge_conditions
from keyrotor.k8s import objects
from keyrotor.model import KOPF_PREFIX, ConditionType, Reason
from keyrotor.outcome import Event, normal, warning
from keyrotor.runtime import Runtime

# Ready=False for these is an expected state, not a failure: a Normal Event.
EXPECTED = (Reason.ROTATION_PENDING, Reason.SUSPENDED)


def commit(
    rt: Runtime,
    body: Mapping[str, Any],
    *,
    conditions: Sequence[Condition],
    ready: Condition | None,
    facts: Mapping[str, Any],
    events: Sequence[Event],
) -> dict[str, Any]:
    """Write the new status (when it changed) and post the Events; the status as written."""
    metadata = body["metadata"]
    status: Mapping[str, Any] = body.get("status") or {}
    generation = metadata.get("generation")
    now = rt.clock()
    existing = list(status.get("conditions") or [])
    merged = merge_conditions(existing, conditions, generation=generation, now=now)
    ready = ready or derive_ready(merged)
    merged = merge_conditions(merged, [ready], generation=generation, now=now)
    to_post = list(events)
    old_ready = find_condition(existing, ConditionType.READY)
    if old_ready is None or (old_ready.get("status"), old_ready.get("reason")) != (
        ready.status_text,
        ready.reason,
    ):
        if not ready.status and ready.reason not in EXPECTED:
            metrics.ERRORS.labels(reason=ready.reason).inc()
            to_post.append(warning(ready.reason, ready.message))
        else:
            to_post.append(normal(ready.reason, ready.message))
    new_status = {**facts, "conditions": merged, "observedGeneration": generation}
    if any(status.get(k) != v for k, v in new_status.items()):
        written = objects.patch_status(
            rt.kube,
            metadata["namespace"],
            metadata["name"],
            new_status,
            resource_version=str(metadata.get("resourceVersion", "")),
        )
        if written is not None:
            rt.index.note_own_write(metadata["namespace"], metadata["name"], written)
    post_events(rt, body, to_post)
    return {**status, **new_status}


def post_events(rt: Runtime, body: Mapping[str, Any], events: Sequence[Event]) -> None:
    for event in events:
        rt.emit(dict(body), event_type=event.type, reason=event.reason, message=event.message)


def _without_bookkeeping(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = dict(body.get("metadata") or {})
    for key in ("resourceVersion", "managedFields"):
        metadata.pop(key, None)
    metadata["annotations"] = {
        k: v
        for k, v in (metadata.get("annotations") or {}).items()
        if not k.startswith(f"{KOPF_PREFIX}/")
    }
    return {**body, "metadata": metadata}


def kopf_bookkeeping_only(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """The object differs only in kopf's own annotations (and so its resourceVersion and
    managedFields): spec, status, labels, keyrotor's annotations, finalizers and deletion
    are as they were."""
    return _without_bookkeeping(before) == _without_bookkeeping(after)
