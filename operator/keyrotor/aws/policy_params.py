"""What the IAM documents of keyrotor.aws.policies depend on (the installation, its mode),
the names they use, and the builders every document is made with."""

from __future__ import annotations

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
EVENT_PUSH_ROLE: Final = "event-push-role"
EVENT_PUSH_TRUST: Final = "event-push-trust"
DOCUMENT_NAMES: Final = (
    OPERATOR,
    LAMBDA_ROLE,
    LAMBDA_TRUST,
    BOUNDARY,
    IRSA_TRUST,
    POD_IDENTITY_TRUST,
    EVENT_PUSH_ROLE,
    EVENT_PUSH_TRUST,
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


def event_rule_name(cluster_name: str, shard: str = "") -> str:
    """Event mode's rule; each shard has its own (and its own queue), since every shard must see
    every event (``_`` is in no cluster name: no installation's names meet another's)."""
    return (
        f"keyrotor-{cluster_name}_{shard}-secrets" if shard else f"keyrotor-{cluster_name}-secrets"
    )


def event_queue_name(cluster_name: str, shard: str = "") -> str:
    return f"keyrotor-{cluster_name}_{shard}-events" if shard else f"keyrotor-{cluster_name}-events"


def event_push_name(cluster_name: str, shard: str = "") -> str:
    """Event push delivery's EventBridge connection and API destination (one name for both)."""
    return f"keyrotor-{cluster_name}_{shard}-push" if shard else f"keyrotor-{cluster_name}-push"


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
    shards: tuple[str, ...] = ()  # keyrotor run --shard: each shard's own rule and queue
    # keyrotor run --event-delivery push: EventBridge calls the operator through an API
    # destination (no queue); EventBridge invokes it with this role (the administrator's).
    event_push: bool = False
    event_push_role_arn: str | None = None

    def __post_init__(self) -> None:
        if not (self.user_path.startswith("/") and self.user_path.endswith("/")):
            raise ValueError(f"IAM path {self.user_path!r} must begin and end with '/'")
        for glob in self.allowed_user_globs:
            if not glob or "[" in glob or "]" in glob:
                raise ValueError(f"--allow user glob {glob!r}: IAM matches * and ? only; use those")
        for key in self.kms_keys:
            if not is_kms_key_arn(key):
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
    def event_rule_arns(self) -> list[str]:
        return [
            self._arn("events", f"rule/{event_rule_name(self.cluster_name, shard)}")
            for shard in self.shards or ("",)
        ]

    @property
    def event_queues(self) -> list[str]:
        if self.event_queue_arn:
            return [self.event_queue_arn]
        return [
            self._arn("sqs", event_queue_name(self.cluster_name, shard))
            for shard in self.shards or ("",)
        ]

    def _push_arns(self, kind: str) -> list[str]:
        """The connection or API destination of each shard, by name and as AWS names it once
        created (``<name>/<uuid>``)."""
        names = [event_push_name(self.cluster_name, shard) for shard in self.shards or ("",)]
        return [self._arn("events", f"{kind}/{n}{tail}") for n in names for tail in ("", "/*")]

    @property
    def event_push_connection_arns(self) -> list[str]:
        return self._push_arns("connection")

    @property
    def event_push_destination_arns(self) -> list[str]:
        return self._push_arns("api-destination")

    @property
    def event_push_role(self) -> str:
        """The role EventBridge invokes the API destination with (placeholder when not given)."""
        return self.event_push_role_arn or self._arn(
            "iam", f"role/keyrotor-{self.cluster_name}-event-push", region=False
        )

    @property
    def log_group_arn(self) -> str:
        return self._arn("logs", f"log-group:/aws/lambda/{function_name(self.cluster_name)}")


def is_kms_key_arn(text: str) -> bool:
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


def statement(
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


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": list(statements)}


def user_statements(
    p: PolicyParams, sid: str, actions: list[str], condition: dict[str, Any]
) -> list[dict[str, Any]]:
    """Users an administrator marked with the keyrotor.io/namespaces tag; and, when the operator
    has --allow rules, the users those rules name (without the tag)."""
    marked = {k: dict(v) for k, v in condition.items()}
    marked.setdefault("Null", {})[f"iam:ResourceTag/{NAMESPACES_TAG}"] = "false"
    statements = [statement(sid, actions, p.users_arn, **marked)]
    if p.allowed_user_globs:
        arns = [p._arn("iam", f"user{p.user_path}{g}", region=False) for g in p.allowed_user_globs]
        statements.append(statement(f"{sid}AllowedByRule", actions, sorted(set(arns)), **condition))
    return statements


def kms_through_secrets_manager(p: PolicyParams) -> dict[str, Any]:
    return {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{p.region}.amazonaws.com"},
        "StringLike": {"kms:EncryptionContext:SecretARN": p.secrets_arn},
    }


def with_kms_key_rule(p: PolicyParams, condition: dict[str, Any]) -> dict[str, Any]:
    """CreateSecret names no KMS key, or an allowed one."""
    if p.kms_keys:
        return {**condition, "StringEqualsIfExists": {"secretsmanager:KmsKeyId": list(p.kms_keys)}}
    return {**condition, "Null": {"secretsmanager:KmsKeyId": "true"}}
