"""The typed spec, reasons and constants of AccessKeyRotation. No I/O here.

The spec is parsed once into frozen dataclasses; defaults are applied here, in code, never by the
API server (server-side defaults make GitOps tools show objects as permanently out of sync), and
the effective values are reported in ``status.effective``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

GROUP = "keyrotor.io"
VERSION = "v1alpha1"
PLURAL = "accesskeyrotations"
KIND = "AccessKeyRotation"

# Labels, annotations and tags under the project's own prefix.
FINALIZER = "keyrotor.io/finalizer"
# kopf's own annotations on the objects (its last-handled configuration, its progress): kopf
# ignores every annotation under this prefix when it compares objects, so it is not keyrotor.io.
KOPF_PREFIX = f"kopf.{GROUP}"
ROTATE_NOW_ANNOTATION = "keyrotor.io/rotate-now"
# Set to the rotate-now value: that rotation does not wait for the previous key's grace period.
END_GRACE_ANNOTATION = "keyrotor.io/end-grace-period"
VERSION_ID_ANNOTATION = "keyrotor.io/version-id"
ACCESS_KEY_ID_ANNOTATION = "keyrotor.io/access-key-id"
# The mirrored key's CreateDate (how IAM's credential report knows a key): kept on the Secret so
# that the dead-key check needs no call per object after a restart.
ACCESS_KEY_CREATED_ANNOTATION = "keyrotor.io/access-key-created"
DATA_HASH_ANNOTATION = "keyrotor.io/data-hash"
RESTARTED_FOR_ANNOTATION = "keyrotor.io/restarted-for-version"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "keyrotor"
OWNER_NAME_LABEL = "keyrotor.io/owner"
NAMESPACES_TAG = "keyrotor.io/namespaces"
TAG_CLUSTER = "keyrotor.io/cluster"
TAG_NAMESPACE = "keyrotor.io/namespace"
TAG_NAME = "keyrotor.io/name"
TAG_UID = "keyrotor.io/uid"
TAG_IAM_USER = "keyrotor.io/iam-user"
TAG_INSTALLATION = "keyrotor.io/installation"
# Set by an AWS administrator on an existing secret to hand it to one object ("<ns>/<name>").
ADOPT_TAG = "keyrotor.io/adopt"
# On the IAM user: which object rotates it ("<cluster>/<uid>"), and its name for people.
CLAIM_TAG = "keyrotor.io/claimed-by"
CLAIM_OBJECT_TAG = "keyrotor.io/claimed-by-object"

DEFAULT_INTERVAL = "90d"
DEFAULT_PROFILE = "default"
DEFAULT_RECOVERY_WINDOW_DAYS = 7
DEFAULT_PREVIOUS_KEY_ACTION = "Deactivate"
DEFAULT_PREVIOUS_KEY_AFTER = "24h"

IAM_USER_RE = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
# Secrets Manager's schedule expressions (secretsmanager/latest/userguide/rotate-secrets_schedule
# .html): rate(N hour|hours|day|days), at least every four hours; cron(Minutes Hours Day-of-month
# Month Day-of-week Year) with minutes 0, year *, and ? in exactly one of the two day fields. The
# CRD holds the same rules in CEL; tests/integration/test_crd.py runs both on the same rows.
RATE_RE = re.compile(r"^rate\(([0-9]+) (hour|hours|day|days)\)$", re.ASCII)
CRON_RE = re.compile(
    r"^cron\(0 [0-9,*/-]+ ([0-9,*?/LW-]+) [0-9A-Za-z,*/-]+ ([0-9A-Za-z#,*?/L-]+) \*\)$", re.ASCII
)
# Label and annotation keys: an optional DNS-subdomain prefix (at most 253 characters) and '/',
# then a name of at most 63 characters; label values at most 63 characters (empty allowed).
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED_KEY_RE = re.compile(rf"^({_DNS_SUBDOMAIN}/)?{_QUALIFIED_NAME}$", re.ASCII)
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$", re.ASCII)
MAX_PREFIX_LENGTH = 253
MAX_TARGET_ENTRIES = 64  # labels, and annotations: a bound the CRD needs for its CEL cost
_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL = timedelta(hours=4)
MAX_INTERVAL = timedelta(days=1000)
MAX_DURATION_SECONDS = int(MAX_INTERVAL.total_seconds())  # no duration in the spec is longer
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
PREVIOUS_KEY_ACTIONS = ("Keep", "Deactivate", "Delete")
DELETION_POLICIES = ("Retain", "Delete")


class Reason:
    """Condition and Event reasons: one CamelCase word each, in one place."""

    READY = "Ready"
    INVALID_SPEC = "InvalidSpec"
    NOT_AUTHORIZED = "NotAuthorized"
    KMS_KEY_NOT_ALLOWED = "KmsKeyNotAllowed"
    CONFLICT = "Conflict"
    USER_NOT_FOUND = "UserNotFound"
    ACCESS_DENIED = "AccessDenied"
    AWS_ERROR = "AwsError"
    SUSPENDED = "Suspended"
    ROTATION_ENABLED = "RotationEnabled"
    ROTATION_REQUESTED = "RotationRequested"
    ROTATION_PENDING = "RotationPending"
    GRACE_PERIOD = "GracePeriod"
    DEAD_KEY = "DeadKey"  # the mirrored key was deleted or deactivated outside keyrotor
    ROTATION_STUCK = "RotationStuck"
    KEY_IN_USE = "KeyInUse"  # the two-key limit: another Active key the Lambda will not delete
    ROTATION_FAILED = "RotationFailed"  # Secrets Manager refused a rotation keyrotor asked for
    SYNCED = "Synced"
    SYNC_FAILED = "SyncFailed"
    SECRET_REPAIRED = "SecretRepaired"
    WORKLOAD_RESTARTED = "WorkloadRestarted"
    RESTART_FAILED = "RestartFailed"
    PREVIOUS_KEY_DEACTIVATED = "PreviousKeyDeactivated"
    PREVIOUS_KEY_DELETED = "PreviousKeyDeleted"
    SECRET_RETAINED = "SecretRetained"
    SECRET_DELETION_SCHEDULED = "SecretDeletionScheduled"
    SHARD_CHANGED = "ShardChanged"  # the object moved to another shard, which took it over


class ConditionType:
    READY = "Ready"
    ROTATION_CONFIGURED = "RotationConfigured"
    SYNCED = "Synced"


class SpecError(ValueError):
    """The spec is wrong in a way the schema could not catch; the message says where and why."""


def parse_duration(text: str, units: str = "hd") -> timedelta:
    match = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if not match or match.group(2) not in units:
        allowed = ", ".join(f"N{u}" for u in units)
        raise ValueError(f"{text!r} is not a duration ({allowed})")
    # Anything longer than 1000d is out of every range the spec allows: cap it (callers refuse
    # it) rather than overflow timedelta.
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return timedelta(seconds=min(seconds, MAX_DURATION_SECONDS + 1))


def schedule_expression(interval: str) -> str:
    """``30d`` -> ``rate(30 days)``, ``4h`` -> ``rate(4 hours)``, as Secrets Manager expects."""
    match = _DURATION_RE.match(interval)
    if not match or match.group(2) not in "hd":
        raise ValueError(f"{interval!r} is not an interval")
    count = int(match.group(1))
    unit = {"h": "hour", "d": "day"}[match.group(2)]
    return f"rate({count} {unit}{'' if count == 1 else 's'})"


@dataclass(frozen=True)
class WorkloadRef:
    kind: str
    name: str


@dataclass(frozen=True)
class Spec:
    """The effective spec of one AccessKeyRotation, defaults applied."""

    iam_user: str
    schedule_expression: str
    interval: str | None
    window: str | None
    secret_name: str
    kms_key_id: str | None
    deletion_policy: str
    recovery_window_days: int
    target_secret_name: str
    profile: str
    target_labels: Mapping[str, str]
    target_annotations: Mapping[str, str]
    restart_on_rotation: tuple[WorkloadRef, ...]
    previous_key_action: str
    previous_key_after: timedelta
    suspend: bool

    def effective(self) -> dict[str, Any]:
        """The values in force, for ``status.effective`` (names as in the spec)."""
        return {
            "rotation": {
                "scheduleExpression": self.schedule_expression,
                **({"window": self.window} if self.window else {}),
            },
            "secretsManager": {
                "secretName": self.secret_name,
                "deletionPolicy": self.deletion_policy,
                "recoveryWindowDays": self.recovery_window_days,
            },
            "target": {"secretName": self.target_secret_name, "profile": self.profile},
            "previousKey": {
                "action": self.previous_key_action,
                "after": _format_timedelta(self.previous_key_after),
            },
        }


def _format_timedelta(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected an object")
    return dict(value)


def _str_map(value: Any, path: str) -> dict[str, str]:
    result = _mapping(value, path)
    for key, item in result.items():
        if not isinstance(item, str):
            raise SpecError(f"{path}.{key}: expected a string")
    return result


def parse_schedule(expression: str) -> timedelta | None:
    """Check a schedule expression by Secrets Manager's rules; return a rate's interval (None for
    a cron expression, whose frequency is left to Secrets Manager). Raises SpecError naming
    spec.rotation.schedule."""
    field_ = f"spec.rotation.schedule {expression!r}"
    rate = RATE_RE.match(expression)
    if rate is not None:
        hours = int(rate.group(1)) * (1 if rate.group(2).startswith("hour") else 24)
        if not MIN_INTERVAL <= timedelta(hours=min(hours, 10**6)) <= MAX_INTERVAL:
            raise SpecError(f"{field_}: a rate must be between 4 hours and 1000 days")
        return timedelta(hours=hours)
    if expression.startswith("rate("):
        raise SpecError(
            f"{field_}: expected rate(N hours) or rate(N days), for example rate(30 days)"
        )
    cron = CRON_RE.match(expression)
    if cron is None:
        if expression.startswith("cron("):
            raise SpecError(
                f"{field_}: expected AWS's six fields, cron(0 Hours Day-of-month Month "
                "Day-of-week *), minutes 0 and year *, for example cron(0 4 1 * ? *)"
            )
        raise SpecError(f"{field_}: expected rate(N hours|days) or cron(...)")
    if (cron.group(1) == "?") == (cron.group(2) == "?"):
        raise SpecError(f"{field_}: use ? in exactly one of Day-of-month and Day-of-week")
    return None


def _metadata_map(value: Any, path: str, *, labels: bool) -> dict[str, str]:
    """Label or annotation keys (and label values) by Kubernetes' rules, as the CRD checks them."""
    result = _str_map(value, path)
    if len(result) > MAX_TARGET_ENTRIES:
        raise SpecError(f"{path}: at most {MAX_TARGET_ENTRIES} entries")
    for key, item in result.items():
        prefix, slash, _ = key.rpartition("/")
        if not QUALIFIED_KEY_RE.match(key) or (slash and len(prefix) > MAX_PREFIX_LENGTH):
            raise SpecError(
                f"{path}: key {key!r} is not a valid {'label' if labels else 'annotation'} key: "
                "an optional DNS subdomain prefix (at most 253 characters) and '/', then a name "
                "of 1 to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter "
                "or digit"
            )
        if labels and not LABEL_VALUE_RE.match(item):
            raise SpecError(
                f"{path}.{key}: {item!r} is not a valid label value: at most 63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit (or empty)"
            )
    return result


def _parse_rotation(value: Any) -> tuple[str, str | None, str | None, timedelta | None]:
    """spec.rotation: (schedule expression, interval, window, the interval's length or None for a
    cron schedule)."""
    rotation = _mapping(value, "spec.rotation")
    interval = rotation.get("interval") or None
    schedule = rotation.get("schedule") or None
    if interval and schedule:
        raise SpecError("spec.rotation: set either interval or schedule, not both")
    length: timedelta | None = None
    if schedule is not None:
        if not isinstance(schedule, str):
            raise SpecError("spec.rotation.schedule: expected a string")
        expression = schedule
        length = parse_schedule(expression)  # raises SpecError
    else:
        interval = interval or DEFAULT_INTERVAL
        try:
            length = parse_duration(interval, units="hd")
        except ValueError as exc:
            raise SpecError(f"spec.rotation.interval: {exc}") from None
        if not MIN_INTERVAL <= length <= MAX_INTERVAL:
            raise SpecError(f"spec.rotation.interval {interval!r}: must be between 4h and 1000d")
        expression = schedule_expression(interval)
    window = rotation.get("window") or None
    if window is not None:
        try:
            parse_duration(window, units="h")
        except ValueError as exc:
            raise SpecError(f"spec.rotation.window: {exc}") from None
    return expression, interval, window, length


def _parse_previous_key(value: Any, length: timedelta | None) -> tuple[str, timedelta]:
    """spec.previousKey: (action, grace period). The grace period must end before the next
    rotation (``length`` away, when known), which may remove the previous key."""
    previous = _mapping(value, "spec.previousKey")
    action = previous.get("action") or DEFAULT_PREVIOUS_KEY_ACTION
    if action not in PREVIOUS_KEY_ACTIONS:
        raise SpecError(f"spec.previousKey.action {action!r}: Keep, Deactivate or Delete")
    after_text = previous.get("after") or DEFAULT_PREVIOUS_KEY_AFTER
    try:
        after = parse_duration(after_text, units="smhd")
    except ValueError as exc:
        raise SpecError(f"spec.previousKey.after: {exc}") from None
    if after > MAX_INTERVAL:
        raise SpecError(f"spec.previousKey.after {after_text!r}: must be at most 1000d")
    if length is not None and after >= length:
        given = "" if previous.get("after") else ", the default"
        raise SpecError(
            f"spec.previousKey.after {after_text!r}{given}: must be shorter than the rotation "
            f"interval ({_format_timedelta(length)}), or the next rotation would remove the "
            "previous key while workloads may still use it; set a shorter previousKey.after"
        )
    return action, after


def parse_spec(
    spec: Mapping[str, Any], *, name: str, namespace: str, default_secret_name: str
) -> Spec:
    """Validate and default a raw spec. Raises SpecError naming the field."""
    iam_user = spec.get("iamUser")
    if not isinstance(iam_user, str) or not IAM_USER_RE.match(iam_user):
        raise SpecError(f"spec.iamUser {iam_user!r}: must match {IAM_USER_RE.pattern}")

    expression, interval, window, length = _parse_rotation(spec.get("rotation"))

    sm = _mapping(spec.get("secretsManager"), "spec.secretsManager")
    deletion_policy = sm.get("deletionPolicy") or "Retain"
    if deletion_policy not in DELETION_POLICIES:
        raise SpecError(f"spec.secretsManager.deletionPolicy {deletion_policy!r}: Retain or Delete")
    recovery = sm.get("recoveryWindowDays", DEFAULT_RECOVERY_WINDOW_DAYS)
    if not isinstance(recovery, int) or isinstance(recovery, bool) or not 7 <= recovery <= 30:
        raise SpecError(f"spec.secretsManager.recoveryWindowDays {recovery!r}: between 7 and 30")

    target = _mapping(spec.get("target"), "spec.target")
    restarts: list[WorkloadRef] = []
    raw_restarts = spec.get("restartOnRotation") or []
    if not isinstance(raw_restarts, Sequence) or isinstance(raw_restarts, str):
        raise SpecError("spec.restartOnRotation: expected a list")
    for index, item in enumerate(raw_restarts):
        ref = _mapping(item, f"spec.restartOnRotation[{index}]")
        if ref.get("kind") not in WORKLOAD_KINDS or not isinstance(ref.get("name"), str):
            raise SpecError(
                f"spec.restartOnRotation[{index}]: kind must be one of "
                f"{', '.join(WORKLOAD_KINDS)} and name a string"
            )
        restarts.append(WorkloadRef(kind=ref["kind"], name=ref["name"]))

    action, after = _parse_previous_key(spec.get("previousKey"), length)

    return Spec(
        iam_user=iam_user,
        schedule_expression=expression,
        interval=interval,
        window=window,
        secret_name=sm.get("secretName") or default_secret_name,
        kms_key_id=sm.get("kmsKeyId") or None,
        deletion_policy=deletion_policy,
        recovery_window_days=recovery,
        target_secret_name=target.get("secretName") or name,
        profile=target.get("profile") or DEFAULT_PROFILE,
        target_labels=_metadata_map(target.get("labels"), "spec.target.labels", labels=True),
        target_annotations=_metadata_map(
            target.get("annotations"), "spec.target.annotations", labels=False
        ),
        restart_on_rotation=tuple(restarts),
        previous_key_action=action,
        previous_key_after=after,
        suspend=bool(spec.get("suspend", False)),
    )
