"""Which IAM users keyrotor manages, and for which object: from its secrets' tags.

Every secret an ``AccessKeyRotation`` owns carries the tags of its installation, namespace, name
and IAM user (``keyrotor.reconcile.secret_tags``). One ``ListSecrets`` filtered by the IAM-user
tag key (100 secrets a call, metadata only, never a value) finds them for every installation that
shares the account and region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyrotor.model import TAG_CLUSTER, TAG_IAM_USER, TAG_NAME, TAG_NAMESPACE

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


@dataclass(frozen=True)
class ManagedBy:
    cluster: str
    namespace: str
    name: str
    secret_name: str
    rotation_enabled: bool  # False: retained after its object was deleted, rotation cancelled

    @property
    def label(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


def managed_users(sm: SecretsManagerClient) -> dict[str, list[ManagedBy]]:
    """Every IAM user (name case-folded: IAM names are case-insensitive) with keyrotor's
    secrets for it, across installations."""
    found: dict[str, list[ManagedBy]] = {}
    pages = sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "tag-key", "Values": [TAG_IAM_USER]}],
        IncludePlannedDeletion=False,
        PaginationConfig={"PageSize": 100},
    )
    for page in pages:
        for entry in page.get("SecretList", []):
            tags = {t["Key"]: t["Value"] for t in entry.get("Tags") or []}
            user = tags.get(TAG_IAM_USER)
            if not user:
                continue  # the filter matches tag keys by prefix
            found.setdefault(user.casefold(), []).append(
                ManagedBy(
                    cluster=tags.get(TAG_CLUSTER, "?"),
                    namespace=tags.get(TAG_NAMESPACE, "?"),
                    name=tags.get(TAG_NAME, "?"),
                    secret_name=str(entry.get("Name", "")),
                    rotation_enabled=bool(entry.get("RotationEnabled")),
                )
            )
    return found
