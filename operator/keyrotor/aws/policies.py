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
    (PutRule, DescribeRule, PutTargets, ListTargetsByRule: that rule only) and the SQS queue
    ``keyrotor-<cluster>-events`` (create it, read and put back its policy, receive and delete
    messages: that queue only); with a queue the user names (``--event-queue-url``), only
    GetQueueAttributes, ReceiveMessage and DeleteMessage on that queue.
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
from dataclasses import dataclass
from typing import Any, Final

from keyrotor.model import (
    CLAIM_OBJECT_TAG,
    CLAIM_TAG,
    MANAGED_BY_LABEL,
    NAMESPACES_TAG,
    TAG_CLUSTER,
    TAG_IAM_USER,
    TAG_INSTALLATION,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
)

POLICY_VERSION: Final = "2012-10-17"
ROLE_POLICY_NAME: Final = "keyrotor-rotation"
PLACEHOLDER_ACCOUNT: Final = "ACCOUNT_ID"
PLACEHOLDER_OIDC: Final = "OIDC_PROVIDER"  # e.g. oidc.eks.eu-west-1.amazonaws.com/id/ABC123

# Names of the documents, in the order ``keyrotor policy`` prints them.
OPERATOR: Final = "operator"
LAMBDA_ROLE: Final = "lambda-role"
LAMBDA_TRUST: Final = "lambda-trust"
BOUNDARY: Final = "boundary"
IRSA_TRUST: Final = "irsa-trust"
POD_IDENTITY_TRUST: Final = "pod-identity-trust"
DOCUMENT_NAMES: Final = (
    OPERATOR,
    LAMBDA_ROLE,
    LAMBDA_TRUST,
    BOUNDARY,
    IRSA_TRUST,
    POD_IDENTITY_TRUST,
)

# Tags the operator writes: on its secrets (at CreateSecret and TagResource), on the role and
# the function it creates, and (claims) on IAM users.
SECRET_TAG_KEYS: Final = (
    TAG_CLUSTER,
    TAG_INSTALLATION,
    TAG_NAMESPACE,
    TAG_NAME,
    TAG_UID,
    TAG_IAM_USER,
    MANAGED_BY_LABEL,
)
CLAIM_TAG_KEYS: Final = (CLAIM_TAG, CLAIM_OBJECT_TAG)
RESOURCE_TAG_KEYS: Final = (MANAGED_BY_LABEL,)


def function_name(cluster_name: str) -> str:
    return f"keyrotor-{cluster_name}-rotation"


def role_name(cluster_name: str) -> str:
    return f"keyrotor-{cluster_name}-rotation"


def boundary_name(cluster_name: str) -> str:
    return f"keyrotor-{cluster_name}-rotation-boundary"


def secret_prefix(cluster_name: str) -> str:
    return f"keyrotor/{cluster_name}/"


@dataclass(frozen=True)
class PolicyParams:
    """What the documents depend on. ``lambda_role_arn`` set: given-role mode."""

    cluster_name: str
    region: str
    account_id: str = PLACEHOLDER_ACCOUNT
    partition: str = "aws"
    prefix: str | None = None  # default keyrotor/<cluster>/
    lambda_role_arn: str | None = None
    kms_keys: tuple[str, ...] = ()  # key ARNs objects may use (spec.secretsManager.kmsKeyId)
    user_path: str = "/"  # IAM path of the users keyrotor may rotate
    # --allow NAMESPACE:USER_GLOB rules: users the platform team allowed in the operator's
    # configuration instead of the IAM tag (IAM wildcards * and ? only).
    allowed_user_globs: tuple[str, ...] = ()
    operator_namespace: str = "keyrotor-system"
    service_account: str = "keyrotor"
    oidc_provider: str = PLACEHOLDER_OIDC
    eks_cluster_name: str | None = None  # default: cluster_name
    event_mode: bool = False  # keyrotor run --event-mode: the rule and the queue below
    event_queue_arn: str | None = None  # --event-queue-url: the user's queue, used as it is

    def __post_init__(self) -> None:
        if not (self.user_path.startswith("/") and self.user_path.endswith("/")):
            raise ValueError(f"IAM path {self.user_path!r} must begin and end with '/'")
        for glob in self.allowed_user_globs:
            if not glob or "[" in glob or "]" in glob:
                raise ValueError(f"--allow user glob {glob!r}: IAM matches * and ? only; use those")
        for key in self.kms_keys:
            if not _is_kms_key_arn(key):
                raise ValueError(
                    f"KMS key {key!r}: give the key's ARN (arn:<partition>:kms:<region>:"
                    f"<account>:key/<id>)"
                )

    @property
    def secret_prefix(self) -> str:
        return self.prefix or secret_prefix(self.cluster_name)

    @property
    def created_role(self) -> bool:
        return not self.lambda_role_arn

    def _arn(self, service: str, resource: str, *, region: bool = True) -> str:
        where = self.region if region else ""
        return f"arn:{self.partition}:{service}:{where}:{self.account_id}:{resource}"

    @property
    def secrets_arn(self) -> str:
        # Secrets Manager appends "-" and six random characters to a secret's name.
        return self._arn("secretsmanager", f"secret:{self.secret_prefix}*")

    @property
    def function_arn(self) -> str:
        return self._arn("lambda", f"function:{function_name(self.cluster_name)}")

    @property
    def role_arn(self) -> str:
        return self.lambda_role_arn or self._arn(
            "iam", f"role/{role_name(self.cluster_name)}", region=False
        )

    @property
    def boundary_arn(self) -> str:
        return self._arn("iam", f"policy/{boundary_name(self.cluster_name)}", region=False)

    @property
    def users_arn(self) -> str:
        return self._arn("iam", f"user{self.user_path}*", region=False)

    @property
    def event_rule_arn(self) -> str:
        return self._arn("events", f"rule/keyrotor-{self.cluster_name}-secrets")

    @property
    def event_queue(self) -> str:
        return self.event_queue_arn or self._arn("sqs", f"keyrotor-{self.cluster_name}-events")

    @property
    def log_group_arn(self) -> str:
        return self._arn("logs", f"log-group:/aws/lambda/{function_name(self.cluster_name)}")


def _is_kms_key_arn(text: str) -> bool:
    parts = text.split(":", 5)
    return (
        len(parts) == 6
        and parts[0] == "arn"
        and parts[2] == "kms"
        and bool(parts[3])
        and bool(parts[4])
        and parts[5].startswith("key/")
        and len(parts[5]) > len("key/")
    )


def _statement(
    sid: str, actions: list[str], resources: list[str] | str, **condition: Any
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions) if len(actions) > 1 else actions[0],
        "Resource": resources,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": list(statements)}


def _user_statements(
    p: PolicyParams, sid: str, actions: list[str], condition: dict[str, Any]
) -> list[dict[str, Any]]:
    """Users an administrator marked with the keyrotor.io/namespaces tag; and, when the operator
    has --allow rules, the users those rules name (without the tag)."""
    marked = {k: dict(v) for k, v in condition.items()}
    marked.setdefault("Null", {})[f"iam:ResourceTag/{NAMESPACES_TAG}"] = "false"
    statements = [_statement(sid, actions, p.users_arn, **marked)]
    if p.allowed_user_globs:
        arns = [p._arn("iam", f"user{p.user_path}{g}", region=False) for g in p.allowed_user_globs]
        statements.append(
            _statement(f"{sid}AllowedByRule", actions, sorted(set(arns)), **condition)
        )
    return statements


def _kms_through_secrets_manager(p: PolicyParams) -> dict[str, Any]:
    return {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{p.region}.amazonaws.com"},
        "StringLike": {"kms:EncryptionContext:SecretARN": p.secrets_arn},
    }


# --- the operator ----------------------------------------------------------------------------


def operator_policy(p: PolicyParams) -> dict[str, Any]:
    statements = [
        _statement(
            "ReadInstallationSecrets",
            [
                "secretsmanager:DescribeSecret",
                "secretsmanager:GetSecretValue",
                "secretsmanager:ListSecretVersionIds",
            ],
            p.secrets_arn,
        ),
        _statement(
            "CreateInstallationSecretsTaggedAsItsOwn",
            ["secretsmanager:CreateSecret"],
            p.secrets_arn,
            **_with_kms_key_rule(
                p,
                {
                    "StringEquals": {f"aws:RequestTag/{TAG_CLUSTER}": p.cluster_name},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(SECRET_TAG_KEYS)},
                },
            ),
        ),
        _statement(
            "TagInstallationSecretsWithKeyrotorTagsOnly",
            ["secretsmanager:TagResource"],
            p.secrets_arn,
            **{
                "ForAllValues:StringEquals": {"aws:TagKeys": list(SECRET_TAG_KEYS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
        _statement(
            "ManageInstallationSecrets",
            ["secretsmanager:CancelRotateSecret", "secretsmanager:RestoreSecret"],
            p.secrets_arn,
        ),
        _statement(
            "ClearOnlyAwspendingOfInstallationSecrets",
            ["secretsmanager:UpdateSecretVersionStage"],
            p.secrets_arn,
            StringEquals={"secretsmanager:VersionStage": "AWSPENDING"},
        ),
        _statement(
            "DeleteInstallationSecretsOnlyWithARecoveryWindow",
            ["secretsmanager:DeleteSecret"],
            p.secrets_arn,
            BoolIfExists={"secretsmanager:ForceDeleteWithoutRecovery": "false"},
        ),
        _statement(
            "RotateInstallationSecretsWithItsOwnFunctionOnly",
            ["secretsmanager:RotateSecret"],
            p.secrets_arn,
            ArnEqualsIfExists={"secretsmanager:RotationLambdaARN": p.function_arn},
        ),
        # ListSecrets has no resource type: AWS allows only "*". It returns metadata (names,
        # tags, version stages), never values; the operator filters by its installation tag.
        _statement("ListSecretsCannotBeScoped", ["secretsmanager:ListSecrets"], "*"),
        # Dead-key detection reads IAM's credential report (keyrotor.aws.credential_report):
        # every user's key states in one call. Neither action has a resource type: only "*".
        _statement(
            "CredentialReportCannotBeScoped",
            ["iam:GenerateCredentialReport", "iam:GetCredentialReport"],
            "*",
        ),
        _statement(
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
        _statement(
            "LetOnlySecretsManagerInvokeIt",
            ["lambda:AddPermission"],
            p.function_arn,
            StringEquals={"lambda:Principal": "secretsmanager.amazonaws.com"},
        ),
        # Taking a permission away grants nothing (and its request names no principal).
        _statement("RemoveAnInvokePermission", ["lambda:RemovePermission"], p.function_arn),
        _statement(
            "PassTheRotationRoleToLambdaOnly",
            ["iam:PassRole"],
            p.role_arn,
            StringEquals={"iam:PassedToService": "lambda.amazonaws.com"},
        ),
        # Reading any user under the path lets the operator say why an object is refused
        # (no such user, not marked for this namespace); it reveals no secret. ListAccessKeys
        # (key ids, states, dates): a mirrored key's CreateDate is how the credential report
        # knows it (keyrotor.aws.credential_report.key_created). Not conditioned on the tag: a
        # user deleted meanwhile has no tags, and must answer NoSuchEntity, not AccessDenied.
        _statement(
            "ReadUsers", ["iam:GetUser", "iam:ListUserTags", "iam:ListAccessKeys"], p.users_arn
        ),
        *_user_statements(
            p,
            "HandlePreviousKeysOfMarkedUsersOnly",
            ["iam:UpdateAccessKey", "iam:DeleteAccessKey"],
            {},
        ),
        *_user_statements(
            p,
            "ClaimMarkedUsersWithItsClaimTagsOnly",
            ["iam:TagUser", "iam:UntagUser"],
            {
                "ForAllValues:StringEquals": {"aws:TagKeys": list(CLAIM_TAG_KEYS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
    ]
    if p.created_role:
        boundary = {"ArnEquals": {"iam:PermissionsBoundary": p.boundary_arn}}
        statements += [
            _statement("ReadTheRotationRole", ["iam:GetRole", "iam:GetRolePolicy"], p.role_arn),
            _statement(
                "WriteTheRotationRoleOnlyWithItsBoundary",
                ["iam:CreateRole", "iam:PutRolePolicy"],
                p.role_arn,
                **boundary,
            ),
            _statement(
                "TagTheRotationRoleWithKeyrotorTagsOnly",
                ["iam:TagRole"],
                p.role_arn,
                **{
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(RESOURCE_TAG_KEYS)},
                    "Null": {"aws:TagKeys": "false"},
                },
            ),
        ]
    if p.kms_keys:
        statements += [
            # UpdateSecret is called only to move a secret to an allowed key.
            _statement(
                "MoveInstallationSecretsToAllowedKmsKeysOnly",
                ["secretsmanager:UpdateSecret"],
                p.secrets_arn,
                StringEquals={"secretsmanager:KmsKeyId": list(p.kms_keys)},
            ),
            _statement(
                "UseAllowedKmsKeysThroughSecretsManagerOnly",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                list(p.kms_keys),
                **_kms_through_secrets_manager(p),
            ),
        ]
    if p.event_mode:
        statements += _event_mode_statements(p)
    return _document(*statements)


def _event_mode_statements(p: PolicyParams) -> list[dict[str, Any]]:
    """The rule that sends this installation's Secrets Manager events to its queue, and the
    queue (keyrotor.aws.eventing)."""
    rule = _statement(
        "EnsureItsOwnEventRule",
        ["events:DescribeRule", "events:ListTargetsByRule", "events:PutRule", "events:PutTargets"],
        p.event_rule_arn,
    )
    consume = ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
    if p.event_queue_arn:  # the user's queue: read and consume it, nothing else
        return [rule, _statement("ConsumeTheGivenEventQueue", consume, p.event_queue)]
    ensure = ["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:SetQueueAttributes"]
    return [rule, _statement("EnsureAndConsumeItsOwnEventQueue", consume + ensure, p.event_queue)]


def _with_kms_key_rule(p: PolicyParams, condition: dict[str, Any]) -> dict[str, Any]:
    """CreateSecret names no KMS key, or an allowed one."""
    if p.kms_keys:
        return {**condition, "StringEqualsIfExists": {"secretsmanager:KmsKeyId": list(p.kms_keys)}}
    return {**condition, "Null": {"secretsmanager:KmsKeyId": "true"}}


# --- the rotation Lambda -----------------------------------------------------------------------


def _lambda_statements(p: PolicyParams) -> list[dict[str, Any]]:
    return [
        _statement(
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
        *_user_statements(
            p,
            "ManageAccessKeysOfMarkedUsersOnly",
            ["iam:GetUser", "iam:ListAccessKeys", "iam:CreateAccessKey", "iam:DeleteAccessKey"],
            {},
        ),
        _statement("CreateItsOwnLogGroup", ["logs:CreateLogGroup"], p.log_group_arn),
        _statement(
            "WriteItsOwnLogs",
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            f"{p.log_group_arn}:log-stream:*",
        ),
    ]


def lambda_role_policy(p: PolicyParams) -> dict[str, Any]:
    statements = _lambda_statements(p)
    if p.kms_keys:
        statements.append(
            _statement(
                "UseAllowedKmsKeysThroughSecretsManagerOnly",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                list(p.kms_keys),
                **_kms_through_secrets_manager(p),
            )
        )
    return _document(*statements)


def permissions_boundary(p: PolicyParams) -> dict[str, Any]:
    statements = _lambda_statements(p)
    statements.append(
        _statement(
            "KmsThroughSecretsManagerForInstallationSecretsOnly",
            ["kms:Decrypt", "kms:GenerateDataKey"],
            p._arn("kms", "key/*"),
            **_kms_through_secrets_manager(p),
        )
    )
    return _document(*statements)


def lambda_trust_policy(p: PolicyParams) -> dict[str, Any]:
    return _document(
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
    return _document(
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
    return _document(
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


def documents(p: PolicyParams) -> dict[str, dict[str, Any]]:
    """Every IAM document of one installation, by name (see the module docstring)."""
    return {
        OPERATOR: operator_policy(p),
        LAMBDA_ROLE: lambda_role_policy(p),
        LAMBDA_TRUST: lambda_trust_policy(p),
        BOUNDARY: permissions_boundary(p),
        IRSA_TRUST: irsa_trust_policy(p),
        POD_IDENTITY_TRUST: pod_identity_trust_policy(p),
    }


def render(document: dict[str, Any]) -> str:
    """The text form used for files and for comparing with what AWS holds."""
    return json.dumps(document, indent=2) + "\n"


def actions_of(document: dict[str, Any]) -> set[str]:
    """Every action a document grants (for figures and tests)."""
    found: set[str] = set()
    for statement in document["Statement"]:
        action = statement.get("Action", [])
        found.update([action] if isinstance(action, str) else action)
    return found
