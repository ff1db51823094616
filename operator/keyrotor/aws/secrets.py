"""Secrets Manager: the per-object secret, its rotation, and cheap change detection.

Change detection reads metadata, never values: ``ListSecrets`` (by the installation's tag, 100
secrets a call, may lag) and ``DescribeSecret`` (consistent) give each secret's
``VersionIdsToStages``; the value is read only when the ``AWSCURRENT`` version id changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keyrotor import errors
from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.observation import Observed, initial_version_id

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import CreateSecretRequestTypeDef

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"


@dataclass(frozen=True)
class CurrentKey:
    """The AWSCURRENT version's key. ``secret_access_key`` never leaves the mirror path."""

    version_id: str
    username: str
    access_key_id: str
    secret_access_key: str = ""
    key_created: datetime | None = None  # the key's CreateDate, when the Lambda stored it beside

    def __repr__(self) -> str:  # keep the secret out of any log or traceback that prints us
        return (
            f"CurrentKey(version_id={self.version_id!r}, username={self.username!r}, "
            f"access_key_id={self.access_key_id!r})"
        )


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
        last_rotated=_utc(description.get("LastRotatedDate")),
        next_rotation=_utc(description.get("NextRotationDate")),
        deleted=description.get("DeletedDate") is not None,
        tags={t["Key"]: t["Value"] for t in description.get("Tags") or []},
        kms_key_id=description.get("KmsKeyId") or None,
    )


def _utc(when: Any) -> datetime | None:
    """An AWS time in UTC. botocore gives Secrets Manager's epoch times a new ``tzlocal`` each
    (about 1 KiB apiece, kept as long as the time is: 15,000 at 10,000 objects); UTC is one
    shared object, and the same instant."""
    return when.astimezone(UTC) if isinstance(when, datetime) else None


@aws_errors("secretsmanager")
def describe(sm: SecretsManagerClient, secret_id: str) -> Observed | None:
    try:
        return observed_from_description(sm.describe_secret(SecretId=secret_id))
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise


@aws_errors("secretsmanager")
def create_managed_secret(
    sm: SecretsManagerClient,
    *,
    name: str,
    iam_user: str,
    tags: Mapping[str, str],
    owner_uid: str,
    kms_key_id: str | None,
) -> str | None:
    """A new secret holds only the user name: the first rotation creates the first managed key.
    Its first version id is derived from the owner, so a retried create is the same one.
    The new secret's ARN; None when a secret of that name existed (whose it is, the next look
    decides)."""
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
        created = sm.create_secret(**request)
    except Exception as exc:
        if error_code(exc) != "ResourceExistsException":
            raise  # exists: the next look decides whether it is ours
        return None
    return str(created["ARN"])


@aws_errors("secretsmanager")
def adopt_secret(
    sm: SecretsManagerClient,
    *,
    secret_id: str,
    add_tags: Mapping[str, str],
    restore: bool,
    kms_key_id: str | None,
) -> None:
    """Make a secret the planner found to be this object's carry its tags; restore it when it
    was scheduled for deletion; use the spec's KMS key (given only when it differs)."""
    if restore:
        sm.restore_secret(SecretId=secret_id)
    if add_tags:
        sm.tag_resource(
            SecretId=secret_id, Tags=[{"Key": k, "Value": v} for k, v in add_tags.items()]
        )
    if kms_key_id:
        sm.update_secret(SecretId=secret_id, KmsKeyId=kms_key_id)


@aws_errors("secretsmanager")
def configure_rotation(
    sm: SecretsManagerClient,
    *,
    secret_id: str,
    lambda_arn: str,
    rules: Mapping[str, Any],
    rotate_immediately: bool,
) -> str | None:
    """Enable rotation with these rules; rotate now when asked. botocore fills in a
    ClientRequestToken that its own retries reuse; a repeat after a restart is prevented by
    looking first (a rotation in progress, LastRotatedDate). The version id of the rotation
    started, if one was."""
    response = sm.rotate_secret(
        SecretId=secret_id,
        RotationLambdaARN=lambda_arn,
        RotationRules=dict(rules),  # type: ignore[arg-type]
        RotateImmediately=rotate_immediately,
    )
    version = response.get("VersionId")
    return str(version) if rotate_immediately and version else None


@aws_errors("secretsmanager")
def request_rotation(sm: SecretsManagerClient, *, secret_id: str, token: str) -> None:
    """Rotate now, with the configured rules. The token makes a retried request the same one."""
    sm.rotate_secret(SecretId=secret_id, ClientRequestToken=token, RotateImmediately=True)


@aws_errors("secretsmanager")
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


@aws_errors("secretsmanager")
def clear_pending(sm: SecretsManagerClient, *, secret_id: str, version_id: str) -> None:
    """Take AWSPENDING off a version whose rotation did not finish, so rotation can go on."""
    try:
        sm.update_secret_version_stage(
            SecretId=secret_id, VersionStage=AWSPENDING, RemoveFromVersionId=version_id
        )
    except Exception as exc:
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidParameterException"):
            raise


@aws_errors("secretsmanager")
def read_current_key(sm: SecretsManagerClient, secret_id: str) -> CurrentKey:
    """GetSecretValue of AWSCURRENT: called only when the current version id changed."""
    response = sm.get_secret_value(SecretId=secret_id, VersionStage=AWSCURRENT)
    version = str(response["VersionId"])
    try:
        value = json.loads(response.get("SecretString") or "")
    except ValueError:
        raise errors.InvalidError(f"secret {secret_id} version {version} is not JSON") from None
    if not isinstance(value, dict):
        raise errors.InvalidError(f"secret {secret_id} version {version} is not a JSON object")
    access_key_id = str(value.get("accesskey") or "")
    return CurrentKey(
        version_id=version,
        username=str(value.get("username", "")),
        access_key_id=access_key_id,
        secret_access_key=str(value.get("secretkey") or ""),
        key_created=stored_key_created(value, access_key_id),
    )


def stored_key_created(value: Mapping[str, Any], access_key_id: str) -> datetime | None:
    """The key's CreateDate as keyrotor's rotation Lambda stores it beside the key
    (``"keycreated": {"accesskey": ..., "createdate": ...}``), when it names this very key.
    None for a value without it (the classic function, an older Lambda), with another key's
    (a function that copied the field over), or with a date that does not parse: the caller
    asks IAM (ListAccessKeys) instead."""
    stamp = value.get("keycreated")
    if not isinstance(stamp, Mapping) or not access_key_id:
        return None
    text = stamp.get("createdate")
    if stamp.get("accesskey") != access_key_id or not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo is not None else None


def list_managed(sm: SecretsManagerClient, *, tag_key: str, tag_value: str) -> Iterator[Observed]:
    """Every secret of this installation, 100 a call, with its version stages (no values), page
    by page as they come: a sweep over 10,000 secrets holds one page, not 10,000 of them."""
    pages = iter(
        sm.get_paginator("list_secrets").paginate(
            Filters=[
                {"Key": "tag-key", "Values": [tag_key]},
                {"Key": "tag-value", "Values": [tag_value]},
            ],
            IncludePlannedDeletion=False,
            PaginationConfig={"PageSize": 100},
        )
    )
    while (page := _next_page(pages)) is not None:
        for entry in page.get("SecretList", []):
            tags = {t["Key"]: t["Value"] for t in entry.get("Tags") or []}
            if tags.get(tag_key) != tag_value:
                continue  # the two filters match independently; keep only this installation's
            yield observed_from_description(
                {**entry, "VersionIdsToStages": entry.get("SecretVersionsToStages")}
            )


@aws_errors("secretsmanager")
def _next_page(pages: Iterator[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The next ListSecrets page (its call is made here), None after the last."""
    return next(pages, None)


@aws_errors("secretsmanager")
def cancel_rotation(sm: SecretsManagerClient, secret_id: str) -> None:
    try:
        sm.cancel_rotate_secret(SecretId=secret_id)
    except Exception as exc:
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidRequestException"):
            raise


@aws_errors("secretsmanager")
def schedule_deletion(sm: SecretsManagerClient, secret_id: str, recovery_window_days: int) -> None:
    try:
        sm.delete_secret(SecretId=secret_id, RecoveryWindowInDays=recovery_window_days)
    except Exception as exc:
        # Already scheduled for deletion (InvalidRequestException) or gone: the end state holds.
        if error_code(exc) not in ("ResourceNotFoundException", "InvalidRequestException"):
            raise
