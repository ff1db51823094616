"""The operator's own IAM policy (``keyrotor.aws.policies`` explains what each document grants
and why): the statements by what they serve, put together by :func:`operator_policy`."""

from __future__ import annotations

from typing import Any

from keyrotor.aws.policy_params import (
    CLAIM_TAG_KEYS,
    RESOURCE_TAG_KEYS,
    SECRET_TAG_KEYS,
    PolicyParams,
    document,
    kms_through_secrets_manager,
    statement,
    user_statements,
    with_kms_key_rule,
)
from keyrotor.model import TAG_CLUSTER


def operator_policy(p: PolicyParams) -> dict[str, Any]:
    statements = [
        *_secret_statements(p),
        *_unscoped_statements(p),
        *_function_statements(p),
        *_user_statements(p),
    ]
    if p.created_role:
        statements += _created_role_statements(p)
    if p.kms_keys:
        statements += _kms_statements(p)
    if p.event_mode and p.event_push:
        statements += _event_push_statements(p)
    elif p.event_mode:
        statements += _event_mode_statements(p)
    return document(*statements)


def _secret_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """This installation's secrets, under its prefix."""
    return [
        statement(
            "ReadInstallationSecrets",
            [
                "secretsmanager:DescribeSecret",
                "secretsmanager:GetSecretValue",
                "secretsmanager:ListSecretVersionIds",
            ],
            p.secrets_arn,
        ),
        statement(
            "CreateInstallationSecretsTaggedAsItsOwn",
            ["secretsmanager:CreateSecret"],
            p.secrets_arn,
            **with_kms_key_rule(
                p,
                {
                    "StringEquals": {f"aws:RequestTag/{TAG_CLUSTER}": p.cluster_name},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(SECRET_TAG_KEYS)},
                },
            ),
        ),
        statement(
            "TagInstallationSecretsWithKeyrotorTagsOnly",
            ["secretsmanager:TagResource"],
            p.secrets_arn,
            **{
                "ForAllValues:StringEquals": {"aws:TagKeys": list(SECRET_TAG_KEYS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
        statement(
            "ManageInstallationSecrets",
            ["secretsmanager:CancelRotateSecret", "secretsmanager:RestoreSecret"],
            p.secrets_arn,
        ),
        statement(
            "ClearOnlyAwspendingOfInstallationSecrets",
            ["secretsmanager:UpdateSecretVersionStage"],
            p.secrets_arn,
            StringEquals={"secretsmanager:VersionStage": "AWSPENDING"},
        ),
        statement(
            "DeleteInstallationSecretsOnlyWithARecoveryWindow",
            ["secretsmanager:DeleteSecret"],
            p.secrets_arn,
            BoolIfExists={"secretsmanager:ForceDeleteWithoutRecovery": "false"},
        ),
        statement(
            "RotateInstallationSecretsWithItsOwnFunctionOnly",
            ["secretsmanager:RotateSecret"],
            p.secrets_arn,
            ArnEqualsIfExists={"secretsmanager:RotationLambdaARN": p.function_arn},
        ),
    ]


def _unscoped_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """Actions AWS cannot scope to a resource (metadata only)."""
    return [
        # ListSecrets has no resource type: AWS allows only "*". It returns metadata (names,
        # tags, version stages), never values; the operator filters by its installation tag.
        statement("ListSecretsCannotBeScoped", ["secretsmanager:ListSecrets"], "*"),
        # Dead-key detection reads IAM's credential report (keyrotor.aws.credential_report):
        # every user's key states in one call. Neither action has a resource type: only "*".
        statement(
            "CredentialReportCannotBeScoped",
            ["iam:GenerateCredentialReport", "iam:GetCredentialReport"],
            "*",
        ),
    ]


def _function_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """The rotation function, and passing its role to Lambda."""
    return [
        statement(
            "ManageItsOwnRotationFunction",
            [
                "lambda:GetFunction",
                "lambda:GetFunctionConfiguration",
                "lambda:CreateFunction",
                "lambda:UpdateFunctionCode",
                "lambda:UpdateFunctionConfiguration",
                "lambda:GetPolicy",
                "lambda:TagResource",
            ],
            p.function_arn,
        ),
        statement(
            "LetOnlySecretsManagerInvokeIt",
            ["lambda:AddPermission"],
            p.function_arn,
            StringEquals={"lambda:Principal": "secretsmanager.amazonaws.com"},
        ),
        # Taking a permission away grants nothing (and its request names no principal).
        statement("RemoveAnInvokePermission", ["lambda:RemovePermission"], p.function_arn),
        statement(
            "PassTheRotationRoleToLambdaOnly",
            ["iam:PassRole"],
            p.role_arn,
            StringEquals={"iam:PassedToService": "lambda.amazonaws.com"},
        ),
    ]


def _user_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """IAM users: read under the path, write only marked ones."""
    return [
        # Reading any user under the path lets the operator say why an object is refused
        # (no such user, not marked for this namespace); it reveals no secret. GetUser answers
        # the user's tags too (no ListUserTags). ListAccessKeys
        # (key ids, states, dates): a mirrored key's CreateDate is how the credential report
        # knows it (keyrotor.aws.credential_report.key_created). Not conditioned on the tag: a
        # user deleted meanwhile has no tags, and must answer NoSuchEntity, not AccessDenied.
        statement("ReadUsers", ["iam:GetUser", "iam:ListAccessKeys"], p.users_arn),
        *user_statements(
            p,
            "HandlePreviousKeysOfMarkedUsersOnly",
            ["iam:UpdateAccessKey", "iam:DeleteAccessKey"],
            {},
        ),
        *user_statements(
            p,
            "ClaimMarkedUsersWithItsClaimTagsOnly",
            ["iam:TagUser", "iam:UntagUser"],
            {
                "ForAllValues:StringEquals": {"aws:TagKeys": list(CLAIM_TAG_KEYS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
    ]


def _created_role_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """Created-role mode: the exact role, written only with its boundary."""
    boundary = {"ArnEquals": {"iam:PermissionsBoundary": p.boundary_arn}}
    return [
        statement("ReadTheRotationRole", ["iam:GetRole", "iam:GetRolePolicy"], p.role_arn),
        statement(
            "WriteTheRotationRoleOnlyWithItsBoundary",
            ["iam:CreateRole", "iam:PutRolePolicy"],
            p.role_arn,
            **boundary,
        ),
        statement(
            "TagTheRotationRoleWithKeyrotorTagsOnly",
            ["iam:TagRole"],
            p.role_arn,
            **{
                "ForAllValues:StringEquals": {"aws:TagKeys": list(RESOURCE_TAG_KEYS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
    ]


def _kms_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """The allowed KMS keys, through Secrets Manager only."""
    return [
        # UpdateSecret is called only to move a secret to an allowed key.
        statement(
            "MoveInstallationSecretsToAllowedKmsKeysOnly",
            ["secretsmanager:UpdateSecret"],
            p.secrets_arn,
            StringEquals={"secretsmanager:KmsKeyId": list(p.kms_keys)},
        ),
        statement(
            "UseAllowedKmsKeysThroughSecretsManagerOnly",
            ["kms:Decrypt", "kms:GenerateDataKey"],
            list(p.kms_keys),
            **kms_through_secrets_manager(p),
        ),
    ]


def _event_rule_statement(p: PolicyParams) -> dict[str, Any]:
    """Its own rule (each shard's): RemoveTargets takes the other delivery's target off it when
    the delivery was switched (keyrotor.aws.eventing.ensure_rule_target)."""
    return statement(
        "EnsureItsOwnEventRule",
        [
            "events:DescribeRule",
            "events:ListTargetsByRule",
            "events:PutRule",
            "events:PutTargets",
            "events:RemoveTargets",
        ],
        _one_or_list(p.event_rule_arns),
    )


def _event_push_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """Push delivery (keyrotor.aws.event_push): the rule, its connection (the token EventBridge
    sends) and API destination (the operator's URL), and passing the administrator's role to
    EventBridge only. No queue, no Secrets Manager action: EventBridge keeps the connection's
    token in a secret of its own, through its service-linked role."""
    connections = p.event_push_connection_arns
    return [
        _event_rule_statement(p),
        statement(
            "EnsureItsOwnPushConnection",
            ["events:CreateConnection", "events:DescribeConnection", "events:UpdateConnection"],
            connections,
        ),
        statement(
            "EnsureItsOwnApiDestination",
            [
                "events:CreateApiDestination",
                "events:DescribeApiDestination",
                "events:UpdateApiDestination",
            ],
            p.event_push_destination_arns,
        ),
        # These two are also authorized on the connection the destination names.
        statement(
            "ItsApiDestinationOnItsOwnConnectionOnly",
            ["events:CreateApiDestination", "events:DescribeApiDestination"],
            connections,
        ),
        statement(
            "PassThePushRoleToEventBridgeOnly",
            ["iam:PassRole"],
            p.event_push_role,
            StringEquals={"iam:PassedToService": "events.amazonaws.com"},
        ),
    ]


def _event_mode_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """The rule that sends this installation's Secrets Manager events to its queue, and the
    queue (keyrotor.aws.eventing)."""
    rule = _event_rule_statement(p)
    queues = _one_or_list(p.event_queues)  # each shard's own (policy --shard), else the one
    consume = ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
    if p.event_queue_arn:  # the user's queue: read and consume it, nothing else
        return [rule, statement("ConsumeTheGivenEventQueue", consume, queues)]
    ensure = ["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:SetQueueAttributes"]
    return [rule, statement("EnsureAndConsumeItsOwnEventQueue", consume + ensure, queues)]


def _one_or_list(resources: list[str]) -> list[str] | str:
    return resources[0] if len(resources) == 1 else resources
