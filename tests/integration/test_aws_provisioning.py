"""The idempotent "ensure" functions of keyrotor.aws, against the AWS emulator over HTTP."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from keyrotor.aws import credential_report, iam, rotation_function, secrets
from keyrotor.aws.lambda_package import (
    build_zip,
    code_sha256,
    handler_source,
    rotation_lambda_package,
)
from keyrotor.model import TAG_UID
from keyrotor_sandbox.aws import AwsEmulator


@pytest.fixture
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"role": f"keyrotor-{suffix}-rotation", "function": f"keyrotor-{suffix}-rotation"}


def _policy(aws: AwsEmulator, function: str) -> dict:
    return iam.rotation_role_policy(
        partition="aws",
        region=aws.region,
        account_id=aws.account_id,
        prefix="keyrotor/c/",
        function_name=function,
    )


def test_lambda_role_is_created_once_and_corrected(aws: AwsEmulator, names: dict[str, str]) -> None:
    client = aws.client("iam")
    policy = _policy(aws, names["function"])
    arn = iam.ensure_lambda_role(client, role_name=names["role"], policy=policy)
    assert arn == iam.ensure_lambda_role(client, role_name=names["role"], policy=policy)
    role = client.get_role(RoleName=names["role"])["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    document = client.get_role_policy(RoleName=names["role"], PolicyName=iam.ROLE_POLICY_NAME)
    statements = {s["Sid"]: s for s in document["PolicyDocument"]["Statement"]}
    # Least privilege: Secrets Manager actions only on the installation's name prefix.
    assert statements["RotateInstallationSecrets"]["Resource"].endswith(":secret:keyrotor/c/*")
    assert "secretsmanager:DeleteSecret" not in statements["RotateInstallationSecrets"]["Action"]
    # Someone widens the inline policy: the next ensure puts ours back.
    client.put_role_policy(
        RoleName=names["role"],
        PolicyName=iam.ROLE_POLICY_NAME,
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    iam.ensure_lambda_role(client, role_name=names["role"], policy=policy)
    document = client.get_role_policy(RoleName=names["role"], PolicyName=iam.ROLE_POLICY_NAME)
    assert document["PolicyDocument"] == json.loads(json.dumps(policy))


def test_lambda_code_is_updated_only_when_the_handler_changed(
    aws: AwsEmulator, names: dict[str, str]
) -> None:
    role = iam.ensure_lambda_role(
        aws.client("iam"), role_name=names["role"], policy=_policy(aws, names["function"])
    )
    lam = aws.client("lambda")
    package = rotation_lambda_package()
    arn = rotation_function.ensure_rotation_lambda(
        lam, function_name=names["function"], role_arn=role, package=package
    )
    config = lam.get_function(FunctionName=names["function"])["Configuration"]
    assert config["CodeSha256"] == package.code_sha256
    assert config["Handler"] == "lambda_function.lambda_handler"
    assert config["Runtime"].startswith("python3")

    aws.calls.reset()
    assert (
        rotation_function.ensure_rotation_lambda(
            lam, function_name=names["function"], role_arn=role, package=package
        )
        == arn
    )
    operations = {call[1] for call in aws.calls.pairs()}
    assert "UpdateFunctionCode" not in operations and "CreateFunction" not in operations

    changed_source = handler_source() + b"\n# a changed handler\n"
    changed_zip = build_zip(changed_source)
    changed = replace(package, zip_bytes=changed_zip, code_sha256=code_sha256(changed_zip))
    aws.calls.reset()
    rotation_function.ensure_rotation_lambda(
        lam, function_name=names["function"], role_arn=role, package=changed
    )
    assert ("lambda", "UpdateFunctionCode") in aws.calls.pairs()
    assert (
        lam.get_function(FunctionName=names["function"])["Configuration"]["CodeSha256"]
        == changed.code_sha256
    )


def test_invoke_permission_has_a_source_account_condition(
    aws: AwsEmulator, names: dict[str, str]
) -> None:
    role = iam.ensure_lambda_role(
        aws.client("iam"), role_name=names["role"], policy=_policy(aws, names["function"])
    )
    lam = aws.client("lambda")
    rotation_function.ensure_rotation_lambda(
        lam, function_name=names["function"], role_arn=role, package=rotation_lambda_package()
    )
    for _ in range(2):  # idempotent
        rotation_function.ensure_invoke_permission(
            lam, function_name=names["function"], account_id=aws.account_id
        )
    statements = json.loads(lam.get_policy(FunctionName=names["function"])["Policy"])["Statement"]
    assert len(statements) == 1
    statement = statements[0]
    assert statement["Principal"] == {"Service": "secretsmanager.amazonaws.com"}
    assert aws.account_id in json.dumps(statement["Condition"])


def _ensure(aws: AwsEmulator, name: str, user: str, uid: str, kms: str | None = None):
    tags = {
        "keyrotor.io/cluster": "c",
        "keyrotor.io/namespace": "ns",
        "keyrotor.io/name": "app",
        "keyrotor.io/iam-user": user,  # the rotation Lambda refuses a secret without it
        TAG_UID: uid,
    }
    sm = aws.client("secretsmanager")
    secrets.create_managed_secret(
        sm, name=name, iam_user=user, tags=tags, owner_uid=uid, kms_key_id=kms
    )
    observed = secrets.describe(sm, name)
    assert observed is not None
    missing = {k: v for k, v in tags.items() if observed.tags.get(k) != v}
    secrets.adopt_secret(
        sm, secret_id=observed.arn, add_tags=missing, restore=observed.deleted, kms_key_id=kms
    )
    return secrets.describe(sm, name)


def test_secret_is_created_tagged_and_holds_only_the_user(aws: AwsEmulator, iam_user: str) -> None:
    name = f"keyrotor/c/ns/{uuid.uuid4().hex[:8]}"
    kms = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    observed = _ensure(aws, name, iam_user, "uid-1", kms)
    again = _ensure(aws, name, iam_user, "uid-1", kms)
    assert again.arn == observed.arn
    sm = aws.client("secretsmanager")
    described = sm.describe_secret(SecretId=name)
    assert (
        described["KmsKeyId"] in (kms, f"arn:aws:kms:{aws.region}:{aws.account_id}:key/{kms}")
        or kms in described["KmsKeyId"]
    )
    assert {t["Key"]: t["Value"] for t in described["Tags"]}[TAG_UID] == "uid-1"
    assert json.loads(sm.get_secret_value(SecretId=name)["SecretString"]) == {"username": iam_user}
    assert len(sm.list_secret_version_ids(SecretId=name)["Versions"]) == 1


def test_create_is_idempotent_and_a_secret_scheduled_for_deletion_is_restored(
    aws: AwsEmulator, iam_user: str
) -> None:
    name = f"keyrotor/c/ns/{uuid.uuid4().hex[:8]}"
    first = _ensure(aws, name, iam_user, "uid-1")
    # Created by another object meanwhile: the create is no error, the secret is left as it was
    # (the planner decides from its tags whether it is this object's).
    secrets.create_managed_secret(
        aws.client("secretsmanager"),
        name=name,
        iam_user=iam_user,
        tags={TAG_UID: "uid-2"},
        owner_uid="uid-2",
        kms_key_id=None,
    )
    assert secrets.describe(aws.client("secretsmanager"), name).tags[TAG_UID] == "uid-1"
    assert first.tags[TAG_UID] == "uid-1"
    secrets.schedule_deletion(aws.client("secretsmanager"), name, 7)
    secrets.schedule_deletion(aws.client("secretsmanager"), name, 7)  # already scheduled: fine
    assert secrets.describe(aws.client("secretsmanager"), name).deleted
    restored = _ensure(aws, name, iam_user, "uid-1")
    assert not restored.deleted


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            {"ScheduleExpression": "rate(30 days)", "Duration": "2h"},
            {"ScheduleExpression": "rate(30 days)", "Duration": "2h"},
        ),
        ({"ScheduleExpression": "rate(4 hours)"}, {"ScheduleExpression": "rate(4 hours)"}),
        ({"ScheduleExpression": "cron(0 4 1 * ? *)"}, {"ScheduleExpression": "cron(0 4 1 * ? *)"}),
    ],
)
def test_rotation_configuration(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str, rules: dict, expected: dict
) -> None:
    name = f"keyrotor/c/ns/{uuid.uuid4().hex[:8]}"
    observed = _ensure(aws, name, iam_user, "uid-1")
    sm = aws.client("secretsmanager")
    secrets.configure_rotation(
        sm,
        secret_id=observed.arn,
        lambda_arn=rotation_lambda_arn,
        rules=rules,
        rotate_immediately=False,
    )
    after = secrets.describe(sm, observed.arn)
    assert after.rotation_enabled and after.rotation_lambda_arn == rotation_lambda_arn
    assert {k: v for k, v in after.rotation_rules.items() if k in expected} == expected
    assert after.last_rotated is None and after.pending_versions == []  # configured, not rotated
    if expected["ScheduleExpression"].startswith("rate("):
        assert after.next_rotation is not None


def test_first_rotation_creates_a_managed_key_and_cancel_then_delete(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    name = f"keyrotor/c/ns/{uuid.uuid4().hex[:8]}"
    observed = _ensure(aws, name, iam_user, "uid-1")
    sm = aws.client("secretsmanager")
    secrets.configure_rotation(
        sm,
        secret_id=observed.arn,
        lambda_arn=rotation_lambda_arn,
        rules={"ScheduleExpression": "rate(30 days)"},
        rotate_immediately=True,
    )
    aws.wait_for_rotations(timeout=60)
    key = secrets.read_current_key(sm, observed.arn)
    assert key.username == iam_user and key.access_key_id.startswith("AKIA")
    assert key.secret_access_key not in repr(key)
    # The Lambda stored the key's CreateDate beside it: what ListAccessKeys would have said.
    assert key.key_created is not None
    listed = credential_report.key_created(aws.client("iam"), iam_user, key.access_key_id)
    assert credential_report.to_second(key.key_created) == listed
    after = secrets.describe(sm, observed.arn)
    assert after.current_version == key.version_id and after.last_rotated is not None
    assert [
        s
        for s in secrets.list_managed(sm, tag_key="keyrotor.io/cluster", tag_value="c")
        if s.arn == observed.arn
    ]
    secrets.cancel_rotation(sm, observed.arn)
    assert not secrets.describe(sm, observed.arn).rotation_enabled
    secrets.schedule_deletion(sm, observed.arn, 7)
    assert secrets.describe(sm, observed.arn).deleted


def test_lambda_role_is_created_with_the_permissions_boundary(
    aws: AwsEmulator, names: dict[str, str]
) -> None:
    client = aws.client("iam")
    boundary = client.create_policy(
        PolicyName=f"{names['role']}-boundary",
        PolicyDocument=json.dumps(_policy(aws, names["function"])),
    )["Policy"]["Arn"]
    policy = _policy(aws, names["function"])
    iam.ensure_lambda_role(client, role_name=names["role"], policy=policy, boundary_arn=boundary)
    role = client.get_role(RoleName=names["role"])["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary


def test_a_role_without_the_boundary_is_refused_before_anything_is_written(
    aws: AwsEmulator, names: dict[str, str]
) -> None:
    client = aws.client("iam")
    iam.ensure_lambda_role(client, role_name=names["role"], policy=_policy(aws, names["function"]))
    boundary = f"arn:aws:iam::{aws.account_id}:policy/{names['role']}-boundary"
    aws.calls.reset()
    with pytest.raises(iam.RoleBoundaryError, match="put-role-permissions-boundary"):
        iam.ensure_lambda_role(
            client,
            role_name=names["role"],
            policy={"Version": "2012-10-17", "Statement": []},
            boundary_arn=boundary,
        )
    assert [op for _, op in aws.calls.pairs()] == ["GetRole"]
