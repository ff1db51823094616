"""Secrets Manager: the per-object secret, its rotation, and cheap change detection.

Change detection reads metadata, never values: ``ListSecrets`` (by the installation's tag, 100
secrets a call, may lag) and ``DescribeSecret`` (consistent) give each secret's
``VersionIdsToStages``; the value is read only when the ``AWSCURRENT`` version id changed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keyrotor.aws.clients import error_code
from keyrotor.model import Observed

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import CreateSecretRequestTypeDef

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"


class SecretOwnedElsewhereError(RuntimeError):
    """A secret of that name exists and belongs to another object or to nobody we know."""


@dataclass(frozen=True)
class CurrentKey:
    """The AWSCURRENT version's key. ``secret_access_key`` never leaves the mirror path."""

    version_id: str
    username: str
    access_key_id: str
    secret_access_key: str = ""

    def __repr__(self) -> str:  # keep the secret out of any log or traceback that prints us
        return (
            f"CurrentKey(version_id={self.version_id!r}, username={self.username!r}, "
            f"access_key_id={self.access_key_id!r})"
        )


def deterministic_token(*parts: str) -> str:
    """A ClientRequestToken derived from stable inputs, so a retried call is idempotent."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return str(uuid.UUID(digest[:32]))


def initial_version_id(owner_uid: str) -> str:
    """The version id of the value a new secret is created with (the user name, no key yet)."""
    return deterministic_token("create", owner_uid)


def observed_from_description(description: Mapping[str, Any]) -> Observed:
    stages: Mapping[str, list[str]] = description.get("VersionIdsToStages") or {}
    current = next((v for v, s in stages.items() if AWSCURRENT in s), None)
    pending = [v for v, s in stages.items() if AWSPENDING in s]
    return Observed(
        arn=str(description["ARN"]),
        current_version=current,
        pending_versions=pending,
        versions=list(stages),
        rotation_enabled=bool(description.get("RotationEnabled")),
        rotation_lambda_arn=description.get("RotationLambdaARN"),
        rotation_rules=dict(description.get("RotationRules") or {}),
        last_rotated=description.get("LastRotatedDate"),
        next_rotation=description.get("NextRotationDate"),
        deleted=description.get("DeletedDate") is not None,
        tags={t["Key"]: t["Value"] for t in description.get("Tags") or []},
    )


def describe(sm: SecretsManagerClient, secret_id: str) -> Observed | None:
    try:
        return observed_from_description(sm.describe_secret(SecretId=secret_id))
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def ensure_secret(
    sm: SecretsManagerClient,
    *,
    name: str,
    iam_user: str,
    tags: Mapping[str, str],
    owner_uid: str,
    owner_tag: str,
    kms_key_id: str | None,
) -> Observed:
    """The secret exists, is ours, is tagged, and is not scheduled for deletion.

    A new secret holds only the user name: the first rotation creates the first managed key.
    A secret left by an earlier object of the same namespace and name (deletionPolicy Retain)
    is adopted; one owned by any other object is refused.
    """
    observed = describe(sm, name)
    if observed is None:
        request: CreateSecretRequestTypeDef = {
            "Name": name,
            "ClientRequestToken": initial_version_id(owner_uid),
            "SecretString": json.dumps({"username": iam_user}),
            "Description": f"keyrotor: access key of IAM user {iam_user}",
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }
        if kms_key_id:
            request["KmsKeyId"] = kms_key_id
        try:
            sm.create_secret(**request)
        except Exception as exc:
            if error_code(exc) not in ("ResourceExistsException",):
                raise
        observed = describe(sm, name)
        if observed is None:
            raise RuntimeError(f"secret {name} was created but cannot be described")
    owner = observed.tags.get(owner_tag)
    if owner is not None and owner != tags.get(owner_tag):
        raise SecretOwnedElsewhereError(
            f"Secrets Manager secret {name} belongs to {owner_tag}={owner}"
        )
    if owner is None and observed.tags and not _ours(observed.tags, tags):
        raise SecretOwnedElsewhereError(
            f"Secrets Manager secret {name} exists and is not managed by this keyrotor installation"
        )
    if observed.deleted:
        sm.restore_secret(SecretId=observed.arn)
    missing = {k: v for k, v in tags.items() if observed.tags.get(k) != v}
    if missing:
        sm.tag_resource(
            SecretId=observed.arn, Tags=[{"Key": k, "Value": v} for k, v in missing.items()]
        )
    if kms_key_id:
        sm.update_secret(SecretId=observed.arn, KmsKeyId=kms_key_id)
    refreshed = describe(sm, observed.arn)
    return refreshed if refreshed is not None else observed


def _ours(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    """Tags say it was made by this installation for the same namespace and name."""
    keys = [k for k in want if not k.endswith("/uid")]
    return all(have.get(k) == want[k] for k in keys)


def configure_rotation(
    sm: SecretsManagerClient,
    *,
    secret_id: str,
    lambda_arn: str,
    rules: Mapping[str, Any],
    rotate_immediately: bool,
    token: str | None = None,
) -> str | None:
    """Enable rotation with these rules; rotate now when asked. Returns the new version id."""
    kwargs: dict[str, Any] = {
        "SecretId": secret_id,
        "RotationLambdaARN": lambda_arn,
        "RotationRules": dict(rules),
        "RotateImmediately": rotate_immediately,
    }
    if token:
        kwargs["ClientRequestToken"] = token
    response = sm.rotate_secret(**kwargs)
    return response.get("VersionId") if rotate_immediately else None


def request_rotation(sm: SecretsManagerClient, *, secret_id: str, token: str) -> str:
    """Rotate now, with the configured rules. The token makes a retried request the same one."""
    response = sm.rotate_secret(
        SecretId=secret_id, ClientRequestToken=token, RotateImmediately=True
    )
    return str(response.get("VersionId", token))


def version_created(
    sm: SecretsManagerClient, *, secret_id: str, version_id: str
) -> datetime | None:
    """When a version was created (ListSecretVersionIds: metadata only, never values)."""
    request: dict[str, Any] = {"SecretId": secret_id, "MaxResults": 100}
    while True:
        page = sm.list_secret_version_ids(**request)
        for version in page.get("Versions", []):
            if version.get("VersionId") == version_id:
                return version.get("CreatedDate")
        if not page.get("NextToken"):
            return None
        request["NextToken"] = page["NextToken"]


def clear_pending(sm: SecretsManagerClient, *, secret_id: str, version_id: str) -> None:
    """Take AWSPENDING off a version whose rotation did not finish, so rotation can go on."""
    try:
        sm.update_secret_version_stage(
            SecretId=secret_id, VersionStage=AWSPENDING, RemoveFromVersionId=version_id
        )
    except Exception as exc:
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidParameterException"):
            raise


def read_current_key(sm: SecretsManagerClient, secret_id: str) -> CurrentKey:
    """GetSecretValue of AWSCURRENT: called only when the current version id changed."""
    response = sm.get_secret_value(SecretId=secret_id, VersionStage=AWSCURRENT)
    version = str(response["VersionId"])
    try:
        value = json.loads(response.get("SecretString") or "")
    except ValueError:
        raise ValueError(f"secret {secret_id} version {version} is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"secret {secret_id} version {version} is not a JSON object")
    return CurrentKey(
        version_id=version,
        username=str(value.get("username", "")),
        access_key_id=str(value.get("accesskey") or ""),
        secret_access_key=str(value.get("secretkey") or ""),
    )


def list_managed(sm: SecretsManagerClient, *, tag_key: str, tag_value: str) -> Iterator[Observed]:
    """Every secret of this installation, 100 a call, with its version stages (no values)."""
    paginator = sm.get_paginator("list_secrets")
    pages = paginator.paginate(
        Filters=[
            {"Key": "tag-key", "Values": [tag_key]},
            {"Key": "tag-value", "Values": [tag_value]},
        ],
        IncludePlannedDeletion=False,
        PaginationConfig={"PageSize": 100},
    )
    for page in pages:
        for entry in page.get("SecretList", []):
            tags = {t["Key"]: t["Value"] for t in entry.get("Tags") or []}
            if tags.get(tag_key) != tag_value:
                continue  # the two filters match independently; keep only this installation's
            yield observed_from_description(
                {**entry, "VersionIdsToStages": entry.get("SecretVersionsToStages")}
            )


def cancel_rotation(sm: SecretsManagerClient, secret_id: str) -> None:
    try:
        sm.cancel_rotate_secret(SecretId=secret_id)
    except Exception as exc:
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidRequestException"):
            raise


def schedule_deletion(sm: SecretsManagerClient, secret_id: str, recovery_window_days: int) -> None:
    try:
        sm.delete_secret(SecretId=secret_id, RecoveryWindowInDays=recovery_window_days)
    except Exception as exc:
        # Already scheduled for deletion (InvalidRequestException) or gone: the end state holds.
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidRequestException"):
            raise
