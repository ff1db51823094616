"""Conditions as the Kubernetes API conventions and cert-manager keep them. No I/O here.

A list keyed by ``type``; ``lastTransitionTime`` moves only when the status flips; Ready first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyrotor.model import ConditionType, Reason


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def isoformat(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    existing: Sequence[Mapping[str, Any]],
    updates: Sequence[Condition],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Set conditions by type; lastTransitionTime moves only when the status flips.

    Ready is kept first, then the others in a stable order.
    """
    by_type: dict[str, dict[str, Any]] = {str(c.get("type")): dict(c) for c in existing or ()}
    for update in updates:
        old = by_type.get(update.type)
        transition = (
            old["lastTransitionTime"]
            if old and old.get("status") == update.status_text and old.get("lastTransitionTime")
            else isoformat(now)
        )
        entry: dict[str, Any] = {
            "type": update.type,
            "status": update.status_text,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[update.type] = entry
    order = [ConditionType.READY, ConditionType.ROTATION_CONFIGURED, ConditionType.SYNCED]
    ordered = [by_type.pop(t) for t in order if t in by_type]
    return ordered + [by_type[t] for t in sorted(by_type)]


def find_condition(
    conditions: Sequence[Mapping[str, Any]] | None, type_: str
) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def derive_ready(conditions: Sequence[Mapping[str, Any]]) -> Condition:
    """Ready follows RotationConfigured and Synced: the first that is not True says why."""
    for type_ in (ConditionType.ROTATION_CONFIGURED, ConditionType.SYNCED):
        condition = find_condition(conditions, type_)
        if condition is None:
            return Condition(
                ConditionType.READY, False, Reason.ROTATION_PENDING, f"{type_} unknown"
            )
        if condition.get("status") != "True":
            return Condition(
                ConditionType.READY, False, str(condition["reason"]), str(condition["message"])
            )
    return Condition(ConditionType.READY, True, Reason.READY, "the current key is mirrored")
