"""What one operator process shares: settings, clients, the installation, the object index, the
clock, the Event sink, and the view of which objects want which IAM user.

Made once in kopf's start-up handler and kept in ``memo``; never at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from keyrotor.aws.clients import AwsClients
from keyrotor.claims import ClaimsMap
from keyrotor.index import ObjectIndex
from keyrotor.installation import Installation
from keyrotor.k8s.client import KubeApis
from keyrotor.settings import Settings
from keyrotor.tenancy import Claim


class EventSink(Protocol):
    def __call__(
        self, body: dict[str, Any], *, event_type: str, reason: str, message: str
    ) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    settings: Settings
    aws: AwsClients
    kube: KubeApis
    installation: Installation
    emit: EventSink
    installation_id: str = ""  # tenancy.installation_id: secret tags (and claims, unsharded)
    clock: Callable[[], datetime] = utcnow
    index: ObjectIndex = field(default_factory=ObjectIndex)
    # Which objects want which IAM user (keyrotor.claims): filled in kopf's start-up handler,
    # before any watcher starts, and kept current by kopf's events.
    claims: ClaimsMap = field(init=False)

    def __post_init__(self) -> None:
        self.claims = ClaimsMap(self.settings.shard)

    @property
    def claim_identity(self) -> str:
        """This process's name in IAM claims: the installation id, plus the shard's name."""
        return self.settings.shard.identity(self.installation_id)

    def claims_for(self, iam_user: str) -> tuple[Claim, ...]:
        """Every object that wants ``iam_user``; NotReadyError before the map was filled."""
        return self.claims.claims_for(iam_user)
