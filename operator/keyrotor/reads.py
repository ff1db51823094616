"""What one decision has read, so that nothing is read twice in it. No I/O here.

A decision (``reconcile.converge``) gathers, plans, acts, and gathers again while an action
changed what the next plan depends on. Each read is kept for the rest of that decision until one
of its own actions could have changed what was read: a claim written is read back, a secret
written is described again; a read no action of ours touched (the user after the secret was
created, the secret after the claim was taken) is not repeated. Where our own successful write
says exactly what now exists (a secret we created, a rotation we started), that answer stands in
for the read.

What was read is as fresh as at any single gather: a read reused within one decision is no
older than the first step of that decision.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from keyrotor.observation import Observed, initial_version_id
from keyrotor.outcome import (
    Action,
    AdoptSecret,
    CancelRotation,
    ClearPending,
    ConfigureRotation,
    CreateSecret,
    EnsureInstallation,
    MirrorKey,
    ReleaseClaim,
    RequestRotation,
    RestartWorkload,
    RetirePreviousKey,
    ScheduleDeletion,
    TakeClaim,
)

T = TypeVar("T")

USER = "user"  # GetUser: the user and its tags (authorization, claim)
DESCRIBED = "described"  # DescribeSecret of the object's secret
TARGET = "target"  # the mirrored Kubernetes Secret
USER_KEYS = "user-keys"  # ListAccessKeys
CREATED = "created"  # ("created", version id): ListSecretVersionIds' CreatedDate of a version
# ("value", version id): GetSecretValue of AWSCURRENT, by the version it returned. A version's
# value never changes, so no action makes it stale; it is used while that version is AWSCURRENT.
VALUE = "value"

# What each action can change, so must be read again after it (the rest is kept).
STALE_AFTER: Mapping[type[Action], frozenset[str]] = {
    TakeClaim: frozenset({USER}),  # the claim is read back
    ReleaseClaim: frozenset({USER}),
    EnsureInstallation: frozenset(),
    CreateSecret: frozenset({DESCRIBED}),
    AdoptSecret: frozenset({DESCRIBED}),
    ClearPending: frozenset({DESCRIBED}),
    ConfigureRotation: frozenset({DESCRIBED}),
    RequestRotation: frozenset({DESCRIBED}),
    CancelRotation: frozenset({DESCRIBED}),
    ScheduleDeletion: frozenset({DESCRIBED}),
    MirrorKey: frozenset({TARGET}),
    RestartWorkload: frozenset(),
    RetirePreviousKey: frozenset({USER_KEYS}),
}


def stale_after(action: Action) -> frozenset[str]:
    """The reads an action may have changed. An action not in the table changes everything."""
    return STALE_AFTER.get(type(action), frozenset({USER, DESCRIBED, TARGET, USER_KEYS}))


def created_secret(
    arn: str, *, owner_uid: str, tags: Mapping[str, str], kms_key_id: str | None
) -> Observed:
    """The secret CreateSecret just made, as DescribeSecret would show it: one version (the one
    the operator derived from its owner) labelled AWSCURRENT, our tags, no rotation yet."""
    version = initial_version_id(owner_uid)
    return Observed(
        arn=arn,
        current_version=version,
        versions=[version],
        tags=dict(tags),
        kms_key_id=kms_key_id or None,
    )


def rotation_started(
    secret: Observed, *, version_id: str, lambda_arn: str, rules: Mapping[str, Any]
) -> Observed:
    """The secret after RotateSecret turned rotation on with these rules and started a rotation
    whose new version is ``version_id`` (AWSPENDING until the rotation finishes). The next
    rotation's date is Secrets Manager's to compute: unknown until the next look."""
    return replace(
        secret,
        rotation_enabled=True,
        rotation_lambda_arn=lambda_arn,
        rotation_rules=dict(rules),
        pending_versions=[version_id],
        versions=[*secret.versions, version_id],
        next_rotation=None,
    )


@dataclass
class Reads:
    """The reads of one decision, by what was read (see the module's names)."""

    values: dict[Hashable, Any] = field(default_factory=dict)

    def once(self, what: Hashable, read: Callable[[], T]) -> T:
        """``read()`` the first time; the same answer after, until an action made it stale."""
        if what not in self.values:
            self.values[what] = read()
        value: T = self.values[what]
        return value

    def seed(self, what: Hashable, value: Any) -> None:
        """An answer read just before this decision (the look that called for it)."""
        self.values[what] = value

    def after(
        self,
        action: Action,
        *,
        owner_uid: str,
        now: datetime,
        created_arn: str | None = None,
        started_version: str | None = None,
    ) -> None:
        """Forget what ``action`` (which succeeded) may have changed; keep what our own write
        tells exactly: the secret we created (``created_arn``: CreateSecret made it, it did not
        exist already), the rotation we started at ``now`` (``started_version``)."""
        before = self.values.get(DESCRIBED)
        for what in stale_after(action):
            self.values.pop(what, None)
        if isinstance(action, CreateSecret) and created_arn:
            self.values[DESCRIBED] = created_secret(
                created_arn, owner_uid=owner_uid, tags=action.tags, kms_key_id=action.kms_key_id
            )
        elif isinstance(action, ConfigureRotation) and started_version and before is not None:
            self.values[DESCRIBED] = rotation_started(
                before, version_id=started_version, lambda_arn=action.lambda_arn, rules=action.rules
            )
            self.values[(CREATED, started_version)] = now
