"""What the AWS side looks like for one object, as the adapters report it. No I/O here."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyrotor.model import END_GRACE_ANNOTATION, FINALIZER, ROTATE_NOW_ANNOTATION, Spec


def deterministic_token(*parts: str) -> str:
    """A ClientRequestToken derived from stable inputs, so a retried call is idempotent."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return str(uuid.UUID(digest[:32]))


def initial_version_id(owner_uid: str) -> str:
    """The version id of the value a new secret is created with (the user name, no key yet)."""
    return deterministic_token("create", owner_uid)


@dataclass
class Observed:
    """What the AWS side looks like for one object (from DescribeSecret)."""

    arn: str
    current_version: str | None
    pending_versions: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # every version that carries a stage
    rotation_enabled: bool = False
    rotation_lambda_arn: str | None = None
    rotation_rules: Mapping[str, Any] = field(default_factory=dict)
    last_rotated: datetime | None = None
    next_rotation: datetime | None = None
    deleted: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    kms_key_id: str | None = None  # the customer managed key, None for aws/secretsmanager

    @property
    def stuck_pending(self) -> list[str]:
        """AWSPENDING on a version that is not AWSCURRENT: a rotation started and not finished."""
        return [v for v in self.pending_versions if v != self.current_version]


def desired_rotation_rules(spec: Spec) -> dict[str, Any]:
    rules: dict[str, Any] = {"ScheduleExpression": spec.schedule_expression}
    if spec.window:
        rules["Duration"] = spec.window
    return rules


def rotation_config_matches(spec: Spec, observed: Observed, lambda_arn: str) -> bool:
    rules = dict(observed.rotation_rules)
    wanted = desired_rotation_rules(spec)
    return (
        observed.rotation_enabled
        and observed.rotation_lambda_arn == lambda_arn
        and rules.get("ScheduleExpression") == wanted["ScheduleExpression"]
        and rules.get("Duration") == wanted.get("Duration")
    )


@dataclass(frozen=True)
class ObjectView:
    """The AccessKeyRotation as read at the start of a decision."""

    namespace: str
    name: str
    uid: str
    created: str  # creationTimestamp
    generation: int | None
    resource_version: str
    rotate_now: str | None  # the keyrotor.io/rotate-now annotation
    end_grace: str | None = None  # the keyrotor.io/end-grace-period annotation
    status: Mapping[str, Any] = field(default_factory=dict)
    finalizers: tuple[str, ...] = ()  # whose: one per shard that holds the object


@dataclass(frozen=True)
class UserView:
    name: str  # IAM's own spelling of the user name (GetUser)
    tags: Mapping[str, str]


@dataclass(frozen=True)
class TargetView:
    """The mirrored Secret as read (no data, only what its metadata and hash say)."""

    exists: bool
    owned: bool = False  # its ownerReference is this object
    version_id: str | None = None  # keyrotor.io/version-id
    intact: bool = False  # its data matches its keyrotor.io/data-hash
    matches_spec: bool = False  # profile, labels, annotations as spec.target says
    access_key_id: str | None = None  # keyrotor.io/access-key-id
    key_created: datetime | None = None  # keyrotor.io/access-key-created: that key's CreateDate


@dataclass(frozen=True)
class KeyView:
    """The AWSCURRENT value's public part; the secret access key never enters a plan."""

    version_id: str
    username: str
    access_key_id: str


@dataclass(frozen=True)
class Context:
    """What the planner needs from the settings."""

    installation: str  # this process's identity in claims (Runtime.claim_identity)
    stuck_after: float  # seconds
    recheck_interval: float  # seconds
    secret_tags: Mapping[str, str]  # the tags this object's own secret carries
    namespace_path: str = ""  # custom secret names stay under it (keyrotor/<cluster>/<ns>/)
    kms_keys: tuple[str, ...] = ()  # the KMS keys objects may use (--kms-key)
    finalizer: str = FINALIZER  # this process's (one per shard: keyrotor.shards)


@dataclass(frozen=True)
class Observation:
    """Everything one decision looks at, gathered by the adapters before anything is written."""

    obj: ObjectView
    context: Context
    user: UserView | None = None
    allowed_by_flag: bool = False
    claims: tuple[Any, ...] = ()  # tenancy.Claim of every object that wants this user
    lambda_arn: str | None = None  # the installation's function, once ensured
    secret: Observed | None = None
    # Seconds since each AWSPENDING version (not AWSCURRENT) was created, as the gather measured
    # them (None: not known): whether its rotation is still running or stuck.
    pending_ages: Mapping[str, float | None] = field(default_factory=dict)
    # When each of those versions was created (ListSecretVersionIds), where known: when its
    # rotation began, which tells the rotation's own half-made key from another's.
    pending_created: Mapping[str, datetime] = field(default_factory=dict)
    target: TargetView | None = None
    key: KeyView | None = None
    # What IAM's credential report says of the mirrored key (status.accessKeyId) when it is not
    # usable: "gone" (deleted) or "inactive" (deactivated outside keyrotor); None: usable.
    dead_key: str | None = None
    # The user's access keys (status, CreateDate), read only when a stuck rotation is cleared.
    user_keys: Mapping[str, tuple[str, datetime]] = field(default_factory=dict)


def object_view(body: Mapping[str, Any]) -> ObjectView:
    """The object's body as a decision reads it."""
    metadata = body["metadata"]
    return ObjectView(
        namespace=metadata["namespace"],
        name=metadata["name"],
        uid=metadata["uid"],
        created=str(metadata.get("creationTimestamp", "")),
        generation=metadata.get("generation"),
        resource_version=str(metadata.get("resourceVersion", "")),
        rotate_now=(metadata.get("annotations") or {}).get(ROTATE_NOW_ANNOTATION),
        end_grace=(metadata.get("annotations") or {}).get(END_GRACE_ANNOTATION),
        status=dict(body.get("status") or {}),
        finalizers=tuple(metadata.get("finalizers") or ()),
    )
