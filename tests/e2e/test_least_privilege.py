"""The operator and the rotation Lambda run with exactly the generated IAM documents, and the
AWS emulator evaluates them (fix 13 of keyrotor_sandbox.aws): every call the whole e2e suite
makes is allowed (tests.fixtures.operator.Harness.stop fails on any refusal), and a call on
another installation's secret, role or function, or on an unmarked user, is refused."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from keyrotor.aws import policies
from keyrotor.aws.lambda_package import HANDLER, rotation_lambda_package
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def _operator_client(keyrotor: Harness, service: str) -> Any:
    """A client with the operator's own credentials (what a compromised operator holds)."""
    return boto3.client(
        service,
        endpoint_url=keyrotor.aws.endpoint_url,
        region_name=keyrotor.aws.region,
        aws_access_key_id=keyrotor.operator_key[0],
        aws_secret_access_key=keyrotor.operator_key[1],
    )


def test_the_operator_and_the_lambda_hold_exactly_the_generated_documents(
    keyrotor: Harness,
) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.wait_ready(ns, "app")
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "1"})
    keyrotor.wait(
        lambda: (keyrotor.get(ns, "app") or {}).get("status", {}).get("rotateNowHandled") == "1",
        what="rotate-now handled",
    )
    keyrotor.wait_ready(ns, "app")

    params = keyrotor.policy_params([])
    iam = keyrotor.aws.client("iam")
    assert keyrotor.operator_user and keyrotor.operator_arn in keyrotor.aws.enforced
    assert iam.list_user_policies(UserName=keyrotor.operator_user)["PolicyNames"] == [
        "keyrotor-operator"
    ]
    assert (
        iam.list_attached_user_policies(UserName=keyrotor.operator_user)["AttachedPolicies"] == []
    )
    held = iam.get_user_policy(UserName=keyrotor.operator_user, PolicyName="keyrotor-operator")
    assert held["PolicyDocument"] == policies.operator_policy(params)

    role = iam.get_role(RoleName=policies.role_name(keyrotor.cluster_name))["Role"]
    assert role["Arn"] in keyrotor.aws.enforced
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == params.boundary_arn
    assert role["AssumeRolePolicyDocument"] == policies.lambda_trust_policy(params)
    inline = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policies.ROLE_POLICY_NAME)
    assert inline["PolicyDocument"] == policies.lambda_role_policy(params)
    # Both principals made their calls, and not one was refused.
    assert len(keyrotor.aws.rotations) and keyrotor.iam_denials() == []


def test_calls_outside_the_policy_are_refused(keyrotor: Harness) -> None:
    """What a compromised operator would try: another installation's secret, role and function,
    a key for a user nobody marked, a wider policy for its own role, a role without boundary."""
    admin = keyrotor.aws.client("iam")
    other = f"x{uuid.uuid4().hex[:7]}"
    secret = keyrotor.aws.client("secretsmanager").create_secret(
        Name=f"keyrotor/{other}/ns/app", SecretString="{}"
    )["ARN"]
    other_role = admin.create_role(
        RoleName=policies.role_name(other),
        AssumeRolePolicyDocument=json.dumps(
            policies.lambda_trust_policy(keyrotor.policy_params([]))
        ),
    )["Role"]["Arn"]
    keyrotor.aws.client("lambda").create_function(
        FunctionName=policies.function_name(other),
        Runtime="python3.12",
        Role=other_role,
        Handler=HANDLER,
        Code={"ZipFile": rotation_lambda_package().zip_bytes},
    )
    unmarked = keyrotor.iam_user()
    sm, iam = _operator_client(keyrotor, "secretsmanager"), _operator_client(keyrotor, "iam")
    lam = _operator_client(keyrotor, "lambda")
    wide = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
    )
    attempts = {
        "secretsmanager:GetSecretValue": lambda: sm.get_secret_value(SecretId=secret),
        "iam:PutRolePolicy": lambda: iam.put_role_policy(
            RoleName=policies.role_name(other), PolicyName="x", PolicyDocument=wide
        ),
        "lambda:UpdateFunctionCode": lambda: lam.update_function_code(
            FunctionName=policies.function_name(other), ZipFile=b"PK"
        ),
        "iam:CreateAccessKey": lambda: iam.create_access_key(UserName=unmarked),
        "iam:TagUser": lambda: iam.tag_user(
            UserName=unmarked, Tags=[{"Key": "keyrotor.io/namespaces", "Value": "*"}]
        ),
        "iam:CreateRole": lambda: iam.create_role(
            RoleName=policies.role_name(keyrotor.cluster_name) + "-2",
            AssumeRolePolicyDocument="{}",
        ),
    }
    keyrotor.allow_iam_denials = True  # from here on, refusals are what this test wants
    before = len(keyrotor.aws.denials_of(keyrotor.operator_arn or ""))
    for action, attempt in attempts.items():
        with pytest.raises(ClientError) as caught:
            attempt()
        assert caught.value.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException")
        assert action in str(caught.value), action
    refused = {d.action for d in keyrotor.aws.denials_of(keyrotor.operator_arn or "")[before:]}
    assert refused == set(attempts)


def test_the_lambda_cannot_rotate_another_installations_secret(keyrotor: Harness) -> None:
    """Even pointed at a secret of another installation (by someone who may call RotateSecret),
    the function's role cannot read it or make a key."""
    keyrotor.allow_iam_denials = True
    user = keyrotor.iam_user(namespaces="*")
    sm = keyrotor.aws.client("secretsmanager")
    arn = sm.create_secret(
        Name=f"keyrotor/x{uuid.uuid4().hex[:7]}/ns/app", SecretString=json.dumps({"username": user})
    )["ARN"]
    function_arn = keyrotor.policy_params([]).function_arn
    sm.rotate_secret(SecretId=arn, RotationLambdaARN=function_arn, RotateImmediately=True)
    keyrotor.aws.wait_for_rotations(timeout=60)
    assert keyrotor.aws.rotations_of(arn)[-1].succeeded is False
    assert keyrotor.user_keys(user) == {}
    refused = [
        d for d in keyrotor.aws.denials_of(keyrotor.lambda_role_arn or "") if d.resource == arn
    ]
    assert refused and refused[0].action == "secretsmanager:DescribeSecret"
