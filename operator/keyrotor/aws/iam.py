"""IAM: the users whose keys rotate, their keys, and the rotation Lambda's execution role."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient


@dataclass(frozen=True)
class IamUser:
    name: str
    arn: str
    tags: dict[str, str]


@aws_errors("iam")
def get_user(iam: IAMClient, name: str) -> IamUser | None:
    """The user with its tags, or None when there is no such user."""
    try:
        user = iam.get_user(UserName=name)["User"]
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    return IamUser(name=user["UserName"], arn=user["Arn"], tags=user_tags(iam, name))


@aws_errors("iam")
def user_tags(iam: IAMClient, name: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in iam.get_paginator("list_user_tags").paginate(UserName=name):
        tags.update({t["Key"]: t["Value"] for t in page["Tags"]})
    return tags


@aws_errors("iam")
def user_tags_if_exists(iam: IAMClient, name: str) -> dict[str, str]:
    """The user's tags; none when there is no such user."""
    try:
        return user_tags(iam, name)
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return {}
        raise


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


LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
ROLE_POLICY_NAME = "keyrotor-rotation"


def rotation_role_policy(
    *, partition: str, region: str, account_id: str, prefix: str, function_name: str
) -> dict[str, Any]:
    """Least privilege for the rotation Lambda: only the installation's secrets (by name prefix),
    access-key actions on IAM users, its own log group."""
    secrets_arn = f"arn:{partition}:secretsmanager:{region}:{account_id}:secret:{prefix}*"
    log_group = f"arn:{partition}:logs:{region}:{account_id}:log-group:/aws/lambda/{function_name}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RotateInstallationSecrets",
                "Effect": "Allow",
                "Action": [
                    "secretsmanager:DescribeSecret",
                    "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue",
                    "secretsmanager:UpdateSecretVersionStage",
                    "secretsmanager:ListSecretVersionIds",
                ],
                "Resource": secrets_arn,
            },
            {
                "Sid": "ManageUserAccessKeys",
                "Effect": "Allow",
                "Action": [
                    "iam:GetUser",
                    "iam:ListAccessKeys",
                    "iam:CreateAccessKey",
                    "iam:DeleteAccessKey",
                ],
                "Resource": f"arn:{partition}:iam::{account_id}:user/*",
            },
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [log_group, f"{log_group}:*"],
            },
        ],
    }


@aws_errors("iam")
def ensure_lambda_role(iam: IAMClient, *, role_name: str, policy: dict[str, Any]) -> str:
    """The execution role with its trust and inline policy, created or corrected; its ARN."""
    try:
        role = iam.get_role(RoleName=role_name)["Role"]
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        try:
            role = iam.create_role(
                RoleName=role_name,
                AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
                Description="keyrotor rotation Lambda execution role",
                Tags=[{"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE}],
            )["Role"]
        except Exception as create_exc:
            if error_code(create_exc) != "EntityAlreadyExists":
                raise
            role = iam.get_role(RoleName=role_name)["Role"]
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
