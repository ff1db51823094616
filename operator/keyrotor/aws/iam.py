"""IAM: the users whose keys rotate, their keys, and the rotation Lambda's execution role."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keyrotor import errors
from keyrotor.aws import policies
from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_iam.type_defs import CreateRoleRequestTypeDef


@dataclass(frozen=True)
class IamUser:
    name: str
    arn: str
    tags: dict[str, str]


@aws_errors("iam")
def get_user(iam: IAMClient, name: str) -> IamUser | None:
    """The user with its tags, or None when there is no such user. One call: GetUser's
    ``User.Tags`` is every tag of the user (the list is not paginated, and IAM allows at most 50
    tags a user), so ListUserTags would read nothing more."""
    try:
        user = iam.get_user(UserName=name)["User"]
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    tags = {t["Key"]: t["Value"] for t in user.get("Tags") or []}
    return IamUser(name=user["UserName"], arn=user["Arn"], tags=tags)


@aws_errors("iam")
def user_tags_if_exists(iam: IAMClient, name: str) -> dict[str, str]:
    """The user's tags; none when there is no such user."""
    user = get_user(iam, name)
    return user.tags if user is not None else {}


@aws_errors("iam")
def tag_user(iam: IAMClient, name: str, tags: dict[str, str]) -> None:
    iam.tag_user(UserName=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


@aws_errors("iam")
def untag_user(iam: IAMClient, name: str, keys: list[str]) -> None:
    try:
        iam.untag_user(UserName=name, TagKeys=keys)
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise


@aws_errors("iam")
def access_keys(iam: IAMClient, user: str) -> dict[str, tuple[str, datetime]]:
    """The user's access key ids, with their status (Active | Inactive) and CreateDate; none
    when there is no such user."""
    try:
        keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return {}
        raise
    return {k["AccessKeyId"]: (k["Status"], k["CreateDate"]) for k in keys}


@aws_errors("iam")
def deactivate_access_key(iam: IAMClient, user: str, access_key_id: str) -> None:
    """Mark a key Inactive; a key already gone is nothing to do."""
    try:
        iam.update_access_key(UserName=user, AccessKeyId=access_key_id, Status="Inactive")
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise


@aws_errors("iam")
def delete_access_key(iam: IAMClient, user: str, access_key_id: str) -> None:
    try:
        iam.delete_access_key(UserName=user, AccessKeyId=access_key_id)
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise


ROLE_POLICY_NAME = policies.ROLE_POLICY_NAME


class RoleBoundaryError(errors.ConflictError):
    """The rotation role exists without the permissions boundary keyrotor creates it with."""


def rotation_role_policy(
    *,
    partition: str,
    region: str,
    account_id: str,
    prefix: str,
    function_name: str,
    kms_keys: tuple[str, ...] = (),
    user_path: str = "/",
) -> dict[str, Any]:
    """The rotation Lambda's inline policy: ``keyrotor.aws.policies.lambda_role_policy``."""
    cluster_name = function_name.removeprefix("keyrotor-").removesuffix("-rotation")
    return policies.lambda_role_policy(
        policies.PolicyParams(
            cluster_name=cluster_name,
            region=region,
            account_id=account_id,
            partition=partition,
            prefix=prefix,
            kms_keys=kms_keys,
            user_path=user_path,
        )
    )


@aws_errors("iam")
def ensure_lambda_role(
    iam: IAMClient,
    *,
    role_name: str,
    policy: dict[str, Any],
    trust: dict[str, Any] | None = None,
    boundary_arn: str | None = None,
) -> str:
    """The execution role with its trust and inline policy, created or corrected; its ARN.

    With ``boundary_arn`` the role is created with that permissions boundary, and an existing
    role without it is refused before anything is written (the operator's policy allows
    PutRolePolicy only on a role that carries the boundary).
    """
    try:
        role = iam.get_role(RoleName=role_name)["Role"]
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        request: CreateRoleRequestTypeDef = {
            "RoleName": role_name,
            "AssumeRolePolicyDocument": json.dumps(trust or _default_trust()),
            "Description": "keyrotor rotation Lambda execution role",
            "Tags": [{"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE}],
        }
        if boundary_arn:
            request["PermissionsBoundary"] = boundary_arn
        try:
            role = iam.create_role(**request)["Role"]
        except Exception as create_exc:
            if error_code(create_exc) != "EntityAlreadyExists":
                raise
            role = iam.get_role(RoleName=role_name)["Role"]
    have_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    if boundary_arn and have_boundary != boundary_arn:
        raise RoleBoundaryError(
            f"IAM role {role_name} exists without the permissions boundary {boundary_arn}; "
            f"attach it (aws iam put-role-permissions-boundary --role-name {role_name} "
            f"--permissions-boundary {boundary_arn}) or delete the role so keyrotor creates it"
        )
    wanted = json.dumps(policy, sort_keys=True)
    try:
        current = iam.get_role_policy(RoleName=role_name, PolicyName=ROLE_POLICY_NAME)
        document = current["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        have = json.dumps(document, sort_keys=True)
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        have = ""
    if have != wanted:
        iam.put_role_policy(RoleName=role_name, PolicyName=ROLE_POLICY_NAME, PolicyDocument=wanted)
    return str(role["Arn"])


def _default_trust() -> dict[str, Any]:
    return policies.lambda_trust_policy(policies.PolicyParams(cluster_name="-", region="-"))
