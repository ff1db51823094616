"""``keyrotor policy``: print the IAM documents of one installation (keyrotor.aws.policies).

Every flag of ``keyrotor run`` that changes a document reads the same ``KEYROTOR_*`` variable, so
``keyrotor policy`` run with the operator's environment prints what that operator needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from keyrotor.aws import policies
from keyrotor.settings import NAME_RE, AllowRule, SettingsError, env, env_flag, env_list
from keyrotor.shards import SHARD_NAME_RE

# deploy/examples/iam/: the documents for the kustomize base's installation (cluster my-cluster,
# us-east-1), placeholders for the account and the OIDC provider. A test keeps them in step.
EXAMPLE_PARAMS = policies.PolicyParams(cluster_name="my-cluster", region="us-east-1")
EXAMPLE_GIVEN_ROLE = "arn:aws:iam::ACCOUNT_ID:role/my-keyrotor-rotation-role"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "policy",
        help="print the IAM policies to install (operator, Lambda role, trust, boundary)",
        description=(
            "Print the IAM documents of one keyrotor installation as JSON: the operator's "
            "policy, the rotation Lambda role's policy and trust policy, the permissions "
            "boundary the operator creates that role with, and the trust policy of the "
            "operator's own role for IRSA or EKS Pod Identity. Each grants only what keyrotor "
            "calls, on this installation's resources. Without --document, all of them, as one "
            "JSON object keyed by name."
        ),
    )
    parser.add_argument(
        "--document",
        choices=policies.DOCUMENT_NAMES,
        help="print only this document (ready for aws iam create-policy --policy-document)",
    )
    parser.add_argument(
        "--cluster-name",
        default=env("CLUSTER_NAME", "default"),
        help="the installation's --cluster-name (names the secrets, the Lambda and its role)",
    )
    parser.add_argument(
        "--account-id", default=policies.PLACEHOLDER_ACCOUNT, help="the AWS account id"
    )
    parser.add_argument(
        "--partition", default="aws", help="the AWS partition (aws, aws-cn, aws-us-gov)"
    )
    parser.add_argument(
        "--region", default=env("REGION", "us-east-1"), help="the region the operator uses"
    )
    parser.add_argument(
        "--secret-prefix",
        default=None,
        help="the Secrets Manager name prefix (default keyrotor/<cluster-name>/)",
    )
    parser.add_argument(
        "--lambda-role-arn",
        default=env("LAMBDA_ROLE_ARN"),
        help="given-role mode: the operator uses this role and gets no IAM role-writing action",
    )
    _add_mode_arguments(parser)
    _add_identity_arguments(parser)


def _add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """The installation's mode: KMS keys, --allow rules, event mode, as keyrotor run has them."""
    parser.add_argument(
        "--kms-key",
        action="append",
        default=None,
        metavar="KEY_ARN",
        help="a KMS key objects may use (repeatable; as keyrotor run --kms-key)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="NAMESPACE:USER_GLOB",
        help="as keyrotor run --allow: the users it names may be rotated without the "
        "keyrotor.io/namespaces tag (repeatable; IAM wildcards * and ? only)",
    )
    parser.add_argument(
        "--event-mode",
        action=argparse.BooleanOptionalAction,
        default=env_flag("EVENT_MODE"),
        help="as keyrotor run --event-mode: add the EventBridge rule and the SQS queue",
    )
    parser.add_argument(
        "--event-queue-url",
        default=env("EVENT_QUEUE_URL"),
        help="as keyrotor run --event-queue-url: grant consuming that queue instead of "
        "creating keyrotor-<cluster-name>-events",
    )
    parser.add_argument(
        "--event-delivery",
        choices=["queue", "push"],
        default=env("EVENT_DELIVERY", "queue"),
        help="as keyrotor run --event-delivery: push adds the connection and the API destination "
        "(and passing --event-push-role-arn to EventBridge) instead of the queue",
    )
    parser.add_argument(
        "--event-push-role-arn",
        default=env("EVENT_PUSH_ROLE_ARN"),
        help="as keyrotor run --event-push-role-arn (the event-push-role and event-push-trust "
        "documents are that role's)",
    )
    parser.add_argument(
        "--shard",
        action="append",
        default=None,
        help="as keyrotor run --shard: event mode's rule and queue of this shard (repeatable, "
        "for one role that several shards share)",
    )


def _add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """Whose users, which operator identity, and where the documents go."""
    parser.add_argument(
        "--user-path",
        default="/",
        help="IAM path of the users keyrotor may rotate, e.g. /keyrotor/ (default: any path)",
    )
    parser.add_argument(
        "--operator-namespace", default="keyrotor-system", help="the operator's namespace"
    )
    parser.add_argument(
        "--service-account", default="keyrotor", help="the operator's ServiceAccount"
    )
    parser.add_argument(
        "--oidc-provider",
        default=policies.PLACEHOLDER_OIDC,
        help="IRSA: the cluster's OIDC issuer without https:// "
        "(aws eks describe-cluster --query cluster.identity.oidc.issuer)",
    )
    parser.add_argument(
        "--eks-cluster-name",
        default=None,
        help="EKS Pod Identity: the EKS cluster's name (default: --cluster-name)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="write each document to DIR/<name>.json instead of printing",
    )


def params_from_args(args: argparse.Namespace) -> policies.PolicyParams:
    if not NAME_RE.match(args.cluster_name):
        raise ValueError(
            f"--cluster-name {args.cluster_name!r}: use 1-40 lowercase letters, digits and '-'"
        )
    kms_keys = args.kms_key if args.kms_key is not None else env_list("KMS_KEY")
    allow = args.allow if args.allow is not None else env_list("ALLOW")
    try:
        rules = [AllowRule.parse(rule) for rule in allow]
    except SettingsError as exc:
        raise ValueError(str(exc)) from None
    return policies.PolicyParams(
        cluster_name=args.cluster_name,
        region=args.region,
        account_id=args.account_id,
        partition=args.partition,
        prefix=args.secret_prefix or None,
        lambda_role_arn=args.lambda_role_arn or None,
        kms_keys=tuple(kms_keys),
        user_path=args.user_path,
        allowed_user_globs=tuple(rule.user_glob for rule in rules),
        operator_namespace=args.operator_namespace,
        service_account=args.service_account,
        oidc_provider=args.oidc_provider,
        eks_cluster_name=args.eks_cluster_name or None,
        event_mode=bool(args.event_mode),
        event_queue_arn=_queue_arn(args.event_queue_url, args.partition),
        shards=tuple(_shards(args)),
        event_push=args.event_delivery == "push",
        event_push_role_arn=args.event_push_role_arn or None,
    )


def _shards(args: argparse.Namespace) -> list[str]:
    shards = args.shard if args.shard is not None else env_list("SHARD")
    for shard in shards:
        if not SHARD_NAME_RE.match(shard):
            raise ValueError(f"--shard {shard!r}: use 1-30 lowercase letters, digits and '-'")
    return list(shards)


def _queue_arn(url: str | None, partition: str) -> str | None:
    """https://sqs.<region>.amazonaws.com/<account>/<name> -> the queue's ARN."""
    if not url:
        return None
    parts = url.rstrip("/").split("/")
    host = parts[2] if len(parts) > 2 else ""
    if len(parts) != 5 or not host.startswith("sqs."):
        raise ValueError(f"--event-queue-url {url!r}: expected https://sqs.REGION.../ACCOUNT/NAME")
    region = host.split(".")[1]
    return f"arn:{partition}:sqs:{region}:{parts[3]}:{parts[4]}"


def main(args: argparse.Namespace) -> int:
    try:
        params = params_from_args(args)
    except ValueError as exc:
        print(f"keyrotor policy: {exc}", file=sys.stderr)
        return 2
    docs = policies.documents(params)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        names = [args.document] if args.document else list(docs)
        for name in names:
            (args.output_dir / f"{name}.json").write_text(policies.render(docs[name]))
        return 0
    if args.document:
        sys.stdout.write(policies.render(docs[args.document]))
    else:
        sys.stdout.write(json.dumps(docs, indent=2) + "\n")
    return 0


def example_files() -> dict[str, dict[str, Any]]:
    """deploy/examples/iam/, by file name."""
    created = policies.documents(EXAMPLE_PARAMS)
    given = policies.documents(
        policies.PolicyParams(
            cluster_name=EXAMPLE_PARAMS.cluster_name,
            region=EXAMPLE_PARAMS.region,
            lambda_role_arn=EXAMPLE_GIVEN_ROLE,
        )
    )
    files = {f"{name}.json": document for name, document in created.items()}
    files["operator-given-role.json"] = given[policies.OPERATOR]
    return files


def write_examples(directory: Path) -> None:
    """Regenerate deploy/examples/iam/ (``python -m keyrotor.policy_command DIR``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, document in example_files().items():
        (directory / name).write_text(policies.render(document))


if __name__ == "__main__":
    write_examples(Path(sys.argv[1]))
