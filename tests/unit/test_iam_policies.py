"""The IAM documents of keyrotor.aws.policies: what they grant, to whom, on what, under which
conditions. These are the checks the AWS emulator cannot make (tags, boundary, PassedToService,
condition keys), plus an IAM policy analyser from PyPI (cloudsplaining, and the IAM reference
database it ships with, policy_sentry)."""

from __future__ import annotations

import ast
import fnmatch
import io
import json
import re
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

import botocore.session
import cloudsplaining.scan.policy_document as cloudsplaining
import pytest
from botocore import xform_name
from policy_sentry.querying.actions import get_action_data

from keyrotor import cli, policy_command
from keyrotor.aws import policies
from keyrotor.model import CLAIM_OBJECT_TAG, CLAIM_TAG, NAMESPACES_TAG

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "keyrotor"
EXAMPLES = REPO / "deploy" / "examples" / "iam"
ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
GIVEN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/platform/keyrotor-rotation"


def params(**changes: Any) -> policies.PolicyParams:
    base: dict[str, Any] = {"cluster_name": "prod", "region": "eu-west-1", "account_id": ACCOUNT}
    return policies.PolicyParams(**{**base, **changes})


CREATED = params(kms_keys=(KEY,))
EVENTS = params(kms_keys=(KEY,), event_mode=True)
GIVEN_QUEUE = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:platform-secret-events"
GIVEN = params(kms_keys=(KEY,), lambda_role_arn=GIVEN_ROLE)
PUSH_ROLE = f"arn:aws:iam::{ACCOUNT}:role/platform/keyrotor-prod-event-push"
PUSH = params(kms_keys=(KEY,), event_mode=True, event_push=True, event_push_role_arn=PUSH_ROLE)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def granting(document: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in statements(document) if action in as_list(s["Action"])]


def allows(document: dict[str, Any], action: str, resource: str) -> bool:
    """Action and resource match some statement (conditions aside: tested one by one below)."""
    return any(
        any(fnmatch.fnmatchcase(resource, pattern) for pattern in as_list(s["Resource"]))
        for s in granting(document, action)
    )


# --- grant only what the code calls --------------------------------------------------------------

SERVICES = {"iam": "iam", "sm": "secretsmanager", "secretsmanager": "secretsmanager"}
SERVICES |= {"lambda_": "lambda", "sts": "sts", "_iam_client": "iam"}
SERVICES |= {"sqs": "sqs", "events": "events"}  # event mode (keyrotor.aws.eventing)
# Calls that need more than their own action: tags given at creation, a role handed to Lambda.
IMPLIED = {
    "secretsmanager:CreateSecret": {"secretsmanager:TagResource"},
    "lambda:CreateFunction": {"lambda:TagResource", "iam:PassRole"},
    "lambda:UpdateFunctionConfiguration": {"iam:PassRole"},
    "iam:CreateRole": {"iam:TagRole"},
}
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}  # answered for any valid credentials


def _operations(service: str) -> dict[str, str]:
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):  # _iam_client(...).get_user(...)
        return _receiver(node.func)
    return None


def aws_actions_called(paths: list[Path]) -> set[str]:
    """Every AWS API the code calls, as IAM actions: client method calls and paginators, found
    by reading the source (a call on an unknown receiver with an AWS operation's name fails)."""
    operations = {service: _operations(service) for service in set(SERVICES.values())}
    every_name = {name for ops in operations.values() for name in ops}
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method, receiver = node.func.attr, _receiver(node.func.value)
            service = SERVICES.get(receiver or "")
            if method == "get_paginator" and service:
                assert isinstance(node.args[0], ast.Constant)
                method = str(node.args[0].value)
            if method not in every_name or method in ("get", "delete"):
                continue
            assert service, f"{path.name}:{node.lineno}: {receiver}.{method}: which AWS service?"
            if method not in operations[service]:
                continue  # e.g. Lambda's get_policy called on an iam client would be a bug
            found.add(f"{service}:{operations[service][method]}")
    implied = {extra for action in found for extra in IMPLIED.get(action, set())}
    return (found | implied) - NEEDS_NO_PERMISSION


def operator_sources() -> list[Path]:
    skip = {"rotation_lambda.py", "demo.py"}
    return [p for p in PACKAGE.rglob("*.py") if p.name not in skip and "sandbox" not in p.parts]


def test_the_operator_policy_grants_exactly_what_the_operator_calls() -> None:
    every_call = aws_actions_called(operator_sources())
    kms = {"kms:Decrypt", "kms:GenerateDataKey"}  # Secrets Manager's calls on our behalf
    # Event mode's actions only with --event-mode; only consuming a queue the user names;
    # push delivery: no queue, the connection and the API destination instead.
    event_mode = {a for a in every_call if a.startswith(("sqs:", "events:"))}
    push_only = {a for a in every_call if a.endswith(("Connection", "ApiDestination"))}
    queue = {a for a in every_call if a.startswith("sqs:")}
    assert push_only and queue
    assert policies.actions_of(policies.operator_policy(EVENTS)) == (every_call - push_only) | kms
    assert policies.actions_of(policies.operator_policy(PUSH)) == (every_call - queue) | kms
    ensure_queue = {"sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:SetQueueAttributes"}
    given_queue = policies.operator_policy(replace(EVENTS, event_queue_arn=GIVEN_QUEUE))
    assert policies.actions_of(given_queue) == (every_call - ensure_queue - push_only) | kms
    called = every_call - event_mode
    assert policies.actions_of(policies.operator_policy(CREATED)) == called | kms
    role_writing = {"iam:CreateRole", "iam:PutRolePolicy", "iam:TagRole"}
    role_reading = {"iam:GetRole", "iam:GetRolePolicy"}
    assert (
        policies.actions_of(policies.operator_policy(GIVEN))
        == (called - role_writing - role_reading) | kms
    )


def test_the_lambda_role_grants_exactly_what_the_rotation_function_calls() -> None:
    called = aws_actions_called([PACKAGE / "rotation_lambda.py"])
    logs = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
    kms = {"kms:Decrypt", "kms:GenerateDataKey"}
    assert policies.actions_of(policies.lambda_role_policy(CREATED)) == called | logs | kms
    assert policies.actions_of(policies.lambda_role_policy(params())) == called | logs


# --- on this installation's resources only -------------------------------------------------------


def other_installations_resources(account: str = ACCOUNT) -> list[tuple[str, str]]:
    """(action, ARN) pairs of installations 'prod-eu' and 'pro' (names that share a prefix)."""
    pairs = []
    for cluster in ("prod-eu", "pro", "production"):
        secret = f"arn:aws:secretsmanager:eu-west-1:{account}:secret:keyrotor/{cluster}/ns/x-AbCdEf"
        function = f"arn:aws:lambda:eu-west-1:{account}:function:keyrotor-{cluster}-rotation"
        role = f"arn:aws:iam::{account}:role/keyrotor-{cluster}-rotation"
        pairs += [
            ("secretsmanager:GetSecretValue", secret),
            ("secretsmanager:RotateSecret", secret),
            ("secretsmanager:PutSecretValue", secret),
            ("lambda:UpdateFunctionCode", function),
            ("lambda:AddPermission", function),
            ("iam:PutRolePolicy", role),
            ("iam:PassRole", role),
        ]
    return pairs


@pytest.mark.parametrize("mode", [CREATED, GIVEN], ids=["created-role", "given-role"])
def test_nothing_reaches_another_installation(mode: policies.PolicyParams) -> None:
    docs = policies.documents(mode)
    for name in (policies.OPERATOR, policies.LAMBDA_ROLE, policies.BOUNDARY):
        for action, arn in other_installations_resources():
            assert not allows(docs[name], action, arn), (name, action, arn)
    operator = docs[policies.OPERATOR]
    own_secret = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:keyrotor/prod/ns/x-AbCdEf"
    assert allows(operator, "secretsmanager:RotateSecret", own_secret)
    assert allows(operator, "lambda:UpdateFunctionCode", CREATED.function_arn)
    # Another account's resources are out of reach as well.
    for name in (policies.OPERATOR, policies.LAMBDA_ROLE):
        assert not allows(
            docs[name], "secretsmanager:GetSecretValue", own_secret.replace(ACCOUNT, "999999999999")
        )


@pytest.mark.parametrize(
    "mode", [CREATED, GIVEN, EVENTS], ids=["created-role", "given-role", "event-mode"]
)
def test_only_list_secrets_has_an_unscoped_resource(mode: policies.PolicyParams) -> None:
    # These actions have no resource type: AWS allows only "*".
    unscoped = [
        "secretsmanager:ListSecrets",
        ["iam:GenerateCredentialReport", "iam:GetCredentialReport"],
    ]
    for name, document in policies.documents(mode).items():
        for statement in statements(document):
            for resource in as_list(statement.get("Resource", [])):
                if resource == "*":
                    assert name == policies.OPERATOR
                    assert statement["Action"] in unscoped
                else:
                    assert ACCOUNT in resource and "keyrotor-*" not in resource, resource


# --- conditions the emulator does not evaluate ---------------------------------------------------


def test_given_role_mode_has_no_role_writing_action() -> None:
    operator = policies.operator_policy(GIVEN)
    iam_actions = {a for a in policies.actions_of(operator) if a.startswith("iam:")}
    assert not {a for a in iam_actions if "Role" in a} - {"iam:PassRole"}
    assert not any(a.startswith(("iam:Attach", "iam:Create", "iam:Put")) for a in iam_actions)
    (pass_role,) = granting(operator, "iam:PassRole")
    assert pass_role["Resource"] == GIVEN_ROLE


def test_created_role_is_written_only_on_its_exact_name_and_only_with_the_boundary() -> None:
    operator = policies.operator_policy(CREATED)
    role = f"arn:aws:iam::{ACCOUNT}:role/keyrotor-prod-rotation"
    boundary = f"arn:aws:iam::{ACCOUNT}:policy/keyrotor-prod-rotation-boundary"
    for action in ("iam:CreateRole", "iam:PutRolePolicy"):
        (statement,) = granting(operator, action)
        assert statement["Resource"] == role
        assert statement["Condition"] == {"ArnEquals": {"iam:PermissionsBoundary": boundary}}
    (tag_role,) = granting(operator, "iam:TagRole")
    assert tag_role["Condition"]["ForAllValues:StringEquals"] == {
        "aws:TagKeys": ["app.kubernetes.io/managed-by"]
    }
    for forbidden in (
        "iam:AttachRolePolicy",
        "iam:PutRolePermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
        "iam:UpdateAssumeRolePolicy",
        "iam:CreatePolicy",
        "iam:CreatePolicyVersion",
    ):
        assert not granting(operator, forbidden)


def test_the_role_is_passed_to_lambda_only() -> None:
    for mode in (CREATED, GIVEN):
        (statement,) = granting(policies.operator_policy(mode), "iam:PassRole")
        assert statement["Condition"] == {
            "StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}
        }


def test_only_secrets_manager_may_be_allowed_to_invoke_the_function() -> None:
    operator = policies.operator_policy(CREATED)
    (add,) = granting(operator, "lambda:AddPermission")
    assert add["Condition"] == {
        "StringEquals": {"lambda:Principal": "secretsmanager.amazonaws.com"}
    }
    assert add["Resource"] == CREATED.function_arn
    (remove,) = granting(operator, "lambda:RemovePermission")
    assert remove["Resource"] == CREATED.function_arn and "Condition" not in remove


def test_allow_rules_name_users_without_the_tag() -> None:
    """--allow NAMESPACE:USER_GLOB is the operator's other way to mark users: the same user
    actions on the users the globs name, without the tag condition; nothing else widens."""
    ruled = params(allowed_user_globs=("team-a-*", "svc-?"))
    arns = [f"arn:aws:iam::{ACCOUNT}:user/svc-?", f"arn:aws:iam::{ACCOUNT}:user/team-a-*"]
    for document in (policies.operator_policy(ruled), policies.lambda_role_policy(ruled)):
        extra = [s for s in statements(document) if s["Sid"].endswith("AllowedByRule")]
        assert extra and all(s["Resource"] == arns for s in extra)
        for statement in extra:
            twin = next(
                t for t in statements(document) if t["Sid"] + "AllowedByRule" == statement["Sid"]
            )
            assert twin["Action"] == statement["Action"]
            assert NAMESPACES_TAG not in json.dumps(statement.get("Condition", {}))
    (claims,) = [
        s
        for s in statements(policies.operator_policy(ruled))
        if s["Sid"] == "ClaimMarkedUsersWithItsClaimTagsOnlyAllowedByRule"
    ]
    assert claims["Condition"]["ForAllValues:StringEquals"] == {
        "aws:TagKeys": [CLAIM_TAG, CLAIM_OBJECT_TAG]
    }
    with pytest.raises(ValueError, match=r"\* and \?"):
        params(allowed_user_globs=("team-[ab]",))
    printed = json.loads(
        run_cli("--cluster-name", "prod", "--allow", "team-a:team-a-*", "--document", "lambda-role")
    )
    assert "arn:aws:iam::ACCOUNT_ID:user/team-a-*" in json.dumps(printed)


def test_secrets_rotate_only_with_this_installations_function() -> None:
    (statement,) = granting(policies.operator_policy(CREATED), "secretsmanager:RotateSecret")
    assert statement["Condition"] == {
        "ArnEqualsIfExists": {"secretsmanager:RotationLambdaARN": CREATED.function_arn}
    }


def test_secrets_are_deleted_only_with_a_recovery_window_and_only_awspending_is_moved() -> None:
    operator = policies.operator_policy(CREATED)
    (delete,) = granting(operator, "secretsmanager:DeleteSecret")
    assert delete["Condition"] == {
        "BoolIfExists": {"secretsmanager:ForceDeleteWithoutRecovery": "false"}
    }
    (stage,) = granting(operator, "secretsmanager:UpdateSecretVersionStage")
    assert stage["Condition"] == {"StringEquals": {"secretsmanager:VersionStage": "AWSPENDING"}}


def test_user_writes_only_on_users_an_administrator_marked() -> None:
    marked = {f"iam:ResourceTag/{NAMESPACES_TAG}": "false"}
    lambda_role = policies.lambda_role_policy(CREATED)
    for action in ("iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys"):
        (statement,) = granting(lambda_role, action)
        assert statement["Condition"] == {"Null": marked}
    operator = policies.operator_policy(CREATED)
    for action in ("iam:UpdateAccessKey", "iam:DeleteAccessKey", "iam:TagUser", "iam:UntagUser"):
        (statement,) = granting(operator, action)
        assert statement["Condition"]["Null"][f"iam:ResourceTag/{NAMESPACES_TAG}"] == "false"
    (claims,) = granting(operator, "iam:TagUser")
    # Only the claim tags: never keyrotor.io/namespaces, the tag that decides tenancy.
    assert claims["Condition"]["ForAllValues:StringEquals"] == {
        "aws:TagKeys": [CLAIM_TAG, CLAIM_OBJECT_TAG]
    }
    assert claims["Condition"]["Null"]["aws:TagKeys"] == "false"
    assert not granting(operator, "iam:CreateAccessKey")  # only the Lambda mints keys


def test_an_iam_path_narrows_every_user_statement() -> None:
    narrowed = params(user_path="/keyrotor/")
    for document in (policies.operator_policy(narrowed), policies.lambda_role_policy(narrowed)):
        for statement in statements(document):
            if ":user/" in json.dumps(statement["Resource"]):
                assert statement["Resource"] == f"arn:aws:iam::{ACCOUNT}:user/keyrotor/*"
    with pytest.raises(ValueError, match="begin and end"):
        params(user_path="keyrotor")


def test_created_secrets_carry_the_installation_tag_and_only_keyrotor_tags() -> None:
    operator = policies.operator_policy(params())
    (create,) = granting(operator, "secretsmanager:CreateSecret")
    assert create["Condition"]["StringEquals"] == {"aws:RequestTag/keyrotor.io/cluster": "prod"}
    assert (
        "app.kubernetes.io/managed-by"
        in create["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
    )
    # No KMS key allowed: no CreateSecret with a key, and no UpdateSecret at all.
    assert create["Condition"]["Null"] == {"secretsmanager:KmsKeyId": "true"}
    assert not granting(operator, "secretsmanager:UpdateSecret")


def test_kms_keys_are_allowed_per_installation_through_secrets_manager_only() -> None:
    via = {
        "StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"},
        "StringLike": {"kms:EncryptionContext:SecretARN": CREATED.secrets_arn},
    }
    for document in (policies.operator_policy(CREATED), policies.lambda_role_policy(CREATED)):
        (statement,) = granting(document, "kms:Decrypt")
        assert statement["Resource"] == [KEY]
        assert statement["Condition"] == via
        assert "kms:GenerateDataKey" in statement["Action"]
    operator = policies.operator_policy(CREATED)
    (update,) = granting(operator, "secretsmanager:UpdateSecret")
    assert update["Condition"] == {"StringEquals": {"secretsmanager:KmsKeyId": [KEY]}}
    (create,) = granting(operator, "secretsmanager:CreateSecret")
    assert create["Condition"]["StringEqualsIfExists"] == {"secretsmanager:KmsKeyId": [KEY]}
    for document in (policies.operator_policy(params()), policies.lambda_role_policy(params())):
        assert not any(a.startswith("kms:") for a in policies.actions_of(document))
    with pytest.raises(ValueError, match="key's ARN"):
        params(kms_keys=("alias/team-a",))


def test_the_boundary_covers_the_role_and_nothing_else() -> None:
    role, boundary = policies.lambda_role_policy(CREATED), policies.permissions_boundary(CREATED)
    assert policies.actions_of(role) == policies.actions_of(boundary)
    for statement in statements(role):
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                assert allows(boundary, action, resource), (action, resource)
    # Allowing another key later needs no new boundary; it reaches only installation secrets.
    (kms,) = granting(boundary, "kms:Decrypt")
    assert kms["Resource"] == f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/*"
    assert kms["Condition"]["StringLike"] == {
        "kms:EncryptionContext:SecretARN": CREATED.secrets_arn
    }


def test_trust_policies_name_exactly_who_may_assume() -> None:
    docs = policies.documents(
        params(oidc_provider="https://oidc.eks.eu-west-1.amazonaws.com/id/AB")
    )
    (lambda_trust,) = statements(docs[policies.LAMBDA_TRUST])
    assert lambda_trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    (irsa,) = statements(docs[policies.IRSA_TRUST])
    provider = "oidc.eks.eu-west-1.amazonaws.com/id/AB"
    assert irsa["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"}
    assert irsa["Condition"]["StringEquals"] == {
        f"{provider}:sub": "system:serviceaccount:keyrotor-system:keyrotor",
        f"{provider}:aud": "sts.amazonaws.com",
    }
    (pod_identity,) = statements(docs[policies.POD_IDENTITY_TRUST])
    assert pod_identity["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert pod_identity["Condition"]["StringEquals"] == {
        "aws:RequestTag/eks-cluster-name": "prod",
        "aws:RequestTag/kubernetes-namespace": "keyrotor-system",
        "aws:RequestTag/kubernetes-service-account": "keyrotor",
    }


def test_other_partitions_and_regions() -> None:
    china = policies.documents(params(partition="aws-cn", region="cn-north-1"))
    text = json.dumps(china)
    assert "arn:aws:" not in text and "arn:aws-cn:secretsmanager:cn-north-1:" in text


# --- IAM policy analysers from PyPI --------------------------------------------------------------

IDENTITY_DOCUMENTS = (policies.OPERATOR, policies.LAMBDA_ROLE, policies.BOUNDARY)


def _condition_key_known(action: str, key: str) -> bool:
    """The key applies to the action (templates such as ``iam:ResourceTag/${TagKey}`` match
    any tag); global ``aws:`` keys apply to every action."""
    service, name = action.split(":")
    rows = get_action_data(service, name).get(service) or []
    assert rows, f"{action} is not an IAM action"
    if key.startswith("aws:"):
        return True
    for known in {k for row in rows for k in row["condition_keys"]}:
        pattern = re.sub(r"\\\$\\\{[^}]+\\\}", ".+", re.escape(known))
        if re.fullmatch(pattern, key, flags=re.IGNORECASE):
            return True
    return False


def _arn_formats(action: str) -> list[str]:
    service, name = action.split(":")
    return [row["resource_arn_format"] for row in get_action_data(service, name)[service]]


def _arn_matches_format(arn: str, pattern: str) -> bool:
    if pattern == "*":
        return arn == "*"
    regex = re.sub(r"\\\$\\\{[^}]+\\\}", ".+", re.escape(pattern))
    return re.fullmatch(regex, arn.replace("*", "x")) is not None


@pytest.mark.parametrize(
    "mode",
    [CREATED, GIVEN, EVENTS, PUSH],
    ids=["created-role", "given-role", "event-mode", "event-push"],
)
def test_actions_condition_keys_and_resources_are_valid_for_each_action(
    mode: policies.PolicyParams,
) -> None:
    """Checked against the IAM reference shipped with policy_sentry (cloudsplaining's database):
    every action exists, every condition key applies to every action of its statement (or is
    a global aws: key), and every resource ARN has the form of a resource type of the action."""
    for name in IDENTITY_DOCUMENTS:
        for statement in statements(policies.documents(mode)[name]):
            keys = {k for by_key in statement.get("Condition", {}).values() for k in by_key}
            for action in as_list(statement["Action"]):
                unknown = {k for k in keys if not _condition_key_known(action, k)}
                assert not unknown, (name, statement["Sid"], action, unknown)
                for arn in as_list(statement["Resource"]):
                    formats = _arn_formats(action)
                    assert any(_arn_matches_format(arn, f) for f in formats), (action, arn)


@pytest.mark.parametrize(
    "mode",
    [CREATED, GIVEN, EVENTS, PUSH],
    ids=["created-role", "given-role", "event-mode", "event-push"],
)
def test_cloudsplaining_finds_no_unrestricted_escalation_or_resource(
    mode: policies.PolicyParams,
) -> None:
    for name in IDENTITY_DOCUMENTS:
        document = cloudsplaining.PolicyDocument(policies.documents(mode)[name])
        assert document.allows_privilege_escalation == [], name
        assert document.permissions_management_without_constraints == [], name
        assert document.write_actions_without_constraints == [], name
        assert document.tagging_actions_without_constraints == [], name
        assert document.all_allowed_unrestricted_actions == [], name
        assert document.credentials_exposure == [], name


# cloudsplaining's strict mode also flags statements scoped by ARN and conditions. What it finds
# there is the job itself; each finding and what bounds it:
BOUNDED_ESCALATIONS = {
    # The operator updates its own function's code and configuration and passes it its role:
    # the function runs with the rotation role, whose grants the boundary caps (created-role
    # mode) or the administrator wrote (given-role mode); it reaches no other installation.
    "EditExistingLambdaFunctionWithRole": "own function only, role capped by the boundary",
    "UpdateLambdaFunctionAndAddPermission": "AddPermission for secretsmanager.amazonaws.com only",
    "PassExistingRoleToNewLambdaThenAddPermission": "PassRole of its role, to Lambda only",
    # Created-role mode only: PutRolePolicy on its exact role, only while the role carries the
    # boundary (iam:PermissionsBoundary), which the operator cannot change or remove.
    "PutRolePolicy": "exact role, only with the boundary attached",
    # The rotation function's job: keys only for users an administrator marked.
    "CreateAccessKey": "users with the keyrotor.io/namespaces tag only",
    "CreateAndRotateAccessKey": "users with the keyrotor.io/namespaces tag only",
}


@pytest.mark.parametrize("mode", [CREATED, GIVEN], ids=["created-role", "given-role"])
def test_cloudsplaining_strict_findings_are_the_bounded_ones(mode: policies.PolicyParams) -> None:
    for name in IDENTITY_DOCUMENTS:
        document = cloudsplaining.PolicyDocument(
            policies.documents(mode)[name],
            flag_conditional_statements=True,
            flag_resource_arn_statements=True,
        )
        found = {e["type"] for e in document.allows_privilege_escalation}
        assert found <= set(BOUNDED_ESCALATIONS), (name, found - set(BOUNDED_ESCALATIONS))
    given_operator = cloudsplaining.PolicyDocument(
        policies.operator_policy(GIVEN),
        flag_conditional_statements=True,
        flag_resource_arn_statements=True,
    )
    assert "PutRolePolicy" not in {e["type"] for e in given_operator.allows_privilege_escalation}


def test_cloudsplaining_sees_what_the_landed_policies_allowed() -> None:
    """The analyser is not blind: the Lambda policy keyrotor shipped before (CreateAccessKey on
    every user, no condition) is an escalation once its resource is unrestricted."""
    broad = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iam:CreateAccessKey"], "Resource": "*"},
        ],
    }
    found = cloudsplaining.PolicyDocument(broad).allows_privilege_escalation
    assert {e["type"] for e in found} >= {"CreateAccessKey"}


# --- one source: keyrotor policy, deploy/examples, the operator ----------------------------------


def run_cli(*args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["policy", *args]) == 0
    return out.getvalue()


def test_keyrotor_policy_prints_the_documents() -> None:
    printed = json.loads(
        run_cli(
            "--cluster-name",
            "prod",
            "--account-id",
            ACCOUNT,
            "--region",
            "eu-west-1",
            "--kms-key",
            KEY,
        )
    )
    assert printed == policies.documents(CREATED)
    one = json.loads(
        run_cli(
            "--cluster-name",
            "prod",
            "--account-id",
            ACCOUNT,
            "--region",
            "eu-west-1",
            "--lambda-role-arn",
            GIVEN_ROLE,
            "--kms-key",
            KEY,
            "--document",
            "operator",
        )
    )
    assert one == policies.operator_policy(GIVEN)


def test_keyrotor_policy_reads_the_operators_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_CLUSTER_NAME", "prod")
    monkeypatch.setenv("KEYROTOR_REGION", "eu-west-1")
    monkeypatch.setenv("KEYROTOR_KMS_KEY", KEY)
    monkeypatch.setenv("KEYROTOR_LAMBDA_ROLE_ARN", GIVEN_ROLE)
    printed = json.loads(run_cli("--account-id", ACCOUNT, "--document", "operator"))
    assert printed == policies.operator_policy(GIVEN)


def test_keyrotor_policy_writes_files(tmp_path: Path) -> None:
    run_cli("--cluster-name", "prod", "--output-dir", str(tmp_path))
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(policies.DOCUMENT_NAMES)


def test_keyrotor_policy_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "--cluster-name", "Bad_Name"]) == 2
    assert cli.main(["policy", "--kms-key", "alias/x"]) == 2
    assert "key's ARN" in capsys.readouterr().err


def test_deploy_examples_are_generated_from_the_same_function() -> None:
    """Regenerate with: .venv/bin/python -m keyrotor.policy_command deploy/examples/iam"""
    files = policy_command.example_files()
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(files)
    for name, document in files.items():
        assert (EXAMPLES / name).read_text() == policies.render(document), name


def test_readme_install_section_uses_keyrotor_policy() -> None:
    readme = (REPO / "README.md").read_text()
    install = readme[readme.index("## Install") : readme.index("## Reference")]
    for document in (policies.OPERATOR, policies.BOUNDARY, policies.LAMBDA_ROLE):
        assert f"--document {document}" in install
    assert "deploy/examples/iam" in install


def test_the_operator_may_write_every_tag_it_puts_on_its_secrets() -> None:
    from keyrotor.model import MANAGED_BY_LABEL
    from keyrotor.refusals import KEYROTOR_TAGS

    assert {*KEYROTOR_TAGS, MANAGED_BY_LABEL} <= set(policies.SECRET_TAG_KEYS)


def test_event_mode_reaches_only_its_own_rule_and_queue() -> None:
    operator = policies.operator_policy(EVENTS)
    rule = f"arn:aws:events:eu-west-1:{ACCOUNT}:rule/keyrotor-prod-secrets"
    queue = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:keyrotor-prod-events"
    for action in (
        "events:PutRule",
        "events:PutTargets",
        "events:DescribeRule",
        "events:RemoveTargets",  # the other delivery's target, after a switch
    ):
        assert allows(operator, action, rule)
        assert not allows(operator, action, rule.replace("-prod-", "-prod-eu-"))
        assert not allows(operator, action, rule.replace("rule/", "rule/other-bus/"))
    for action in ("sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:ReceiveMessage"):
        assert allows(operator, action, queue)
        assert not allows(operator, action, queue.replace("-prod-", "-pro-"))
    # Nothing of event mode without it; a given queue is consumed, not created or changed.
    assert not {a for a in policies.actions_of(policies.operator_policy(CREATED))} & {
        "events:PutRule",
        "sqs:ReceiveMessage",
    }
    given = policies.operator_policy(replace(EVENTS, event_queue_arn=GIVEN_QUEUE))
    assert allows(given, "sqs:ReceiveMessage", GIVEN_QUEUE)
    assert not allows(given, "sqs:ReceiveMessage", queue)
    assert not granting(given, "sqs:SetQueueAttributes")


def test_policy_command_takes_event_mode_and_the_queue_url() -> None:
    args = cli.build_parser().parse_args(
        [
            "policy",
            "--cluster-name",
            "prod",
            "--region",
            "eu-west-1",
            "--account-id",
            ACCOUNT,
            "--event-mode",
            "--event-queue-url",
            f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/platform-secret-events",
        ]
    )
    p = policy_command.params_from_args(args)
    assert p.event_mode and p.event_queue_arn == GIVEN_QUEUE


def test_push_delivery_reaches_only_its_own_connection_destination_and_role() -> None:
    operator = policies.operator_policy(PUSH)
    base = f"arn:aws:events:eu-west-1:{ACCOUNT}"
    connection = f"{base}:connection/keyrotor-prod-push/0a1b2c3d-1111-2222-3333-444455556666"
    destination = f"{base}:api-destination/keyrotor-prod-push/0a1b2c3d-1111-2222-3333-4444555566"
    for action in ("events:CreateConnection", "events:UpdateConnection"):
        assert allows(operator, action, connection)
        assert allows(operator, action, connection.rsplit("/", 1)[0])  # before it exists
        assert not allows(operator, action, connection.replace("-prod-", "-prod-eu-"))
    for action in ("events:CreateApiDestination", "events:UpdateApiDestination"):
        assert allows(operator, action, destination)
        assert not allows(operator, action, destination.replace("-prod-", "-pro-"))
    for action in ("events:PutTargets", "events:RemoveTargets"):
        assert allows(operator, action, f"{base}:rule/keyrotor-prod-secrets")
        assert not allows(operator, action, f"{base}:rule/keyrotor-prod-eu-secrets")
        assert not allows(operator, action, f"{base}:rule/other-bus/keyrotor-prod-secrets")
    # No queue, and no action on the secret EventBridge keeps the token in.
    assert not {a for a in policies.actions_of(operator) if a.startswith("sqs:")}
    assert not allows(
        operator,
        "secretsmanager:GetSecretValue",
        f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:events!connection/keyrotor-prod-push/x",
    )
    # The push role is passed to EventBridge only; the rotation role still to Lambda only.
    passing = granting(operator, "iam:PassRole")
    by_role = {
        s["Resource"]: s["Condition"]["StringEquals"]["iam:PassedToService"] for s in passing
    }
    assert by_role[PUSH_ROLE] == "events.amazonaws.com"
    assert by_role[PUSH.role_arn] == "lambda.amazonaws.com"
    # The role EventBridge uses: invoke this destination only, assumed for this rule only.
    role = policies.event_push_role_policy(PUSH)
    assert policies.actions_of(role) == {"events:InvokeApiDestination"}
    assert allows(role, "events:InvokeApiDestination", destination)
    assert not allows(role, "events:InvokeApiDestination", destination.replace("-prod-", "-x-"))
    trust = policies.event_push_trust_policy(PUSH)["Statement"][0]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}
    assert trust["Condition"]["ArnEquals"]["aws:SourceArn"] == f"{base}:rule/keyrotor-prod-secrets"
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT


def test_push_delivery_documents_are_valid_iam_and_not_escalations() -> None:
    for document in (policies.operator_policy(PUSH), policies.event_push_role_policy(PUSH)):
        for statement in statements(document):
            keys = {k for by_key in statement.get("Condition", {}).values() for k in by_key}
            for action in as_list(statement["Action"]):
                assert not {k for k in keys if not _condition_key_known(action, k)}, action
                for arn in as_list(statement["Resource"]):
                    assert any(_arn_matches_format(arn, f) for f in _arn_formats(action)), arn
        analysed = cloudsplaining.PolicyDocument(document)
        assert analysed.allows_privilege_escalation == []
        assert analysed.all_allowed_unrestricted_actions == []
        assert analysed.credentials_exposure == []


def test_policy_command_takes_push_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_EVENT_PUSH_ROLE_ARN", PUSH_ROLE)
    monkeypatch.setenv("KEYROTOR_KMS_KEY", KEY)
    printed = json.loads(
        run_cli(
            "--cluster-name",
            "prod",
            "--region",
            "eu-west-1",
            "--account-id",
            ACCOUNT,
            "--event-mode",
            "--event-delivery",
            "push",
            "--document",
            "operator",
        )
    )
    assert printed == policies.operator_policy(PUSH)
