"""The rules of mirroring: when the target Secret is written, what a rotation entails, when the
previous key is retired, and when the sync loop looks at a secret. Pure; no I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from keyrotor.conditions import Condition, isoformat
from keyrotor.model import ConditionType, Reason, Spec
from keyrotor.observation import (
    KeyView,
    Observation,
    Observed,
    TargetView,
    deterministic_token,
    initial_version_id,
)
from keyrotor.outcome import (
    Action,
    Event,
    MirrorKey,
    RequestRotation,
    RestartWorkload,
    RetirePreviousKey,
    normal,
    warning,
)

DUE_CHECK_INTERVAL = timedelta(seconds=30)


class TargetState(Enum):
    CURRENT = "Current"
    MISSING = "Missing"
    DRIFTED = "Drifted"  # data edited, or another version mirrored
    OUTDATED = "Outdated"  # our data, but not spec.target's profile, labels or annotations


def target_state(target: TargetView | None, version_id: str | None) -> TargetState:
    """How the target Secret stands against the version it should hold."""
    if target is None or not target.exists:
        return TargetState.MISSING
    if target.version_id != version_id or not target.intact:
        return TargetState.DRIFTED
    return TargetState.CURRENT if target.matches_spec else TargetState.OUTDATED


@dataclass
class Sync:
    """The mirroring part of a plan."""

    condition: Condition
    actions: list[Action] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    mirrored_version: str | None = None
    previous_key_due: datetime | None = None
    focus: bool = False


def target_is_foreign(obs: Observation) -> bool:
    return obs.target is not None and obs.target.exists and not obs.target.owned


def foreign_target_message(spec: Spec, obs: Observation) -> str:
    return (
        f"Secret {obs.obj.namespace}/{spec.target_secret_name} exists and is not managed by "
        f"this AccessKeyRotation; delete it or choose another spec.target.secretName"
    )


def synced(version: str | None) -> Condition:
    return Condition(
        ConditionType.SYNCED, True, Reason.SYNCED, f"Secret holds AWSCURRENT version {version}"
    )


def waiting_for_first_key() -> Condition:
    return Condition(
        ConditionType.SYNCED, False, Reason.ROTATION_PENDING, "waiting for the first key"
    )


def mirror_key(
    spec: Spec, obs: Observation, now: datetime, *, first_key: bool, running: bool
) -> Sync:
    """Mirror AWSCURRENT when its version changed or the target Secret drifted; then the
    after-rotation work. The value is read (by the gather step) only in those cases."""
    status, secret = obs.obj.status, obs.secret
    mirrored = status.get("versionId")
    if first_key or secret is None:
        # Nothing to mirror until AWSCURRENT moves off the version keyrotor created.
        return Sync(
            waiting_for_first_key(), mirrored_version=secret.current_version if secret else None
        )
    if target_is_foreign(obs):  # replaced by someone else's Secret: never overwritten
        failed = Condition(
            ConditionType.SYNCED, False, Reason.SYNC_FAILED, foreign_target_message(spec, obs)
        )
        return Sync(failed, mirrored_version=mirrored)
    current = secret.current_version
    if current == mirrored and target_state(obs.target, current) is TargetState.CURRENT:
        actions, due = previous_key_work(spec, status, now)
        facts = {"versionId": current, "accessKeyId": status.get("accessKeyId", "")}
        return Sync(synced(current), actions, facts, mirrored_version=current, previous_key_due=due)
    key = obs.key if current != initial_version_id(obs.obj.uid) else None
    if key is None or not key.access_key_id:
        return first_key_again(secret, running=running, mirrored=mirrored)
    return mirror_new_version(spec, obs, key, now)


def dead_key(obs: Observation, *, running: bool) -> Sync | None:
    """The mirrored key was deleted or deactivated outside keyrotor (IAM's credential report):
    Synced=False with its own reason, and a rotation to replace it (once per dead key). No newer
    version to mirror yet: otherwise mirroring it is the cure. The grace period does not hold
    this rotation back: the Lambda makes room by removing the dead key itself (inactive or gone),
    never the previous Active one."""
    status, secret = obs.obj.status, obs.secret
    key_id = status.get("accessKeyId")
    if obs.dead_key is None or secret is None or secret.current_version != status.get("versionId"):
        return None
    what = "deleted" if obs.dead_key == "gone" else "deactivated"
    condition = Condition(
        ConditionType.SYNCED,
        False,
        Reason.DEAD_KEY,
        f"the mirrored key {key_id} was {what} outside keyrotor (IAM credential report); "
        f"a rotation replaces it",
    )
    sync = Sync(condition, mirrored_version=secret.current_version, focus=True)
    token = deterministic_token("heal", obs.obj.uid, str(key_id))
    if token not in secret.versions and not running:
        sync.actions.append(
            RequestRotation(
                arn=secret.arn,
                token=token,
                cause="dead-key",
                event=warning(
                    Reason.ROTATION_REQUESTED,
                    f"requested a rotation: the mirrored key {key_id} was {what} outside keyrotor",
                ),
            )
        )
    return sync


def first_key_again(secret: Observed, *, running: bool, mirrored: str | None) -> Sync:
    """No key yet and no rotation running: the first rotation was cleared as stuck (or never
    started). Ask again, or the object would wait for its first key for ever."""
    sync = Sync(waiting_for_first_key(), mirrored_version=mirrored)
    if not secret.pending_versions and not running:
        sync.actions.append(
            RequestRotation(
                arn=secret.arn,
                token=None,
                cause="first-key",
                if_idle=True,
                event=normal(
                    Reason.ROTATION_REQUESTED,
                    "requested the first rotation again: the last one did not finish",
                ),
            )
        )
        sync.focus = True
    return sync


def mirror_new_version(spec: Spec, obs: Observation, key: KeyView, now: datetime) -> Sync:
    status = obs.obj.status
    mirrored = status.get("versionId")
    state = target_state(obs.target, key.version_id)
    rotated = mirrored is not None and mirrored != key.version_id
    name = spec.target_secret_name
    sync = Sync(synced(key.version_id), mirrored_version=key.version_id)
    sync.facts = {
        "versionId": key.version_id,
        "accessKeyId": key.access_key_id,
        "lastSyncTime": isoformat(now),
    }
    if rotated:
        cause = "rotation"
        event = normal(
            Reason.SYNCED,
            f"mirrored the new key {key.access_key_id} (version {key.version_id}) "
            f"into Secret {name}",
        )
    elif mirrored and state is TargetState.OUTDATED:
        cause = "update"
        event = normal(
            Reason.SYNCED, f"updated Secret {name} to spec.target (profile, labels, annotations)"
        )
    elif mirrored:
        cause = "repair"
        event = warning(
            Reason.SECRET_REPAIRED,
            f"Secret {name} was {state.value.lower()}; put back version {key.version_id}",
        )
    else:
        cause = "initial"
        event = normal(Reason.SYNCED, f"mirrored key {key.access_key_id} into Secret {name}")
    if state is not TargetState.CURRENT:
        sync.actions.append(
            MirrorKey(
                version_id=key.version_id,
                iam_user=spec.iam_user,
                secret_name=name,
                profile=spec.profile,
                labels=spec.target_labels,
                annotations=spec.target_annotations,
                cause=cause,
            )
        )
    sync.events.append(event)
    if rotated:
        after_rotation(spec, status, key, now, sync, dead=obs.dead_key)
    else:
        retire, sync.previous_key_due = previous_key_work(spec, status, now)
        sync.actions.extend(retire)
    return sync


def after_rotation(
    spec: Spec,
    status: Mapping[str, Any],
    key: KeyView,
    now: datetime,
    sync: Sync,
    *,
    dead: str | None = None,
) -> None:
    """A new key is mirrored: restart the workloads that read it; the previous key gets its
    grace period (previousKey.after) before it is deactivated or deleted."""
    for ref in spec.restart_on_rotation:
        sync.actions.append(
            RestartWorkload(
                workload=ref,
                version_id=key.version_id,
                event=normal(
                    Reason.WORKLOAD_RESTARTED, f"restarted {ref.kind} {ref.name} for the new key"
                ),
            )
        )
    old_key = status.get("accessKeyId")
    if not old_key or old_key == key.access_key_id:
        return
    # actionAfter: when the grace period ends (for Keep too: no rotation keyrotor requests
    # removes the previous key before then).
    if dead is not None:  # replaced because it was dead: nothing to wait for, nothing to retire
        state = "Deleted" if dead == "gone" else "Inactive"
        sync.facts["previousKey"] = {"accessKeyId": old_key, "state": state}
        return
    grace_end = now + spec.previous_key_after
    previous = {"accessKeyId": old_key, "state": "Active", "actionAfter": isoformat(grace_end)}
    if spec.previous_key_action != "Keep":
        sync.previous_key_due = grace_end
    sync.facts["previousKey"] = previous


def previous_key_work(
    spec: Spec, status: Mapping[str, Any], now: datetime
) -> tuple[list[Action], datetime | None]:
    """Deactivate or delete the previous key once its grace period is over, and only while the
    target holds the current key (the caller's rule); never the current key."""
    previous = dict(status.get("previousKey") or {})
    key_id = previous.get("accessKeyId")
    due_text = previous.get("actionAfter")
    if not key_id or not due_text or previous.get("state") != "Active":
        return [], None
    if spec.previous_key_action == "Keep" or key_id == status.get("accessKeyId"):
        return [], None
    due = datetime.fromisoformat(due_text.replace("Z", "+00:00"))
    if now < due:
        return [], due
    delete = spec.previous_key_action == "Delete"
    previous["state"] = "Deleted" if delete else "Inactive"
    event = (
        normal(Reason.PREVIOUS_KEY_DELETED, f"deleted the previous key {key_id}")
        if delete
        else normal(Reason.PREVIOUS_KEY_DEACTIVATED, f"deactivated the previous key {key_id}")
    )
    action = RetirePreviousKey(
        iam_user=spec.iam_user,
        access_key_id=key_id,
        delete=delete,
        facts={"previousKey": previous},
        event=event,
    )
    return [action], None


# --- When the sync loop looks (rules of the watch, not of one object's plan) -------------------


FOCUS_LOOK_CAP = 30.0  # seconds: the longest gap between two looks at a rotation in focus
FIRST_LOOK_CAP = 30.0  # seconds: the latest first look, however slow rotations were lately


def focus_look_due(
    since: datetime | None,
    looks: int,
    now: datetime,
    interval: float,
    cap: float = FOCUS_LOOK_CAP,
    first: float | None = None,
) -> bool:
    """Whether an object in focus (a rotation requested or running) is looked at
    (DescribeSecret) now. The first look of one wait comes ``first`` seconds after it began
    (:func:`next_first_look`: about as long as this installation's rotations take; ``interval``
    when not known), the next ones ``interval`` x 1, 2, 4, 8 ... after that, each gap at most
    ``cap`` (2, 4, 8, 16, 32 s, then every 30 s when ``first`` is the interval of 2 s): a
    rotation is mostly seen at the first look, one a little slower at the next, and a long
    wait (rotations queued behind a busy Lambda, a big batch) costs a few looks, not one every
    interval. ``looks``: made so far in this wait; ``since``: when it began (None: look
    now)."""
    if since is None:
        return True
    offset, gap = max(interval, first or 0.0), interval
    for _ in range(looks):
        offset += min(cap, gap)
        gap *= 2
    return (now - since).total_seconds() >= offset


FIRST_LOOK_SOONER = 0.9  # a rotation seen at the first look: look a little sooner next time
FIRST_LOOK_LATER = 1.25  # not yet there at the first look: a little later next time


def next_first_look(
    first: float, *, seen_at_first: bool, interval: float, cap: float = FIRST_LOOK_CAP
) -> float:
    """When the next wait's first look comes, after a wait whose rotation the first look saw
    (``seen_at_first``) or not. A rotation on AWS takes seconds at the least (the rotation
    function's testSecret waits for the new key to propagate), so looks before then are wasted;
    how long is learnt from the waits themselves, needing nothing AWS reports: a little later
    after each wait the first look was too early for, a little sooner after each it was not.
    That settles where about two waits in three end at the first look (``FIRST_LOOK_LATER``
    against ``FIRST_LOOK_SOONER``), one slow rotation moves it by a quarter only, and it stays
    between ``interval`` and ``cap``."""
    factor = FIRST_LOOK_SOONER if seen_at_first else FIRST_LOOK_LATER
    return min(cap, max(interval, first * factor))


def rotation_watched(
    focus_until: datetime | None, focus_since: datetime | None, now: datetime, stuck_after: float
) -> bool:
    """The object is in focus and its wait began less than ``stuck_after`` ago: a rotation the
    focus looks follow, too young to be stuck. The sweep leaves its AWSPENDING version to them
    (it would decide again only to find the rotation running); one older than that is the
    sweep's to clear."""
    return (
        focus_until is not None
        and focus_since is not None
        and now <= focus_until
        and (now - focus_since).total_seconds() < stuck_after
    )


def scheduled_rotation_due(
    next_rotation: datetime | None, window: timedelta, now: datetime
) -> bool:
    """A scheduled rotation's window is open (plus an hour for Secrets Manager to start it)."""
    return next_rotation is not None and next_rotation <= now <= (
        next_rotation + window + timedelta(hours=1)
    )


def schedule_moved(reported_last_rotation: str | None, observed: Observed) -> bool:
    """AWS reports a later rotation than status does. finishSecret moves AWSCURRENT before
    Secrets Manager records LastRotatedDate, so the version can be mirrored (by any path) while
    the rotation's time is not known yet; without this, status kept the previous rotation's
    times until the next one."""
    if observed.last_rotated is None:
        return False
    reported = reported_last_rotation
    return reported is None or isoformat(observed.last_rotated) > reported


def needs_decision(
    mirrored_version: str | None, reported: str | None, observed: Observed, *, pending: bool = True
) -> bool:
    """What the sync loop saw calls for a decision on the object: a new AWSCURRENT version, a
    rotation that did not finish (``pending``: the sweep's question; the focus tick waits for
    the version instead), or a schedule that moved."""
    return (
        observed.current_version != mirrored_version
        or (pending and bool(observed.stuck_pending))
        or schedule_moved(reported, observed)
    )
