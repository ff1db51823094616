"""What one operator process shares: settings, clients, the object index, the clock, events.

Made once in kopf's start-up handler and kept in ``memo``; never at import time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from keyrotor import metrics
from keyrotor.aws import iam, rotation_function
from keyrotor.aws.clients import AwsClients
from keyrotor.aws.lambda_package import rotation_lambda_package
from keyrotor.k8s.client import KubeApis
from keyrotor.settings import Settings


class EventSink(Protocol):
    def __call__(
        self, body: dict[str, Any], *, event_type: str, reason: str, message: str
    ) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Installation:
    """What every object of one installation shares in the AWS account."""

    lambda_arn: str
    role_arn: str


@dataclass
class Entry:
    """One object as the shared sync loop knows it (no secret values, ever)."""

    namespace: str
    name: str
    uid: str
    secret_arn: str | None = None
    mirrored_version: str | None = None
    focus_until: datetime | None = None  # DescribeSecret it on every focus tick until then
    next_rotation: datetime | None = None
    window: timedelta = timedelta(hours=1)
    previous_key_due: datetime | None = None
    # status.lastRotationTime as last written: a rotation whose new version was mirrored before
    # LastRotatedDate moved (finishSecret comes first) still has its schedule to report.
    reported_last_rotation: str | None = None
    active: bool = False  # passed validation and tenancy; the loop may sync it


@dataclass
class ObjectIndex:
    """The in-memory index of AccessKeyRotation objects, shared by handlers and the sync loop."""

    _entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, namespace: str, name: str, uid: str, **changes: Any) -> Entry:
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is None or entry.uid != uid:
                entry = Entry(namespace=namespace, name=name, uid=uid)
                self._entries[(namespace, name)] = entry
            for key, value in changes.items():
                setattr(entry, key, value)
            return entry

    def note_reported(self, namespace: str, name: str, uid: str, last_rotation: str | None) -> None:
        """Record what status says of the last rotation, for an entry that exists."""
        with self._lock:
            entry = self._entries.get((namespace, name))
            if entry is not None and entry.uid == uid:
                entry.reported_last_rotation = last_rotation

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> Entry | None:
        with self._lock:
            return self._entries.get((namespace, name))

    def active(self) -> list[Entry]:
        with self._lock:
            return [e for e in self._entries.values() if e.active]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class Runtime:
    settings: Settings
    aws: AwsClients
    kube: KubeApis
    account_id: str
    partition: str
    emit: EventSink
    clock: Callable[[], datetime] = utcnow
    index: ObjectIndex = field(default_factory=ObjectIndex)
    _installation: Installation | None = None
    _install_lock: threading.Lock = field(default_factory=threading.Lock)

    def installation(self) -> Installation:
        """Ensure the shared role, Lambda and invoke permission, once per process."""
        with self._install_lock:
            if self._installation is None:
                self._installation = self._ensure_installation()
            return self._installation

    def forget_installation(self) -> None:
        """After an error that may mean the shared resources changed, check them again."""
        with self._install_lock:
            self._installation = None

    def _ensure_installation(self) -> Installation:
        settings = self.settings
        role_arn = settings.lambda_role_arn
        if not role_arn:
            policy = iam.rotation_role_policy(
                partition=self.partition,
                region=self.aws.region,
                account_id=self.account_id,
                prefix=settings.secret_prefix,
                function_name=settings.lambda_function_name,
            )
            role_arn = iam.ensure_lambda_role(
                self.aws.iam, role_name=settings.lambda_role_name, policy=policy
            )
        lambda_arn = rotation_function.ensure_rotation_lambda(
            self.aws.lambda_,
            function_name=settings.lambda_function_name,
            role_arn=role_arn,
            package=rotation_lambda_package(),
        )
        rotation_function.ensure_invoke_permission(
            self.aws.lambda_,
            function_name=settings.lambda_function_name,
            account_id=self.account_id,
        )
        metrics.INSTALLATION_ENSURED.inc()
        return Installation(lambda_arn=lambda_arn, role_arn=role_arn)
