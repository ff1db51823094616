"""Carry out a plan's actions, in order, through the adapters; stop at the first failure.

Each action is idempotent (a repeat after a restart or a conflict changes nothing more), and its
facts and Event count only once it succeeded. The secret access key arrives here from the
gather step and goes only to the target Secret.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyrotor import errors, metrics
from keyrotor.aws import credential_report, iam, secrets
from keyrotor.aws.secrets import CurrentKey
from keyrotor.k8s import secrets as target_secrets
from keyrotor.k8s import workloads
from keyrotor.model import CLAIM_OBJECT_TAG, CLAIM_TAG, GROUP, KIND, VERSION, Reason
from keyrotor.observation import ObjectView
from keyrotor.outcome import (
    Action,
    AdoptSecret,
    CancelRotation,
    ClearPending,
    ConfigureRotation,
    CreateSecret,
    EnsureInstallation,
    Event,
    MirrorKey,
    ReleaseClaim,
    RequestRotation,
    RestartWorkload,
    RetirePreviousKey,
    ScheduleDeletion,
    TakeClaim,
    warning,
)
from keyrotor.runtime import Runtime


@dataclass
class Done:
    """What the actions that succeeded add to status, and the Events they earned."""

    facts: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    failed: Action | None = None  # the action that stopped the rest
    key_created: tuple[str, datetime] | None = None  # the mirrored key and its CreateDate
    created_secret: str | None = None  # the ARN of the secret CreateSecret made (not found there)
    rotation_started: str | None = None  # the version id of the rotation RotateSecret started


@dataclass(frozen=True)
class Context:
    rt: Runtime
    obj: ObjectView
    key: CurrentKey | None  # the AWSCURRENT value, when the plan mirrors it
    done: Done


def execute(
    rt: Runtime, obj: ObjectView, actions: Sequence[Action], key: CurrentKey | None, done: Done
) -> None:
    """Run the actions in order; the first failure propagates (the rest waits for next time)."""
    context = Context(rt, obj, key, done)
    for action in actions:
        done.failed = action
        earned = _RUNNERS[type(action)](context, action)
        done.failed = None
        done.facts.update(action.facts)
        if earned is not None:
            done.events.append(earned)
        elif action.event is not None:
            done.events.append(action.event)


def _take_claim(c: Context, a: Any) -> Event | None:
    iam.tag_user(c.rt.aws.iam, a.iam_user, {CLAIM_TAG: a.value, CLAIM_OBJECT_TAG: a.object_label})
    return None


def _release_claim(c: Context, a: Any) -> Event | None:
    tags = iam.user_tags_if_exists(c.rt.aws.iam, a.iam_user)
    if tags.get(CLAIM_TAG) == a.value:
        iam.untag_user(c.rt.aws.iam, a.iam_user, [CLAIM_TAG, CLAIM_OBJECT_TAG])
    return None


def _ensure_installation(c: Context, a: Any) -> Event | None:
    c.rt.installation.ensure()
    return None


def _create_secret(c: Context, a: Any) -> Event | None:
    c.done.created_secret = secrets.create_managed_secret(
        c.rt.aws.secretsmanager,
        name=a.name,
        iam_user=a.iam_user,
        tags=a.tags,
        owner_uid=c.obj.uid,
        kms_key_id=a.kms_key_id,
    )
    return None


def _adopt_secret(c: Context, a: Any) -> Event | None:
    secrets.adopt_secret(
        c.rt.aws.secretsmanager,
        secret_id=a.arn,
        add_tags=a.add_tags,
        restore=a.restore,
        kms_key_id=a.kms_key_id,
    )
    return None


def _clear_pending(c: Context, a: Any) -> Event | None:
    secrets.clear_pending(c.rt.aws.secretsmanager, secret_id=a.arn, version_id=a.version_id)
    metrics.STUCK_CLEARED.inc()
    return None


def _configure_rotation(c: Context, a: Any) -> Event | None:
    c.done.rotation_started = secrets.configure_rotation(
        c.rt.aws.secretsmanager,
        secret_id=a.arn,
        lambda_arn=a.lambda_arn,
        rules=a.rules,
        rotate_immediately=a.rotate_immediately,
    )
    if a.rotate_immediately:
        metrics.ROTATIONS_REQUESTED.labels(cause="first-key").inc()
    return None


def _request_rotation(c: Context, a: Any) -> Event | None:
    try:
        secrets.request_rotation(
            c.rt.aws.secretsmanager, secret_id=a.arn, token=a.token or str(uuid.uuid4())
        )
    except errors.InvalidError:
        if a.if_idle:
            return None  # a rotation started meanwhile: it brings the key
        raise
    metrics.ROTATIONS_REQUESTED.labels(cause=a.cause).inc()
    return None


def _cancel_rotation(c: Context, a: Any) -> Event | None:
    secrets.cancel_rotation(c.rt.aws.secretsmanager, a.arn)
    return None


def _schedule_deletion(c: Context, a: Any) -> Event | None:
    secrets.schedule_deletion(c.rt.aws.secretsmanager, a.arn, a.recovery_window_days)
    return None


def _mirror_key(c: Context, a: Any) -> Event | None:
    key = c.key
    if key is None or key.version_id != a.version_id:
        raise errors.ConflictError(f"AWSCURRENT moved while version {a.version_id} was mirrored")
    # The key's CreateDate, for the dead-key check: stored beside the key by the rotation
    # Lambda; otherwise (the classic function, an older Lambda) one ListAccessKeys.
    created = (
        credential_report.to_second(key.key_created)
        if key.key_created is not None
        else credential_report.key_created(c.rt.aws.iam, a.iam_user, key.access_key_id)
    )
    c.done.key_created = (key.access_key_id, created) if created else None
    target_secrets.mirror_secret(
        c.rt.kube,
        namespace=c.obj.namespace,
        name=a.secret_name,
        owner=target_secrets.Owner(
            api_version=f"{GROUP}/{VERSION}", kind=KIND, name=c.obj.name, uid=c.obj.uid
        ),
        version_id=key.version_id,
        access_key_id=key.access_key_id,
        secret_access_key=key.secret_access_key,
        profile=a.profile,
        labels=a.labels,
        annotations=a.annotations,
        key_created=created,
    )
    metrics.SYNCS.labels(cause=a.cause).inc()
    return None


def _restart_workload(c: Context, a: Any) -> Event | None:
    try:
        workloads.annotate_pod_template(
            c.rt.kube,
            namespace=c.obj.namespace,
            kind=a.workload.kind,
            name=a.workload.name,
            version_id=a.version_id,
        )
    except errors.NotFoundError:
        # A missing workload is reported; it does not hold up the rest.
        return warning(
            Reason.RESTART_FAILED,
            f"{a.workload.kind} {c.obj.namespace}/{a.workload.name} not found",
        )
    except errors.AccessDeniedError:
        # Cluster-wide installs restart workloads only in namespaces that opted in.
        return warning(
            Reason.RESTART_FAILED,
            f"keyrotor may not restart {a.workload.kind} {c.obj.namespace}/{a.workload.name}: "
            f"bind the ClusterRole keyrotor-restart-workloads in {c.obj.namespace} (kubectl -n "
            f"{c.obj.namespace} create rolebinding keyrotor-restart-workloads --clusterrole "
            f"keyrotor-restart-workloads --serviceaccount <operator namespace>:keyrotor)",
        )
    return None


def _retire_previous_key(c: Context, a: Any) -> Event | None:
    if a.delete:
        iam.delete_access_key(c.rt.aws.iam, a.iam_user, a.access_key_id)
    else:
        iam.deactivate_access_key(c.rt.aws.iam, a.iam_user, a.access_key_id)
    metrics.PREVIOUS_KEY_ACTIONS.labels(action="Delete" if a.delete else "Deactivate").inc()
    return None


_RUNNERS: dict[type[Action], Callable[[Context, Any], Event | None]] = {
    TakeClaim: _take_claim,
    ReleaseClaim: _release_claim,
    EnsureInstallation: _ensure_installation,
    CreateSecret: _create_secret,
    AdoptSecret: _adopt_secret,
    ClearPending: _clear_pending,
    ConfigureRotation: _configure_rotation,
    RequestRotation: _request_rotation,
    CancelRotation: _cancel_rotation,
    ScheduleDeletion: _schedule_deletion,
    MirrorKey: _mirror_key,
    RestartWorkload: _restart_workload,
    RetirePreviousKey: _retire_previous_key,
}
