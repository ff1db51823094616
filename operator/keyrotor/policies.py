"""The rotation rules, each a named pure function, and ``plan`` that chains them. No I/O here.

As cert-manager's ``policies`` chain: every rule answers one question from the observation
("is this refused, and why?", "is a rotation due?", "does the target need writing?"), and
``plan(spec, observation, now)`` puts the answers together into a :class:`Plan`: actions, the
conditions and facts to report, Events, what the index learns and when to look again. Refusals
come first and return before any action: check, then act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyrotor.conditions import Condition, find_condition, isoformat
from keyrotor.kms_keys import kms_key_update_needed
from keyrotor.mirroring import dead_key, mirror_key
from keyrotor.model import (
    END_GRACE_ANNOTATION,
    ROTATE_NOW_ANNOTATION,
    TAG_UID,
    ConditionType,
    Reason,
    Spec,
    parse_duration,
)
from keyrotor.observation import (
    Observation,
    Observed,
    desired_rotation_rules,
    deterministic_token,
    initial_version_id,
    rotation_config_matches,
)
from keyrotor.outcome import (
    Action,
    AdoptSecret,
    CancelRotation,
    ClearPending,
    ConfigureRotation,
    CreateSecret,
    EnsureInstallation,
    Event,
    IndexUpdate,
    Plan,
    RequestRotation,
    ScheduleDeletion,
    TakeClaim,
    normal,
    warning,
)
from keyrotor.refusals import REFUSALS, Refusal, claim_holder, refuse_suspended
from keyrotor.tenancy import (
    ClaimDecision,
    claim_value,
)

RETRY_ROTATION_IN_PROGRESS = 10.0
MOVED_MESSAGE = (
    "the object's labels moved it to another keyrotor shard, which took over its claim on the "
    "IAM user (and its secret, key and schedule, unchanged)"
)


# --- Steps: what must exist before a key can rotate ---------------------------------------------


def claim_step(spec: Spec, obs: Observation) -> TakeClaim | None:
    decision, _ = claim_holder(spec, obs)
    if decision is ClaimDecision.MINE:
        return None
    moved = decision is ClaimDecision.MOVED
    return TakeClaim(
        iam_user=spec.iam_user,
        value=claim_value(obs.context.installation, obs.obj.uid),
        object_label=f"{obs.obj.namespace}/{obs.obj.name}"[:256],
        event=normal(Reason.SHARD_CHANGED, MOVED_MESSAGE) if moved else None,
    )


def secret_step(spec: Spec, obs: Observation) -> CreateSecret | AdoptSecret | None:
    """The secret exists, carries this object's tags, and is not scheduled for deletion."""
    want = obs.context.secret_tags
    if obs.secret is None:
        return CreateSecret(
            name=spec.secret_name, iam_user=spec.iam_user, tags=want, kms_key_id=spec.kms_key_id
        )
    missing = {k: v for k, v in want.items() if obs.secret.tags.get(k) != v}
    # UpdateSecret only when the secret is under another key than the one the object names.
    rekey = kms_key_update_needed(spec.kms_key_id, obs.secret.kms_key_id)
    if missing or obs.secret.deleted or rekey:
        return AdoptSecret(
            arn=obs.secret.arn,
            add_tags=missing,
            restore=obs.secret.deleted,
            kms_key_id=spec.kms_key_id if rekey else None,
        )
    return None


def stuck_rotations(obs: Observation) -> tuple[bool, list[ClearPending]]:
    """A rotation is running (its AWSPENDING version is younger than stuck_after), or stuck:
    its AWSPENDING label is cleared so that rotation can go on."""
    secret = obs.secret
    running, clear = False, []
    for version in secret.stuck_pending if secret else ():
        age = obs.pending_ages.get(version)
        if age is not None and age < obs.context.stuck_after:
            running = True
            continue
        clear.append(
            ClearPending(
                arn=secret.arn if secret else "",
                version_id=version,
                event=key_in_use(obs, obs.pending_created.get(version))
                or warning(
                    Reason.ROTATION_STUCK,
                    f"rotation to version {version} did not finish; cleared its AWSPENDING label "
                    f"so rotation can go on (the rotation Lambda's logs say why it stopped)",
                ),
            )
        )
    return running, clear


def key_in_use(obs: Observation, started: datetime | None) -> Event | None:
    """The two-key limit stopped the rotation (started at ``started``): besides the mirrored key
    the user has another Active key, older than the rotation (a key the rotation itself made is
    newer) and not this object's previous key, which the Lambda refuses to delete (it may be in
    use). Say which, and what to do; keyrotor deletes nothing.

    ``started`` is the pending version's creation as AWS reports it (None: not known, and so
    neither which key the rotation made: no such claim). Never the decision's clock minus the
    version's age: the age is measured when the decision gathers, and the reads between that
    and the plan can take seconds under load, which made the rotation's own key look older."""
    if started is None:
        return None
    status = obs.obj.status
    ours = {status.get("accessKeyId"), (status.get("previousKey") or {}).get("accessKeyId")}
    before = started.replace(microsecond=0)
    others = sorted(
        k
        for k, (state, created) in obs.user_keys.items()
        if state == "Active" and k not in ours and created.replace(microsecond=0) < before
    )
    if len(obs.user_keys) < 2 or not others:
        return None
    user = obs.user.name if obs.user else ""
    return warning(
        Reason.KEY_IN_USE,
        f"the rotation stopped at IAM's two-key limit: IAM user {user!r} also has the Active "
        f"key {', '.join(others)}, which keyrotor did not make for this object and will not "
        f"delete; deactivate or delete it (aws iam update-access-key --user-name {user} "
        f"--access-key-id {others[0]} --status Inactive), then annotate "
        f"{ROTATE_NOW_ANNOTATION} again",
    )


def never_rotated(obs: Observation) -> bool:
    """First key: AWSCURRENT is still the version keyrotor created. LastRotatedDate alone is not
    enough: it comes after finishSecret moved AWSCURRENT, and a restart in between would rotate
    a second time."""
    secret = obs.secret
    return (
        secret is not None
        and secret.last_rotated is None
        and not obs.obj.status.get("accessKeyId")
        and secret.current_version in (None, initial_version_id(obs.obj.uid))
    )


def rotation_config_step(
    spec: Spec, obs: Observation, *, running: bool
) -> ConfigureRotation | None:
    """Rotation on, with this installation's Lambda and the spec's rules; a new secret is rotated
    at once, so that a managed key exists."""
    secret, lambda_arn = obs.secret, obs.lambda_arn or ""
    first_key = never_rotated(obs) and not running
    if secret is None or (rotation_config_matches(spec, secret, lambda_arn) and not first_key):
        return None
    return ConfigureRotation(
        arn=secret.arn,
        lambda_arn=lambda_arn,
        rules=desired_rotation_rules(spec),
        rotate_immediately=first_key,
        event=normal(Reason.ROTATION_REQUESTED, "requested the first rotation: a managed key")
        if first_key
        else None,
    )


@dataclass(frozen=True)
class RotateNow:
    request: RequestRotation | None = None
    handled: str | None = None  # requested earlier (before a restart): record it as handled
    wait: bool = False  # a rotation is running: after it
    grace_until: datetime | None = None  # the previous key's grace period: until then


def grace_period_until(status: Mapping[str, Any], now: datetime) -> datetime | None:
    """The grace period is a promise: while the previous key is Active and inside
    previousKey.after, a rotation would remove it at the two-key limit. Until when it holds."""
    previous = status.get("previousKey") or {}
    until = previous.get("actionAfter")
    if previous.get("state") != "Active" or not until:
        return None
    due = datetime.fromisoformat(str(until).replace("Z", "+00:00"))
    return due if now < due else None


def rotate_now(obs: Observation, now: datetime, *, running: bool) -> RotateNow:
    """``keyrotor.io/rotate-now``: one rotation per distinct value, at once; after a running
    rotation; after the previous key's grace period unless ``keyrotor.io/end-grace-period``
    carries the same value (an emergency: a leaked key)."""
    wanted, secret = obs.obj.rotate_now, obs.secret
    if not wanted or wanted == obs.obj.status.get("rotateNowHandled") or secret is None:
        return RotateNow()
    token = deterministic_token("rotate-now", obs.obj.uid, wanted)
    if token in secret.versions:
        return RotateNow(handled=wanted)
    if running:
        return RotateNow(wait=True)
    until = grace_period_until(obs.obj.status, now)
    if until is not None and obs.obj.end_grace != wanted:
        return RotateNow(grace_until=until)
    return RotateNow(
        request=RequestRotation(
            arn=secret.arn,
            token=token,
            cause="rotate-now",
            facts={"rotateNowHandled": wanted},
            event=normal(
                Reason.ROTATION_REQUESTED, f"rotation requested by {ROTATE_NOW_ANNOTATION}"
            ),
        )
    )


# --- The chain ----------------------------------------------------------------------------------


def refused(plan: Plan, refusal: Refusal, obs: Observation) -> Plan:
    plan.ready = Condition(ConditionType.READY, False, refusal.reason, refusal.message)
    plan.log_detail = refusal.detail
    if refusal.reason != Reason.SUSPENDED:
        plan.recheck_after = refusal.recheck or obs.context.recheck_interval
    return plan


def plan(spec: Spec, obs: Observation, now: datetime) -> Plan:
    """What to do for one object, from what was observed. Pure."""
    result = Plan(facts={"effective": spec.effective()})
    suspended = refuse_suspended(spec)
    if suspended is not None:
        return refused(result, suspended, obs)
    for rule in REFUSALS:
        refusal = rule(spec, obs)
        if refusal is not None:
            return refused(result, refusal, obs)
    step: Action | None = claim_step(spec, obs)
    step = step or (None if obs.lambda_arn else EnsureInstallation()) or secret_step(spec, obs)
    if step is not None:
        result.actions.append(step)
        return result
    return _admitted(spec, obs, now, result)


def _admitted(spec: Spec, obs: Observation, now: datetime, result: Plan) -> Plan:
    secret = obs.secret
    assert secret is not None and obs.lambda_arn  # the steps above made both
    result.facts.update(lambdaArn=obs.lambda_arn, secretArn=secret.arn, **schedule_facts(secret))
    running, clear = stuck_rotations(obs)
    configure = None if clear else rotation_config_step(spec, obs, running=running)
    if clear or configure:
        result.actions.extend([*clear, *([configure] if configure else [])])
        return result
    asked = rotate_now(obs, now, running=running)
    result.conditions.append(rotation_configured(spec, obs, asked, now, result))
    focus = running or asked.request is not None or asked.handled is not None
    if asked.request is not None:
        result.actions.append(asked.request)
        running = True
    if asked.handled is not None:
        result.facts["rotateNowHandled"] = asked.handled
    if asked.wait:
        result.recheck_after = RETRY_ROTATION_IN_PROGRESS
    if asked.grace_until is not None:
        result.recheck_after = (asked.grace_until - now).total_seconds() + 1
    sync = dead_key(obs, running=running) or mirror_key(
        spec, obs, now, first_key=never_rotated(obs), running=running
    )
    result.actions.extend(sync.actions)
    result.conditions.append(sync.condition)
    result.facts.update(sync.facts)
    result.events.extend(sync.events)
    key_id = result.facts.get("accessKeyId") or obs.obj.status.get("accessKeyId")
    result.index = IndexUpdate(
        active=True,
        iam_user=spec.iam_user,
        secret_arn=secret.arn,
        mirrored_version=sync.mirrored_version,
        access_key_id=key_id,
        key_created=obs.target.key_created
        if obs.target is not None and obs.target.access_key_id == key_id
        else None,
        next_rotation=secret.next_rotation,
        window=parse_duration(spec.window, "h") if spec.window else IndexUpdate.window,
        previous_key_due=sync.previous_key_due,
        focus=focus or sync.focus,
    )
    return result


def rotation_configured(
    spec: Spec, obs: Observation, asked: RotateNow, now: datetime, result: Plan
) -> Condition:
    """Rotation is on; a rotate-now waiting for the grace period says until when (an Event the
    first time)."""
    if asked.grace_until is None:
        return Condition(
            ConditionType.ROTATION_CONFIGURED,
            True,
            Reason.ROTATION_ENABLED,
            f"rotation by {obs.lambda_arn} on {spec.schedule_expression}",
        )
    previous = (obs.obj.status.get("previousKey") or {}).get("accessKeyId")
    message = (
        f"{ROTATE_NOW_ANNOTATION} {obs.obj.rotate_now!r} waits until "
        f"{isoformat(asked.grace_until)}: the previous key {previous} is in its grace period "
        f"(previousKey.after) and a rotation would remove it; to rotate at once and remove it, "
        f"annotate {END_GRACE_ANNOTATION}={obs.obj.rotate_now}"
    )
    before = find_condition(obs.obj.status.get("conditions"), ConditionType.ROTATION_CONFIGURED)
    if before is None or before.get("message") != message:
        result.events.append(normal(Reason.GRACE_PERIOD, message))
    return Condition(ConditionType.ROTATION_CONFIGURED, True, Reason.GRACE_PERIOD, message)


def schedule_facts(secret: Observed) -> dict[str, str]:
    """The schedule as AWS reports it now (status follows the rotations that happened)."""
    facts = {}
    if secret.last_rotated:
        facts["lastRotationTime"] = isoformat(secret.last_rotated)
    if secret.next_rotation:
        facts["nextRotationTime"] = isoformat(secret.next_rotation)
    return facts


# --- Deletion -----------------------------------------------------------------------------------


def deletion_plan(spec: Spec, secret: Observed | None, *, uid: str) -> Plan:
    """The deletion policy, for the secret only when it is this object's own. The mirrored
    Secret goes with its owner (garbage collection)."""
    result = Plan()
    if secret is None or secret.tags.get(TAG_UID) != uid:
        return result  # never created, or not ours: leave it alone
    result.actions.append(CancelRotation(arn=secret.arn))
    if spec.deletion_policy == "Retain":
        # Nothing rotates unowned: a retained secret's schedule would otherwise meet the next
        # owner's key at the two-key limit. An object with the same namespace, name and IAM user
        # takes it back and turns rotation on again.
        result.events.append(
            normal(
                Reason.SECRET_RETAINED,
                f"cancelled the rotation of {secret.arn} and left it and the IAM keys in place "
                f"(deletionPolicy Retain); an AccessKeyRotation with the same namespace, name "
                f"and IAM user takes it back",
            )
        )
        return result
    result.actions.append(
        ScheduleDeletion(arn=secret.arn, recovery_window_days=spec.recovery_window_days)
    )
    result.events.append(
        normal(
            Reason.SECRET_DELETION_SCHEDULED,
            f"cancelled rotation and scheduled deletion of {secret.arn} in "
            f"{spec.recovery_window_days} days (deletionPolicy Delete)",
        )
    )
    return result
