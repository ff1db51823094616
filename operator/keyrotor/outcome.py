"""What a plan is made of: actions to carry out, status to report, what the index learns.

Pure data. ``policies.plan`` makes a :class:`Plan`; ``executor`` carries out its actions;
``status`` writes its conditions and facts and posts its Events; ``index`` applies its
:class:`IndexUpdate`. An action's ``facts`` and ``event`` count only when the action succeeded
(a rotate-now is recorded as handled only when Secrets Manager accepted the rotation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyrotor.conditions import Condition
from keyrotor.model import WorkloadRef


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def normal(reason: str, message: str) -> Event:
    return Event("Normal", reason, message)


def warning(reason: str, message: str) -> Event:
    return Event("Warning", reason, message)


@dataclass(frozen=True, kw_only=True)
class Action:
    facts: Mapping[str, Any] = field(default_factory=dict)  # status facts once it succeeded
    event: Event | None = None  # posted once it succeeded and status was written


@dataclass(frozen=True, kw_only=True)
class TakeClaim(Action):
    iam_user: str
    value: str
    object_label: str


@dataclass(frozen=True, kw_only=True)
class ReleaseClaim(Action):
    iam_user: str
    value: str


@dataclass(frozen=True, kw_only=True)
class EnsureInstallation(Action):
    pass


@dataclass(frozen=True, kw_only=True)
class CreateSecret(Action):
    name: str
    iam_user: str
    tags: Mapping[str, str]
    kms_key_id: str | None


@dataclass(frozen=True, kw_only=True)
class AdoptSecret(Action):
    arn: str
    add_tags: Mapping[str, str]
    restore: bool
    kms_key_id: str | None


@dataclass(frozen=True, kw_only=True)
class ClearPending(Action):
    arn: str
    version_id: str


@dataclass(frozen=True, kw_only=True)
class ConfigureRotation(Action):
    arn: str
    lambda_arn: str
    rules: Mapping[str, Any]
    rotate_immediately: bool


@dataclass(frozen=True, kw_only=True)
class RequestRotation(Action):
    arn: str
    token: str | None  # None: a fresh one (a new attempt after one that did not finish)
    cause: str  # metric label: first-key | rotate-now
    if_idle: bool = False  # refused because a rotation started meanwhile: that one will do


@dataclass(frozen=True, kw_only=True)
class CancelRotation(Action):
    arn: str


@dataclass(frozen=True, kw_only=True)
class ScheduleDeletion(Action):
    arn: str
    recovery_window_days: int


@dataclass(frozen=True, kw_only=True)
class MirrorKey(Action):
    """Write the AWSCURRENT key (read by the gather step, kept out of the plan) to the target."""

    version_id: str
    iam_user: str
    secret_name: str
    profile: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    cause: str  # metric label: initial | rotation | repair | update


@dataclass(frozen=True, kw_only=True)
class RestartWorkload(Action):
    workload: WorkloadRef
    version_id: str


@dataclass(frozen=True, kw_only=True)
class RetirePreviousKey(Action):
    iam_user: str
    access_key_id: str
    delete: bool  # else deactivate


# Actions after which the world must be looked at again before the next decision.
STEP_ACTIONS = (
    TakeClaim,
    EnsureInstallation,
    CreateSecret,
    AdoptSecret,
    ClearPending,
    ConfigureRotation,
)


@dataclass(frozen=True)
class IndexUpdate:
    """What the in-memory index learns from a plan (no secret values, ever)."""

    active: bool  # admitted: the sync loop watches its secret
    iam_user: str | None = None
    secret_arn: str | None = None
    mirrored_version: str | None = None
    access_key_id: str | None = None  # the mirrored key (the dead-key check looks it up)
    key_created: datetime | None = None  # its CreateDate, when the target Secret says it
    next_rotation: datetime | None = None
    window: timedelta = timedelta(hours=1)
    previous_key_due: datetime | None = None
    focus: bool = False  # a rotation was requested or is running: DescribeSecret it often


@dataclass
class Plan:
    """What to do, what to report, and when to look again (an expected wait, in seconds)."""

    actions: list[Action] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    ready: Condition | None = None  # explicit Ready (a refusal); else derived from the others
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    index: IndexUpdate = field(default_factory=lambda: IndexUpdate(active=False))
    recheck_after: float | None = None
    log_detail: str = ""  # for administrators (the operator log), never on the object

    @property
    def again(self) -> bool:
        """A step changed what the next decision depends on: gather again, then decide."""
        return any(isinstance(a, STEP_ACTIONS) for a in self.actions)
