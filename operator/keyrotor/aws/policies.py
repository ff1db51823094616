"""Every IAM document keyrotor needs, from one function: :func:`documents`.

The operator uses these documents when it creates the rotation Lambda's role, ``keyrotor policy``
prints them, and ``deploy/examples/*.json`` is generated from them (a test keeps it in step).

What each grants, and why (each action is one that the code calls; grep the boto3 calls in
``keyrotor/aws`` and ``rotation_lambda.py`` to check):

``operator``
    The operator's own identity (IRSA or EKS Pod Identity role). Secrets Manager actions only on
    this installation's secret prefix (``keyrotor/<cluster>/``), RotateSecret only with this
    installation's function as rotation Lambda, tags only with keyrotor's tag keys; ListSecrets
    on ``*`` (AWS cannot scope it; it returns metadata, never values). Lambda actions on this
    installation's function only; AddPermission/RemovePermission only for
    ``secretsmanager.amazonaws.com``. IAM users: read any user under the path (to say why a user
    is refused), write only users an administrator marked (``keyrotor.io/namespaces`` tag
    present), and only keyrotor's claim tags. ``iam:PassRole`` of the rotation role to Lambda only.
    Created-role mode adds CreateRole/PutRolePolicy on the exact role name, only with the
    permissions boundary attached (``iam:PermissionsBoundary``): a compromised operator can at most
    give the role what the boundary allows. Given-role mode (``--lambda-role-arn``) has no
    role-writing action at all.
    Event mode (``--event-mode``) adds the EventBridge rule ``keyrotor-<cluster>-secrets``
    (PutRule, DescribeRule, PutTargets, ListTargetsByRule, and RemoveTargets to take the other
    delivery's target off after a switch: that rule only) and the SQS queue
    ``keyrotor-<cluster>-events`` (create it, read and put back its policy, receive and delete
    messages: that queue only); with a queue the user names (``--event-queue-url``), only
    GetQueueAttributes, ReceiveMessage and DeleteMessage on that queue. Push delivery
    (``--event-delivery push``) has no queue: the rule, plus Create/Describe/UpdateConnection on
    the connection ``keyrotor-<cluster>-push`` and Create/Describe/UpdateApiDestination on the API
    destination of the same name, and ``iam:PassRole`` of the administrator's push role
    (``--event-push-role-arn``) to ``events.amazonaws.com`` only.
``event-push-role`` / ``event-push-trust``
    The role EventBridge invokes the API destination with (push delivery): InvokeApiDestination
    on that destination only; assumable by ``events.amazonaws.com`` for this installation's rule
    in this account only (``aws:SourceArn``, ``aws:SourceAccount``). The administrator creates it
    (as the operator gets no role-writing action for it).
``lambda-role``
    The rotation Lambda's inline policy: the four rotation steps on this installation's secrets,
    access-key actions only on marked users, its own log group, and the allowed KMS keys
    through Secrets Manager only, for this installation's secrets only (encryption context).
``lambda-trust``
    Lambda may assume the role (roles cannot be passed across accounts; the operator passes it
    to Lambda only).
``boundary``
    The permissions boundary of the created role: the same grants as ``lambda-role``, with KMS
    for any key of the account, through Secrets Manager, for this installation's secrets only
    (so that allowing another key needs no new boundary). The administrator creates it once as a
    managed policy named ``keyrotor-<cluster>-rotation-boundary``.
``irsa-trust`` / ``pod-identity-trust``
    Who may assume the operator's role: the operator's ServiceAccount only, through the
    cluster's OIDC provider (IRSA) or through EKS Pod Identity.
"""

from __future__ import annotations

import json
from typing import Any

from keyrotor.aws.operator_policy import operator_policy
from keyrotor.aws.policy_params import (
    BOUNDARY,
    CLAIM_TAG_KEYS,
    DOCUMENT_NAMES,
    EVENT_PUSH_ROLE,
    EVENT_PUSH_TRUST,
    IRSA_TRUST,
    LAMBDA_ROLE,
    LAMBDA_TRUST,
    OPERATOR,
    PLACEHOLDER_ACCOUNT,
    PLACEHOLDER_OIDC,
    POD_IDENTITY_TRUST,
    POLICY_VERSION,
    RESOURCE_TAG_KEYS,
    ROLE_POLICY_NAME,
    SECRET_TAG_KEYS,
    PolicyParams,
    boundary_name,
    document,
    function_name,
    kms_through_secrets_manager,
    role_name,
    secret_prefix,
    statement,
    user_statements,
)

__all__ = [
    "BOUNDARY",
    "CLAIM_TAG_KEYS",
    "DOCUMENT_NAMES",
    "EVENT_PUSH_ROLE",
    "EVENT_PUSH_TRUST",
    "IRSA_TRUST",
    "LAMBDA_ROLE",
    "LAMBDA_TRUST",
    "OPERATOR",
    "PLACEHOLDER_ACCOUNT",
    "PLACEHOLDER_OIDC",
    "POD_IDENTITY_TRUST",
    "POLICY_VERSION",
    "RESOURCE_TAG_KEYS",
    "ROLE_POLICY_NAME",
    "SECRET_TAG_KEYS",
    "PolicyParams",
    "actions_of",
    "boundary_name",
    "documents",
    "event_push_role_policy",
    "event_push_trust_policy",
    "function_name",
    "irsa_trust_policy",
    "lambda_role_policy",
    "lambda_trust_policy",
    "operator_policy",
    "permissions_boundary",
    "pod_identity_trust_policy",
    "render",
    "role_name",
    "secret_prefix",
]


# --- the rotation Lambda -----------------------------------------------------------------------


def _lambda_statements(p: PolicyParams) -> list[dict[str, Any]]:
    return [
        statement(
            "RotateInstallationSecrets",
            [
                "secretsmanager:DescribeSecret",
                "secretsmanager:GetSecretValue",
                "secretsmanager:PutSecretValue",
                "secretsmanager:UpdateSecretVersionStage",
                "secretsmanager:ListSecretVersionIds",
            ],
            p.secrets_arn,
        ),
        *user_statements(
            p,
            "ManageAccessKeysOfMarkedUsersOnly",
            ["iam:GetUser", "iam:ListAccessKeys", "iam:CreateAccessKey", "iam:DeleteAccessKey"],
            {},
        ),
        statement("CreateItsOwnLogGroup", ["logs:CreateLogGroup"], p.log_group_arn),
        statement(
            "WriteItsOwnLogs",
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            f"{p.log_group_arn}:log-stream:*",
        ),
    ]


def lambda_role_policy(p: PolicyParams) -> dict[str, Any]:
    statements = _lambda_statements(p)
    if p.kms_keys:
        statements.append(
            statement(
                "UseAllowedKmsKeysThroughSecretsManagerOnly",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                list(p.kms_keys),
                **kms_through_secrets_manager(p),
            )
        )
    return document(*statements)


def permissions_boundary(p: PolicyParams) -> dict[str, Any]:
    statements = _lambda_statements(p)
    statements.append(
        statement(
            "KmsThroughSecretsManagerForInstallationSecretsOnly",
            ["kms:Decrypt", "kms:GenerateDataKey"],
            p._arn("kms", "key/*"),
            **kms_through_secrets_manager(p),
        )
    )
    return document(*statements)


def lambda_trust_policy(p: PolicyParams) -> dict[str, Any]:
    return document(
        {
            "Sid": "LambdaMayAssumeIt",
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )


# --- the operator's identity -----------------------------------------------------------------


def irsa_trust_policy(p: PolicyParams) -> dict[str, Any]:
    provider = p.oidc_provider.removeprefix("https://")
    return document(
        {
            "Sid": "TheOperatorServiceAccountThroughIrsaOnly",
            "Effect": "Allow",
            "Principal": {"Federated": p._arn("iam", f"oidc-provider/{provider}", region=False)},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{provider}:sub": (
                        f"system:serviceaccount:{p.operator_namespace}:{p.service_account}"
                    ),
                    f"{provider}:aud": "sts.amazonaws.com",
                }
            },
        }
    )


def pod_identity_trust_policy(p: PolicyParams) -> dict[str, Any]:
    return document(
        {
            "Sid": "TheOperatorServiceAccountThroughEksPodIdentityOnly",
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {
                "StringEquals": {
                    "aws:RequestTag/eks-cluster-name": p.eks_cluster_name or p.cluster_name,
                    "aws:RequestTag/kubernetes-namespace": p.operator_namespace,
                    "aws:RequestTag/kubernetes-service-account": p.service_account,
                }
            },
        }
    )


# --- event push delivery: the role EventBridge invokes the operator's API destination with -----


def event_push_role_policy(p: PolicyParams) -> dict[str, Any]:
    return document(
        statement(
            "InvokeItsOwnApiDestinationOnly",
            ["events:InvokeApiDestination"],
            [arn for arn in p.event_push_destination_arns if arn.endswith("/*")],
        )
    )


def event_push_trust_policy(p: PolicyParams) -> dict[str, Any]:
    """EventBridge may assume the role only for this installation's rule(s), in this account."""
    rules = p.event_rule_arns
    return document(
        {
            "Sid": "EventBridgeForThisInstallationsRuleOnly",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": p.account_id},
                "ArnEquals": {"aws:SourceArn": rules[0] if len(rules) == 1 else rules},
            },
        }
    )


def documents(p: PolicyParams) -> dict[str, dict[str, Any]]:
    """Every IAM document of one installation, by name (see the module docstring)."""
    return {
        OPERATOR: operator_policy(p),
        LAMBDA_ROLE: lambda_role_policy(p),
        LAMBDA_TRUST: lambda_trust_policy(p),
        BOUNDARY: permissions_boundary(p),
        IRSA_TRUST: irsa_trust_policy(p),
        POD_IDENTITY_TRUST: pod_identity_trust_policy(p),
        EVENT_PUSH_ROLE: event_push_role_policy(p),
        EVENT_PUSH_TRUST: event_push_trust_policy(p),
    }


def render(doc: dict[str, Any]) -> str:
    """The text form used for files and for comparing with what AWS holds."""
    return json.dumps(doc, indent=2) + "\n"


def actions_of(doc: dict[str, Any]) -> set[str]:
    """Every action a document grants (for figures and tests)."""
    found: set[str] = set()
    for entry in doc["Statement"]:
        action = entry.get("Action", [])
        found.update([action] if isinstance(action, str) else action)
    return found
