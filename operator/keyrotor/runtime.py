"""What one operator process shares: settings, clients, the installation, the object index, the
clock, the Event sink, and the view of which objects want which IAM user.

Made once in kopf's start-up handler and kept in ``memo``; never at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from keyrotor.aws.clients import AwsClients
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


def claim_key(iam_user: str) -> str:
    """IAM user names are unique case-insensitively: one key for every spelling."""
    return iam_user.lower()


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
    # kopf's index of claims by IAM user (live; filled before the first handler runs).
    claims_index: Mapping[str, Sequence[Claim]] | None = None

    @property
    def claim_identity(self) -> str:
        """This process's name in IAM claims: the installation id, plus the shard's name."""
        return self.settings.shard.identity(self.installation_id)

    def claims_for(self, iam_user: str) -> tuple[Claim, ...]:
        if self.claims_index is None:
            return ()
        for _attempt in range(3):
            try:  # kopf updates its index from the event loop's thread
                return tuple(self.claims_index.get(claim_key(iam_user), ()))
            except RuntimeError:
                continue
        return ()
