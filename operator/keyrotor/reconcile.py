"""One decision about one object: gather -> plan -> act, then write status, under its lock.

Every path (kopf's create/update/resume, the sync loop, a Secret event) calls :func:`converge`;
deletion calls :func:`finalize`. ``converge`` reads the object fresh, gathers what AWS and
Kubernetes say (reads only), lets ``policies.plan`` decide, lets ``executor`` act, and repeats
while an action changed what the next decision depends on (a claim taken, a secret created).
Status is written once at the end with the resourceVersion it was decided from; on a conflict
everything is read and decided again. Every step is idempotent: the operator can be killed at any
line and converges when it runs again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from keyrotor import errors, metrics, policies, refusals
from keyrotor.aws import iam, secrets
from keyrotor.aws.secrets import CurrentKey
from keyrotor.conditions import Condition
from keyrotor.executor import Done, execute
from keyrotor.k8s import objects
from keyrotor.k8s import secrets as target_secrets
from keyrotor.mirroring import target_is_foreign
from keyrotor.model import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    TAG_CLUSTER,
    TAG_IAM_USER,
    TAG_INSTALLATION,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    ConditionType,
    Reason,
    Spec,
    SpecError,
    parse_spec,
)
from keyrotor.observation import (
    Context,
    KeyView,
    ObjectView,
    Observation,
    Observed,
    TargetView,
    UserView,
    initial_version_id,
    object_view,
)
from keyrotor.outcome import ConfigureRotation, Event, Plan, RequestRotation, warning
from keyrotor.reads import CREATED, DESCRIBED, TARGET, USER, USER_KEYS, VALUE, Reads
from keyrotor.runtime import Runtime
from keyrotor.secret_events import names_secret
from keyrotor.status import commit, kopf_bookkeeping_only, post_events
from keyrotor.tenancy import authorization_problem

log = logging.getLogger(__name__)

MAX_STEPS = 6  # claim, installation, secret, stuck cleared, rotation configured, the rest
MAX_CONFLICTS = 5
# Facts that hold whatever the actions did; the others count only when every action succeeded.
OBSERVED_FACTS = ("effective", "lambdaArn", "secretArn", "lastRotationTime", "nextRotationTime")


def parse(rt: Runtime, body: Mapping[str, Any]) -> Spec:
    metadata = body["metadata"]
    return parse_spec(
        body.get("spec") or {},
        name=metadata["name"],
        namespace=metadata["namespace"],
        default_secret_name=rt.settings.default_secret_name(
            metadata["namespace"], metadata["name"]
        ),
    )


def secret_tags(rt: Runtime, obj: ObjectView, iam_user: str) -> dict[str, str]:
    """This object's tags on its secret; ``iam_user`` as IAM spells it (GetUser)."""
    return {
        TAG_CLUSTER: rt.settings.cluster_name,
        TAG_INSTALLATION: rt.installation_id,
        TAG_NAMESPACE: obj.namespace,
        TAG_NAME: obj.name,
        TAG_UID: obj.uid,
        TAG_IAM_USER: iam_user,
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
    }


# --- Gather: reads only ----------------------------------------------------------------------


@dataclass
class Gathered:
    observation: Observation
    key: CurrentKey | None = None  # the AWSCURRENT value, with its secret: for the executor only


def gather(rt: Runtime, obj: ObjectView, spec: Spec, reads: Reads | None = None) -> Gathered:
    """What the plan needs, read from IAM, Secrets Manager and Kubernetes. A refused object reads
    no more than it takes to refuse it, and no secret value. ``reads``: what this decision read
    already (each read once, until its own action changed it)."""
    settings = rt.settings
    reads = reads if reads is not None else Reads()
    user = reads.once(USER, lambda: iam.get_user(rt.aws.iam, spec.iam_user))
    context = Context(
        installation=rt.claim_identity,
        stuck_after=settings.stuck_after,
        recheck_interval=settings.recheck_interval,
        secret_tags=secret_tags(rt, obj, user.name if user else spec.iam_user),
        namespace_path=f"{settings.secret_prefix}{obj.namespace}/",
        kms_keys=settings.kms_keys,
        finalizer=settings.shard.finalizer,
    )
    allowed = any(rule.matches(obj.namespace, spec.iam_user) for rule in settings.allow)
    base = Observation(obj=obj, context=context, allowed_by_flag=allowed)
    if user is None:
        return Gathered(base)
    view = UserView(name=user.name, tags=user.tags)
    if authorization_problem(
        namespace=obj.namespace,
        iam_user=spec.iam_user,
        user_tags=user.tags,
        allowed_by_flag=allowed,
    ):
        return Gathered(Observation(obj=obj, context=context, user=view, allowed_by_flag=allowed))
    secret = reads.once(
        DESCRIBED, lambda: secrets.describe(rt.aws.secretsmanager, spec.secret_name)
    )
    created = _pending_created(rt, secret, reads)
    now = rt.clock()
    ages = {v: (now - when).total_seconds() if when else None for v, when in created.items()}
    stuck = any(age is None or age >= settings.stuck_after for age in ages.values())
    # A rotation that stopped: the user's keys say whether the two-key limit stopped it.
    user_keys = (
        reads.once(USER_KEYS, lambda: iam.access_keys(rt.aws.iam, user.name)) if stuck else {}
    )
    observation = Observation(
        obj=obj,
        context=context,
        user=view,
        allowed_by_flag=allowed,
        claims=rt.claims_for(spec.iam_user),
        lambda_arn=rt.installation.known_lambda_arn(),
        secret=secret,
        pending_ages=ages,
        pending_created={v: when for v, when in created.items() if when is not None},
        target=reads.once(TARGET, partial(_inspect_target, rt, obj, spec)),
        dead_key=_dead_key(rt, obj),
        user_keys=user_keys,
    )
    return _with_key(rt, observation, spec, reads)


def _inspect_target(rt: Runtime, obj: ObjectView, spec: Spec) -> TargetView:
    return target_secrets.inspect_target(
        rt.kube,
        obj.namespace,
        spec.target_secret_name,
        obj.uid,
        profile=spec.profile,
        labels=spec.target_labels,
        annotations=spec.target_annotations,
    )


def _pending_created(
    rt: Runtime, secret: Observed | None, reads: Reads
) -> dict[str, datetime | None]:
    """When each AWSPENDING version (not AWSCURRENT) was created; None: unknown."""
    if secret is None:
        return {}
    arn = secret.arn

    def created(version: str) -> datetime | None:
        return secrets.version_created(rt.aws.secretsmanager, secret_id=arn, version_id=version)

    return {v: reads.once((CREATED, v), partial(created, v)) for v in secret.stuck_pending}


def _dead_key(rt: Runtime, obj: ObjectView) -> str | None:
    """The dead-key check's verdict on the key status says is mirrored, if it has one."""
    entry = rt.index.get(obj.namespace, obj.name)
    verdict = entry.key_verdict if entry is not None and entry.uid == obj.uid else None
    if verdict is None or verdict[0] != obj.status.get("accessKeyId"):
        return None
    return verdict[1]


def _with_key(rt: Runtime, observation: Observation, spec: Spec, reads: Reads) -> Gathered:
    """Read the AWSCURRENT value only when the plan may mirror it: the secret is this object's
    (no refusal so far), it holds a key, and status or the target Secret do not have it yet.
    Read once per decision: a version's value never changes, so the value read for the version
    that is still AWSCURRENT at the next step's gather (a claim taken, the secret tagged,
    rotation turned on) is the same."""
    secret, obj, target = observation.secret, observation.obj, observation.target
    if secret is None or secret.current_version in (None, initial_version_id(obj.uid)):
        return Gathered(observation)
    if any(rule(spec, observation) for rule in refusals.REFUSALS) or target_is_foreign(observation):
        return Gathered(observation)
    held = (
        target is not None
        and target.version_id == secret.current_version
        and target.intact
        and target.matches_spec
    )
    if obj.status.get("versionId") == secret.current_version and held:
        return Gathered(observation)
    key = reads.values.get((VALUE, secret.current_version))
    if key is None:
        key = secrets.read_current_key(rt.aws.secretsmanager, secret.arn)
        reads.seed((VALUE, key.version_id), key)
    view = KeyView(
        version_id=key.version_id, username=key.username, access_key_id=key.access_key_id
    )
    return Gathered(_replace_key(observation, view), key)


def _replace_key(observation: Observation, key: KeyView) -> Observation:
    return replace(observation, key=key)


# --- Decide and act --------------------------------------------------------------------------


@dataclass
class Decision:
    """The last plan, what its actions did, and the failure that stopped them, if any."""

    plan: Plan
    done: Done = field(default_factory=Done)
    failure: errors.Failure | None = None


def decide_and_act(
    rt: Runtime, body: Mapping[str, Any], observed: Observed | None = None
) -> Decision:
    """``observed``: the object's secret as described just before (the look that asked for this
    decision), used when it is the secret the spec names."""
    obj = object_view(body)
    try:
        spec = parse(rt, body)
    except SpecError as exc:
        return Decision(
            Plan(ready=Condition(ConditionType.READY, False, Reason.INVALID_SPEC, str(exc)))
        )
    done = Done()
    plan = Plan(facts={"effective": spec.effective()})
    reads = Reads()
    if observed is not None and names_secret(spec.secret_name, observed.arn):
        reads.seed(DESCRIBED, observed)
    for _step in range(MAX_STEPS):
        # The next decision sees what the actions so far recorded.
        view = replace(obj, status={**obj.status, **done.facts})
        try:
            gathered = gather(rt, view, spec, reads)
            plan = policies.plan(spec, gathered.observation, rt.clock())
            execute(rt, view, plan.actions, gathered.key, done)
        except Exception as exc:
            return Decision(plan, done, _failed(rt, obj, exc))
        if not plan.again:
            break
        _forget_what_changed(rt, reads, plan, done, obj.uid)
    return Decision(plan, done)


def _forget_what_changed(rt: Runtime, reads: Reads, plan: Plan, done: Done, uid: str) -> None:
    now = rt.clock()
    for action in plan.actions:
        reads.after(
            action,
            owner_uid=uid,
            now=now,
            created_arn=done.created_secret,
            started_version=done.rotation_started,
        )
    done.created_secret = done.rotation_started = None


def _failed(rt: Runtime, obj: ObjectView, exc: Exception) -> errors.Failure:
    failure = errors.failure_for(exc)
    if failure.installation_suspect:
        rt.installation.forget()
    log.log(failure.log_level, "%s/%s: %s", obj.namespace, obj.name, failure.message)
    return failure


def converge(
    rt: Runtime,
    namespace: str,
    name: str,
    *,
    trigger: str = "sync",
    observed: Observed | None = None,
) -> None:
    """Decide about one object and act, as its one writer. Never raises for what AWS or
    Kubernetes answer: that is a condition, and a time to look again. ``trigger``: what asked
    (kopf's handler reason, or the sync loop), for the reconcile counter; ``observed``: its
    secret as the look that asked for the decision just described it (not described again)."""
    metrics.RECONCILES.labels(trigger=trigger).inc()
    log.debug("%s/%s: deciding (%s)", namespace, name, trigger)
    with rt.index.lock(namespace, name):
        body = objects.get_object(rt.kube, namespace, name)
        decision: Decision | None = None
        owed: list[Event] = []  # the Events of what a decision decided again had done
        for _attempt in range(MAX_CONFLICTS):
            if body is not None and body["metadata"].get("deletionTimestamp"):
                return  # finalize's turn
            if body is None or not rt.settings.shard.serves_body(body):
                rt.index.remove(namespace, name)  # gone, or another shard's now: it takes over
                return
            decision = decision or decide_and_act(rt, body, observed)
            observed = None  # after a conflict, everything is read again
            try:
                _record(rt, body, decision, owed)
                return
            except errors.ConflictError:  # changed since read: decide again, unless all that
                fresh = objects.get_object(rt.kube, namespace, name)  # changed is kopf's own
                if not (fresh and kopf_bookkeeping_only(body, fresh)):
                    # Its actions happened all the same: their Events are still owed.
                    owed = _without_repeats([*owed, *decision.done.events])
                    decision = None
                body = fresh
        log.info("%s/%s kept changing; deciding again later", namespace, name)
        if owed and body is not None:
            post_events(rt, body, owed)


def forget(rt: Runtime, namespace: str, name: str, uid: str) -> None:
    """The object left this process's shard: drop it from the index (under its lock, so a
    decision under way finishes first and nothing re-adds it afterwards)."""
    entry = rt.index.get(namespace, name)
    if entry is None or entry.uid != uid:
        return
    with rt.index.lock(namespace, name):
        rt.index.remove(namespace, name)
    log.info("%s/%s left %s: no longer served here", namespace, name, rt.settings.shard.describe())


def _without_repeats(events: list[Event]) -> list[Event]:
    return list(dict.fromkeys(events))


def _record(rt: Runtime, body: Mapping[str, Any], decision: Decision, owed: list[Event]) -> None:
    """Status and Events from ``decision``; ``owed``: the Events of actions that decisions
    decided again (after a conflict) had done, posted with this one's."""
    plan, done, failure = decision.plan, decision.done, decision.failure
    if plan.log_detail:
        metadata = body["metadata"]
        log.info("%s/%s refused: %s", metadata["namespace"], metadata["name"], plan.log_detail)
    ready = plan.ready
    facts = {**plan.facts, **done.facts}
    events = _without_repeats([*owed, *done.events, *plan.events])
    if failure is not None:
        ready = Condition(ConditionType.READY, False, failure.reason, failure.message)
        facts = {k: v for k, v in plan.facts.items() if k in OBSERVED_FACTS} | done.facts
        events = _without_repeats([*owed, *done.events])
        if isinstance(done.failed, RequestRotation | ConfigureRotation):
            events.append(
                warning(
                    Reason.ROTATION_FAILED,
                    f"the rotation request failed and is tried again: {failure.message}",
                )
            )
    written = commit(rt, body, conditions=plan.conditions, ready=ready, facts=facts, events=events)
    obj = object_view(body)
    now = rt.clock()
    if failure is not None:
        # What a person must fix is looked at again from the recheck interval on; the rest
        # from retry_base on; both double up to retry_cap.
        recheck = failure.retry is errors.Retry.RECHECK
        base = rt.settings.recheck_interval if recheck else rt.settings.retry_base
        rt.index.failed(
            obj.namespace, obj.name, obj.uid, now=now, base=base, cap=rt.settings.retry_cap
        )
        return
    rt.index.apply(
        obj.namespace,
        obj.name,
        obj.uid,
        plan.index,
        now=now,
        recheck_after=plan.recheck_after,
        reported_last_rotation=written.get("lastRotationTime"),
    )
    if done.key_created is not None:  # a key just mirrored: alive, and its CreateDate known
        rt.index.note_key(obj.namespace, obj.name, obj.uid, created=done.key_created, verdict=None)
