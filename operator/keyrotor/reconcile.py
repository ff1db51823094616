"""Level-based reconciliation of one AccessKeyRotation: what should exist, which condition holds.

``reconcile`` is the whole check (create, update, resume); ``sync_current_key`` is the part the
shared sync loop runs when it sees a new ``AWSCURRENT`` version. Both end in ``apply_outcome``,
the one place that writes status and posts Events. Every step is idempotent: the operator can be
killed at any line and converges when it runs again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyrotor import metrics
from keyrotor.aws import iam, rotation_function, secrets
from keyrotor.aws.clients import ACCESS_DENIED_CODES, error_code, error_message
from keyrotor.k8s import objects, workloads
from keyrotor.k8s import secrets as target_secrets
from keyrotor.model import (
    CLAIM_OBJECT_TAG,
    CLAIM_TAG,
    GROUP,
    KIND,
    ROTATE_NOW_ANNOTATION,
    TAG_CLUSTER,
    TAG_IAM_USER,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    VERSION,
    Claim,
    ClaimDecision,
    Condition,
    ConditionType,
    Observed,
    Reason,
    Spec,
    SpecError,
    authorization_problem,
    claim_decision,
    claim_value,
    conflicting_claim,
    desired_rotation_rules,
    find_condition,
    isoformat,
    merge_conditions,
    parse_spec,
    rotation_config_matches,
)
from keyrotor.runtime import Runtime

log = logging.getLogger(__name__)

FOCUS_AFTER_REQUEST = timedelta(minutes=15)
RETRY_AWS_ERROR = 60.0
RETRY_ROTATION_IN_PROGRESS = 10.0


@dataclass
class Outcome:
    """What a reconcile decided: conditions, status facts, events, and when to look again."""

    conditions: list[Condition] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    retry_after: float | None = None
    ready: Condition | None = None  # explicit Ready (a failure before the other conditions)

    def fail(self, reason: str, message: str, retry_after: float | None = None) -> Outcome:
        self.ready = Condition(ConditionType.READY, False, reason, message)
        self.retry_after = retry_after
        metrics.ERRORS.labels(reason=reason).inc()
        return self

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message))


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = body["metadata"]
    return metadata["namespace"], metadata["name"], metadata["uid"]


def parse(rt: Runtime, body: Mapping[str, Any]) -> Spec:
    namespace, name, _ = _meta(body)
    return parse_spec(
        body.get("spec") or {},
        name=name,
        namespace=namespace,
        default_secret_name=rt.settings.default_secret_name(namespace, name),
    )


def secret_tags(rt: Runtime, body: Mapping[str, Any], spec: Spec) -> dict[str, str]:
    namespace, name, uid = _meta(body)
    return {
        TAG_CLUSTER: rt.settings.cluster_name,
        TAG_NAMESPACE: namespace,
        TAG_NAME: name,
        TAG_UID: uid,
        TAG_IAM_USER: spec.iam_user,
        "app.kubernetes.io/managed-by": "keyrotor",
    }


def owner_of(body: Mapping[str, Any]) -> target_secrets.Owner:
    _, name, uid = _meta(body)
    return target_secrets.Owner(api_version=f"{GROUP}/{VERSION}", kind=KIND, name=name, uid=uid)


# --- The whole reconcile ---------------------------------------------------------------------


def reconcile(rt: Runtime, body: Mapping[str, Any], claims: Sequence[Claim]) -> Outcome:
    """Make it so, then write status. Never raises for bad input: that is a condition."""
    namespace, name, uid = _meta(body)
    outcome = Outcome()
    try:
        spec = parse(rt, body)
    except SpecError as exc:
        rt.index.update(namespace, name, uid, active=False)
        outcome.fail(Reason.INVALID_SPEC, str(exc))
        return apply_outcome(rt, body, outcome)
    outcome.facts["effective"] = spec.effective()
    if spec.suspend:
        rt.index.update(namespace, name, uid, active=False)
        outcome.fail(Reason.SUSPENDED, "spec.suspend is true: no rotation and no sync")
        return apply_outcome(rt, body, outcome)
    try:
        _reconcile_aws(rt, body, spec, claims, outcome)
    except Exception as exc:
        _aws_failure(rt, body, exc, outcome)
    return apply_outcome(rt, body, outcome)


def _aws_failure(rt: Runtime, body: Mapping[str, Any], exc: Exception, outcome: Outcome) -> None:
    namespace, name, uid = _meta(body)
    rt.index.update(namespace, name, uid, active=False)
    code = error_code(exc)
    if isinstance(exc, secrets.SecretOwnedElsewhereError | target_secrets.TargetConflictError):
        outcome.fail(Reason.CONFLICT, str(exc), rt.settings.recheck_interval)
    elif code in ACCESS_DENIED_CODES:
        outcome.fail(
            Reason.ACCESS_DENIED,
            f"keyrotor is missing an AWS permission: {error_message(exc)}",
            rt.settings.recheck_interval,
        )
    elif code:
        rt.forget_installation()
        outcome.fail(Reason.AWS_ERROR, error_message(exc), RETRY_AWS_ERROR)
    elif isinstance(exc, rotation_function.RoleNotReadyError):
        rt.forget_installation()  # a role created a moment ago: IAM is eventually consistent
        outcome.fail(Reason.AWS_ERROR, str(exc), RETRY_AWS_ERROR)
    else:
        # Not an AWS error: log the type and where, never arguments (they may hold key material).
        log.error("reconcile of %s/%s failed: %s", namespace, name, type(exc).__name__)
        outcome.fail(Reason.AWS_ERROR, f"internal error: {type(exc).__name__}", RETRY_AWS_ERROR)


def _claim_user(
    rt: Runtime,
    body: Mapping[str, Any],
    spec: Spec,
    user_tags: Mapping[str, str],
    claims: Sequence[Claim],
    outcome: Outcome,
) -> bool:
    """One IAM user, one object: the claim tag on the user decides; when it is free, the oldest
    object that wants the user (the in-memory index) takes it, and reads the tag back to learn
    whether it won a race with another writer."""
    namespace, name, uid = _meta(body)
    cluster = rt.settings.cluster_name
    mine = claim_value(cluster, uid)
    held = user_tags.get(CLAIM_TAG)
    decision = claim_decision(mine=mine, held=held, live_uids={c.uid for c in claims})
    if decision is ClaimDecision.MINE:
        return True
    if decision is ClaimDecision.FREE:
        me = Claim(
            namespace=namespace,
            name=name,
            uid=uid,
            created=body["metadata"].get("creationTimestamp", ""),
        )
        winner = conflicting_claim(me, claims)
        if winner is None:
            iam.tag_user(
                rt.aws.iam,
                spec.iam_user,
                {CLAIM_TAG: mine, CLAIM_OBJECT_TAG: f"{namespace}/{name}"[:256]},
            )
            held = iam.user_tags(rt.aws.iam, spec.iam_user).get(CLAIM_TAG)
            if held == mine:
                return True
        else:
            held = claim_value(cluster, winner.uid)
            user_tags = {CLAIM_OBJECT_TAG: f"{winner.namespace}/{winner.name}"}
    holder = user_tags.get(CLAIM_OBJECT_TAG) or "?"
    holder_cluster = (held or "").rpartition("/")[0]
    outcome.fail(
        Reason.CONFLICT,
        f"IAM user {spec.iam_user!r} is already claimed by AccessKeyRotation {holder} of keyrotor "
        f"installation {holder_cluster!r} (IAM tag {CLAIM_TAG}={held}); one IAM user is rotated "
        f"by one object",
        rt.settings.recheck_interval,
    )
    return False


def release_claim(rt: Runtime, body: Mapping[str, Any], iam_user: str) -> None:
    """Take this object's claim tag off the IAM user, so that another object may claim it."""
    _, _, uid = _meta(body)
    tags = iam.user_tags(rt.aws.iam, iam_user) if iam.get_user(rt.aws.iam, iam_user) else {}
    if tags.get(CLAIM_TAG) == claim_value(rt.settings.cluster_name, uid):
        iam.untag_user(rt.aws.iam, iam_user, [CLAIM_TAG, CLAIM_OBJECT_TAG])


def _reconcile_aws(
    rt: Runtime, body: Mapping[str, Any], spec: Spec, claims: Sequence[Claim], outcome: Outcome
) -> None:
    namespace, name, uid = _meta(body)
    metadata = body["metadata"]
    status: Mapping[str, Any] = body.get("status") or {}
    now = rt.clock()

    user = iam.get_user(rt.aws.iam, spec.iam_user)
    if user is None:
        rt.index.update(namespace, name, uid, active=False)
        outcome.fail(
            Reason.USER_NOT_FOUND,
            f"IAM user {spec.iam_user!r} does not exist",
            rt.settings.recheck_interval,
        )
        return
    allowed = any(rule.matches(namespace, spec.iam_user) for rule in rt.settings.allow)
    problem = authorization_problem(
        namespace=namespace, iam_user=spec.iam_user, user_tags=user.tags, allowed_by_flag=allowed
    )
    if problem is not None:
        rt.index.update(namespace, name, uid, active=False)
        outcome.fail(Reason.NOT_AUTHORIZED, problem, rt.settings.recheck_interval)
        return
    if not _claim_user(rt, body, spec, user.tags, claims, outcome):
        rt.index.update(namespace, name, uid, active=False)
        return

    installation = rt.installation()
    outcome.facts["lambdaArn"] = installation.lambda_arn
    observed = secrets.ensure_secret(
        rt.aws.secretsmanager,
        name=spec.secret_name,
        iam_user=spec.iam_user,
        tags=secret_tags(rt, body, spec),
        owner_uid=uid,
        owner_tag=TAG_UID,
        kms_key_id=spec.kms_key_id,
    )
    outcome.facts["secretArn"] = observed.arn
    sm = rt.aws.secretsmanager

    focus = False
    in_progress = clear_stuck_rotation(rt, observed, outcome, now)
    # AWSCURRENT still on the version we created: LastRotatedDate alone is not enough, it comes
    # after finishSecret has moved AWSCURRENT (and, with AWSPENDING on the current version too,
    # nothing looks in progress): a restart in between would rotate a second time.
    never_rotated = (
        observed.last_rotated is None
        and not status.get("accessKeyId")
        and observed.current_version in (None, secrets.initial_version_id(uid))
    )
    if not rotation_config_matches(spec, observed, installation.lambda_arn) or (
        never_rotated and not in_progress
    ):
        rotate_now = never_rotated and not in_progress
        secrets.configure_rotation(
            sm,
            secret_id=observed.arn,
            lambda_arn=installation.lambda_arn,
            rules=desired_rotation_rules(spec),
            # botocore fills in a ClientRequestToken that its own retries reuse; a repeat after a
            # restart is prevented by looking first (a rotation in progress, LastRotatedDate).
            rotate_immediately=rotate_now,
        )
        if rotate_now:
            metrics.ROTATIONS_REQUESTED.labels(cause="first-key").inc()
            outcome.event(Reason.ROTATION_REQUESTED, "requested the first rotation: a managed key")
            in_progress = focus = True
        observed = secrets.describe(sm, observed.arn) or observed
    outcome.conditions.append(
        Condition(
            ConditionType.ROTATION_CONFIGURED,
            True,
            Reason.ROTATION_ENABLED,
            f"rotation by {installation.lambda_arn} on {spec.schedule_expression}",
        )
    )

    wanted = (metadata.get("annotations") or {}).get(ROTATE_NOW_ANNOTATION)
    if wanted and wanted != status.get("rotateNowHandled"):
        token = secrets.deterministic_token("rotate-now", uid, wanted)
        if token in observed.versions:
            outcome.facts["rotateNowHandled"] = wanted  # requested before a restart
            focus = True
        elif in_progress:
            outcome.retry_after = RETRY_ROTATION_IN_PROGRESS  # after the running rotation
        else:
            secrets.request_rotation(sm, secret_id=observed.arn, token=token)
            metrics.ROTATIONS_REQUESTED.labels(cause="rotate-now").inc()
            outcome.event(
                Reason.ROTATION_REQUESTED, f"rotation requested by {ROTATE_NOW_ANNOTATION}"
            )
            outcome.facts["rotateNowHandled"] = wanted
            in_progress = focus = True

    entry = rt.index.update(
        namespace,
        name,
        uid,
        secret_arn=observed.arn,
        next_rotation=observed.next_rotation,
        window=_window(spec),
        active=True,
    )
    if focus:
        entry.focus_until = now + FOCUS_AFTER_REQUEST
    _set_schedule_facts(outcome, observed)
    if never_rotated:
        outcome.conditions.append(
            Condition(
                ConditionType.SYNCED, False, Reason.ROTATION_PENDING, "waiting for the first key"
            )
        )
        return
    sync_current_key(rt, body, spec, observed, outcome)


def _window(spec: Spec) -> timedelta:
    return timedelta(hours=int(spec.window[:-1])) if spec.window else timedelta(hours=1)


def _set_schedule_facts(outcome: Outcome, observed: Observed) -> None:
    if observed.last_rotated:
        outcome.facts["lastRotationTime"] = isoformat(observed.last_rotated)
    if observed.next_rotation:
        outcome.facts["nextRotationTime"] = isoformat(observed.next_rotation)


def clear_stuck_rotation(rt: Runtime, observed: Observed, outcome: Outcome, now: datetime) -> bool:
    """True while a rotation is running. One stuck longer than ``stuck_after`` is cleared."""
    in_progress = False
    for version in observed.stuck_pending:
        created = secrets.version_created(
            rt.aws.secretsmanager, secret_id=observed.arn, version_id=version
        )
        age = (now - created).total_seconds() if created else None
        if age is not None and age < rt.settings.stuck_after:
            in_progress = True
            continue
        secrets.clear_pending(rt.aws.secretsmanager, secret_id=observed.arn, version_id=version)
        metrics.STUCK_CLEARED.inc()
        outcome.event(
            Reason.ROTATION_STUCK,
            f"rotation to version {version} did not finish; cleared its AWSPENDING label so "
            f"rotation can go on (the rotation Lambda's logs say why it stopped)",
            warning=True,
        )
        observed.pending_versions.remove(version)
        observed.versions = [v for v in observed.versions if v != version]
    return in_progress


# --- Mirroring --------------------------------------------------------------------------------


def sync_current_key(
    rt: Runtime, body: Mapping[str, Any], spec: Spec, observed: Observed, outcome: Outcome
) -> None:
    """Mirror AWSCURRENT when its version changed or the target Secret drifted; then the
    after-rotation work. The value is read only in those cases."""
    namespace, name, uid = _meta(body)
    status: Mapping[str, Any] = body.get("status") or {}
    now = rt.clock()
    owner = owner_of(body)
    mirrored = status.get("versionId")
    # The loop calls this for rotations it found: status follows the schedule they moved.
    _set_schedule_facts(outcome, observed)
    state = target_secrets.inspect_target(
        rt.kube,
        namespace,
        spec.target_secret_name,
        owner,
        mirrored,
        profile=spec.profile,
        labels=spec.target_labels,
        annotations=spec.target_annotations,
    )
    if state is target_secrets.TargetState.FOREIGN:
        raise target_secrets.TargetConflictError(
            f"Secret {namespace}/{spec.target_secret_name} exists and is not managed by this "
            f"AccessKeyRotation; delete it or choose another spec.target.secretName"
        )
    if observed.current_version == mirrored and state is target_secrets.TargetState.CURRENT:
        _synced(rt, body, outcome, observed.current_version, status.get("accessKeyId", ""))
        _previous_key_work(rt, body, spec, status, outcome, now)
        return

    # AWSCURRENT still on the version keyrotor created holds no key: nothing to read.
    placeholder = observed.current_version == secrets.initial_version_id(uid)
    key = (
        secrets.CurrentKey(version_id=observed.current_version or "", username="", access_key_id="")
        if placeholder
        else secrets.read_current_key(rt.aws.secretsmanager, observed.arn)
    )
    if not key.access_key_id:
        if not observed.pending_versions:
            _request_first_key_again(rt, body, observed, outcome)
        outcome.conditions.append(
            Condition(
                ConditionType.SYNCED, False, Reason.ROTATION_PENDING, "waiting for the first key"
            )
        )
        return
    if key.username != spec.iam_user:
        raise target_secrets.TargetConflictError(
            f"secret {observed.arn} holds a key of IAM user {key.username!r}, not {spec.iam_user!r}"
        )
    target_secrets.mirror_secret(
        rt.kube,
        namespace=namespace,
        name=spec.target_secret_name,
        owner=owner,
        version_id=key.version_id,
        access_key_id=key.access_key_id,
        secret_access_key=key.secret_access_key,
        profile=spec.profile,
        labels=spec.target_labels,
        annotations=spec.target_annotations,
    )
    rotated = mirrored is not None and mirrored != key.version_id
    outdated = state is target_secrets.TargetState.OUTDATED
    cause = (
        "rotation" if rotated else ("update" if outdated else "repair" if mirrored else "initial")
    )
    metrics.SYNCS.labels(cause=cause).inc()
    if rotated:
        outcome.event(
            Reason.SYNCED,
            f"mirrored the new key {key.access_key_id} (version {key.version_id}) "
            f"into Secret {spec.target_secret_name}",
        )
    elif mirrored and outdated:
        outcome.event(
            Reason.SYNCED,
            f"updated Secret {spec.target_secret_name} to spec.target "
            f"(profile, labels, annotations)",
        )
    elif mirrored:
        outcome.event(
            Reason.SECRET_REPAIRED,
            f"Secret {spec.target_secret_name} was {state.value.lower()}; "
            f"put back version {key.version_id}",
            warning=True,
        )
    else:
        outcome.event(
            Reason.SYNCED, f"mirrored key {key.access_key_id} into Secret {spec.target_secret_name}"
        )
    _synced(rt, body, outcome, key.version_id, key.access_key_id, written=True)
    old_key = status.get("accessKeyId")
    if rotated:
        _restart_workloads(rt, namespace, spec, key.version_id, outcome)
        if old_key and old_key != key.access_key_id:
            if spec.previous_key_action != "Keep":
                rt.index.update(
                    namespace, name, uid, previous_key_due=now + spec.previous_key_after
                )
            outcome.facts["previousKey"] = {
                "accessKeyId": old_key,
                "state": "Active",
                **(
                    {"actionAfter": isoformat(now + spec.previous_key_after)}
                    if spec.previous_key_action != "Keep"
                    else {}
                ),
            }
    else:
        _previous_key_work(rt, body, spec, status, outcome, now)
    rt.index.update(namespace, name, uid, mirrored_version=key.version_id)


def _request_first_key_again(
    rt: Runtime, body: Mapping[str, Any], observed: Observed, outcome: Outcome
) -> None:
    """No key yet and no rotation running: the first rotation was cleared as stuck (or never
    started). Ask again, or the object would wait for its first key for ever."""
    namespace, name, uid = _meta(body)
    try:
        secrets.request_rotation(
            rt.aws.secretsmanager, secret_id=observed.arn, token=str(uuid.uuid4())
        )
    except Exception as exc:
        if error_code(exc) == "InvalidRequestException":
            return  # a rotation started meanwhile (the handler's); it brings the key
        raise
    metrics.ROTATIONS_REQUESTED.labels(cause="first-key").inc()
    outcome.event(
        Reason.ROTATION_REQUESTED, "requested the first rotation again: the last one did not finish"
    )
    rt.index.update(namespace, name, uid, focus_until=rt.clock() + FOCUS_AFTER_REQUEST)


def _synced(
    rt: Runtime,
    body: Mapping[str, Any],
    outcome: Outcome,
    version: str | None,
    key_id: str,
    *,
    written: bool = False,
) -> None:
    namespace, name, uid = _meta(body)
    outcome.facts.update({"versionId": version, "accessKeyId": key_id})
    if written:
        outcome.facts["lastSyncTime"] = isoformat(rt.clock())
    outcome.conditions.append(
        Condition(
            ConditionType.SYNCED, True, Reason.SYNCED, f"Secret holds AWSCURRENT version {version}"
        )
    )
    rt.index.update(namespace, name, uid, mirrored_version=version)


def _restart_workloads(
    rt: Runtime, namespace: str, spec: Spec, version: str, outcome: Outcome
) -> None:
    for ref in spec.restart_on_rotation:
        try:
            workloads.annotate_pod_template(
                rt.kube, namespace=namespace, kind=ref.kind, name=ref.name, version_id=version
            )
            outcome.event(
                Reason.WORKLOAD_RESTARTED, f"restarted {ref.kind} {ref.name} for the new key"
            )
        except workloads.WorkloadNotFoundError as exc:
            outcome.event(Reason.RESTART_FAILED, str(exc), warning=True)


def _previous_key_work(
    rt: Runtime,
    body: Mapping[str, Any],
    spec: Spec,
    status: Mapping[str, Any],
    outcome: Outcome,
    now: datetime,
) -> None:
    """Deactivate or delete the previous key once its grace period is over, and only while the
    target holds the current key (the caller checked); never the current key."""
    namespace, name, uid = _meta(body)
    previous = dict(status.get("previousKey") or {})
    key_id = previous.get("accessKeyId")
    due_text = previous.get("actionAfter")
    if not key_id or not due_text or previous.get("state") != "Active":
        rt.index.update(namespace, name, uid, previous_key_due=None)
        return
    if spec.previous_key_action == "Keep" or key_id == status.get("accessKeyId"):
        return
    due = datetime.fromisoformat(due_text.replace("Z", "+00:00"))
    if now < due:
        rt.index.update(namespace, name, uid, previous_key_due=due)
        return
    if spec.previous_key_action == "Deactivate":
        iam.deactivate_access_key(rt.aws.iam, spec.iam_user, key_id)
        previous["state"] = "Inactive"
        outcome.event(Reason.PREVIOUS_KEY_DEACTIVATED, f"deactivated the previous key {key_id}")
    else:
        iam.delete_access_key(rt.aws.iam, spec.iam_user, key_id)
        previous["state"] = "Deleted"
        outcome.event(Reason.PREVIOUS_KEY_DELETED, f"deleted the previous key {key_id}")
    metrics.PREVIOUS_KEY_ACTIONS.labels(action=spec.previous_key_action).inc()
    outcome.facts["previousKey"] = previous
    rt.index.update(namespace, name, uid, previous_key_due=None)


# --- Status and events: the one writer --------------------------------------------------------


def apply_outcome(rt: Runtime, body: Mapping[str, Any], outcome: Outcome) -> Outcome:
    """Write status (only when it changed) and post an Event for each transition."""
    namespace, name, _ = _meta(body)
    status: Mapping[str, Any] = body.get("status") or {}
    generation = body["metadata"].get("generation")
    existing = list(status.get("conditions") or [])
    merged = merge_conditions(existing, outcome.conditions, generation=generation, now=rt.clock())
    ready = outcome.ready or _derive_ready(merged)
    merged = merge_conditions(merged, [ready], generation=generation, now=rt.clock())

    old_ready = find_condition(existing, ConditionType.READY)
    if old_ready is None or (old_ready.get("status"), old_ready.get("reason")) != (
        ready.status_text,
        ready.reason,
    ):
        expected = ready.reason in (Reason.ROTATION_PENDING, Reason.SUSPENDED)
        outcome.event(ready.reason, ready.message, warning=not ready.status and not expected)

    new_status = {**outcome.facts, "conditions": merged, "observedGeneration": generation}
    if any(status.get(k) != v for k, v in new_status.items()):
        objects.patch_status(rt.kube, namespace, name, new_status)
    rt.index.note_reported(
        namespace,
        name,
        body["metadata"]["uid"],
        new_status.get("lastRotationTime") or status.get("lastRotationTime"),
    )
    for type_, reason, message in outcome.events:
        rt.emit(dict(body), event_type=type_, reason=reason, message=message)
    return outcome


def _derive_ready(conditions: Sequence[Mapping[str, Any]]) -> Condition:
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


# --- Deletion ---------------------------------------------------------------------------------


def finalize(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Apply the deletion policy. The mirrored Secret goes with its owner (garbage collection)."""
    namespace, name, uid = _meta(body)
    rt.index.remove(namespace, name)
    try:
        spec = parse(rt, body)
    except SpecError:
        return  # never valid: nothing of ours can exist in AWS
    release_claim(rt, body, spec.iam_user)
    observed = secrets.describe(rt.aws.secretsmanager, spec.secret_name)
    if observed is None or observed.tags.get(TAG_UID) != uid:
        return  # never created, or not ours: leave it alone
    if spec.deletion_policy == "Retain":
        rt.emit(
            dict(body),
            event_type="Normal",
            reason=Reason.SECRET_RETAINED,
            message=f"left {observed.arn} and the IAM keys in place (deletionPolicy Retain)",
        )
        return
    secrets.cancel_rotation(rt.aws.secretsmanager, observed.arn)
    secrets.schedule_deletion(rt.aws.secretsmanager, observed.arn, spec.recovery_window_days)
    rt.emit(
        dict(body),
        event_type="Normal",
        reason=Reason.SECRET_DELETION_SCHEDULED,
        message=(
            f"cancelled rotation and scheduled deletion of {observed.arn} in "
            f"{spec.recovery_window_days} days (deletionPolicy Delete)"
        ),
    )
