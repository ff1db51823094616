"""Fix 12 of keyrotor_sandbox.aws: IAM authorization with resources and conditions, for the
principals a test names (enforce_iam). moto alone would allow each refused call below."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keyrotor.aws import policies
from keyrotor.aws.lambda_package import HANDLER, rotation_lambda_package
from keyrotor_sandbox.aws import AwsEmulator


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


class Identity:
    """An IAM user with one inline policy, its key, and its clients (enforced)."""

    def __init__(self, aws: AwsEmulator, policy: dict[str, Any], *, enforce: bool = True) -> None:
        self.aws = aws
        self.name = f"ident-{uuid.uuid4().hex[:8]}"
        iam = aws.client("iam")
        self.arn = str(iam.create_user(UserName=self.name)["User"]["Arn"])
        iam.put_user_policy(UserName=self.name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=self.name)["AccessKey"]
        self.key = (key["AccessKeyId"], key["SecretAccessKey"])
        if enforce:
            aws.enforce_iam(self.arn)

    def client(self, service: str) -> Any:
        return self.aws.client(
            service, aws_access_key_id=self.key[0], aws_secret_access_key=self.key[1]
        )


def allow(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]}


@pytest.fixture
def prefix(aws: AwsEmulator) -> Iterator[str]:
    yield f"keyrotor/{uuid.uuid4().hex[:6]}/"


def test_resources_are_matched(aws: AwsEmulator, prefix: str) -> None:
    sm = aws.client("secretsmanager")
    own = sm.create_secret(Name=f"{prefix}ns/a", SecretString="{}")["ARN"]
    other = sm.create_secret(Name=f"{prefix}x/../other-{uuid.uuid4().hex[:4]}", SecretString="{}")
    neighbour = sm.create_secret(Name=f"{prefix[:-1]}-eu/ns/a", SecretString="{}")["ARN"]
    arn = f"arn:aws:secretsmanager:{aws.region}:{aws.account_id}:secret:{prefix}ns/*"
    me = Identity(aws, allow({"Action": "secretsmanager:GetSecretValue", "Resource": arn}))
    mine = me.client("secretsmanager")
    assert mine.get_secret_value(SecretId=own)["ARN"] == own
    for refused in (neighbour, other["ARN"]):
        with pytest.raises(ClientError) as caught:
            mine.get_secret_value(SecretId=refused)
        assert _code(caught) == "AccessDeniedException"
        assert (
            f"is not authorized to perform: secretsmanager:GetSecretValue on resource: {refused}"
            in str(caught.value)
        )
    with pytest.raises(ClientError):
        mine.describe_secret(SecretId=own)  # another action
    assert [(d.action, d.resource) for d in aws.denials_of(me.arn)] == [
        ("secretsmanager:GetSecretValue", neighbour),
        ("secretsmanager:GetSecretValue", other["ARN"]),
        ("secretsmanager:DescribeSecret", own),
    ]
    # Not enforced: moto's default, everything goes.
    free = Identity(aws, allow({"Action": "sts:GetCallerIdentity", "Resource": "*"}), enforce=False)
    assert free.client("secretsmanager").get_secret_value(SecretId=neighbour)["ARN"] == neighbour


def test_user_tag_and_tag_key_conditions(aws: AwsEmulator) -> None:
    marked, unmarked = f"m-{uuid.uuid4().hex[:6]}", f"u-{uuid.uuid4().hex[:6]}"
    aws.create_iam_user(marked, {"keyrotor.io/namespaces": "a"})
    aws.create_iam_user(unmarked)
    me = Identity(
        aws,
        allow(
            {
                "Action": ["iam:TagUser", "iam:CreateAccessKey"],
                "Resource": f"arn:aws:iam::{aws.account_id}:user/*",
                "Condition": {
                    "Null": {"iam:ResourceTag/keyrotor.io/namespaces": "false"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["keyrotor.io/claimed-by"]},
                },
            }
        ),
    )
    iam = me.client("iam")
    iam.tag_user(UserName=marked, Tags=[{"Key": "keyrotor.io/claimed-by", "Value": "c/1"}])
    iam.create_access_key(UserName=marked)
    for call in (
        lambda: iam.tag_user(
            UserName=unmarked, Tags=[{"Key": "keyrotor.io/claimed-by", "Value": "x"}]
        ),
        lambda: iam.tag_user(
            UserName=marked, Tags=[{"Key": "keyrotor.io/namespaces", "Value": "*"}]
        ),
        lambda: iam.create_access_key(UserName=unmarked),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert _code(caught) == "AccessDenied"
    assert len(aws.denials_of(me.arn)) == 3


def test_pass_role_boundary_and_principal_conditions(aws: AwsEmulator) -> None:
    suffix = uuid.uuid4().hex[:6]
    p = policies.PolicyParams(
        cluster_name=f"c{suffix}", region=aws.region, account_id=aws.account_id
    )
    admin = aws.client("iam")
    boundary = policies.boundary_name(p.cluster_name)
    operator = Identity(aws, policies.operator_policy(p))
    iam = operator.client("iam")
    role = policies.role_name(p.cluster_name)
    trust = json.dumps(policies.lambda_trust_policy(p))
    with pytest.raises(ClientError) as caught:  # no boundary: refused
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
    assert _code(caught) == "AccessDenied"
    with pytest.raises(ClientError) as caught:  # a boundary that does not exist: IAM says so
        admin.create_role(
            RoleName=role, AssumeRolePolicyDocument=trust, PermissionsBoundary=p.boundary_arn
        )
    assert _code(caught) == "NoSuchEntity"
    admin.create_policy(
        PolicyName=boundary, PolicyDocument=json.dumps(policies.permissions_boundary(p))
    )
    role_arn = iam.create_role(
        RoleName=role, AssumeRolePolicyDocument=trust, PermissionsBoundary=p.boundary_arn
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=role,
        PolicyName="keyrotor-rotation",
        PolicyDocument=json.dumps(policies.lambda_role_policy(p)),
    )
    with pytest.raises(ClientError):  # another installation's role
        iam.put_role_policy(
            RoleName=f"keyrotor-x{suffix}-rotation", PolicyName="p", PolicyDocument="{}"
        )
    lam = operator.client("lambda")
    code = {"ZipFile": rotation_lambda_package().zip_bytes}
    function = policies.function_name(p.cluster_name)
    lam.create_function(
        FunctionName=function, Runtime="python3.12", Role=role_arn, Handler=HANDLER, Code=code
    )
    with pytest.raises(ClientError) as caught:  # passing another role: no iam:PassRole
        lam.update_function_configuration(
            FunctionName=function, Role=f"arn:aws:iam::{aws.account_id}:role/admin"
        )
    assert _code(caught) == "AccessDeniedException"
    lam.add_permission(
        FunctionName=function,
        StatementId="s",
        Action="lambda:InvokeFunction",
        Principal="secretsmanager.amazonaws.com",
    )
    with pytest.raises(ClientError):  # anyone else may not be allowed to invoke it
        lam.add_permission(
            FunctionName=function, StatementId="t", Action="lambda:InvokeFunction", Principal="*"
        )
    assert {d.action for d in aws.denials_of(operator.arn)} == {
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:PassRole",
        "lambda:AddPermission",
    }


def test_the_rotation_lambda_runs_as_its_role_within_the_boundary(aws: AwsEmulator) -> None:
    suffix = uuid.uuid4().hex[:6]
    p = policies.PolicyParams(
        cluster_name=f"c{suffix}", region=aws.region, account_id=aws.account_id
    )
    admin = aws.client("iam")
    admin.create_policy(
        PolicyName=policies.boundary_name(p.cluster_name),
        PolicyDocument=json.dumps(policies.permissions_boundary(p)),
    )
    role = admin.create_role(
        RoleName=policies.role_name(p.cluster_name),
        AssumeRolePolicyDocument=json.dumps(policies.lambda_trust_policy(p)),
        PermissionsBoundary=p.boundary_arn,
    )["Role"]
    # Someone widened the inline policy: the boundary still holds it to the installation.
    admin.put_role_policy(
        RoleName=role["RoleName"],
        PolicyName="wide",
        PolicyDocument=json.dumps(allow({"Action": "*", "Resource": "*"})),
    )
    aws.enforce_iam(role["Arn"])
    function = aws.client("lambda").create_function(
        FunctionName=policies.function_name(p.cluster_name),
        Runtime="python3.12",
        Role=role["Arn"],
        Handler=HANDLER,
        Code={"ZipFile": rotation_lambda_package().zip_bytes},
        Timeout=120,
    )["FunctionArn"]
    sm = aws.client("secretsmanager")
    results = {}
    for name, prefix, tags in (
        ("own", p.secret_prefix, {"keyrotor.io/namespaces": "*"}),
        ("unmarked user", p.secret_prefix, {}),
        ("other installation", f"keyrotor/other{suffix}/", {"keyrotor.io/namespaces": "*"}),
    ):
        user = f"u-{uuid.uuid4().hex[:8]}"
        aws.create_iam_user(user, tags)
        # The operator's tags: the function trusts them, not the value (rotation_lambda.py).
        arn = sm.create_secret(
            Name=f"{prefix}ns/{user}",
            SecretString=json.dumps({"username": user}),
            Tags=[
                {"Key": "keyrotor.io/iam-user", "Value": user},
                {"Key": "keyrotor.io/cluster", "Value": prefix.split("/")[1]},
            ],
        )["ARN"]
        sm.rotate_secret(
            SecretId=arn,
            RotationLambdaARN=function,
            RotationRules={"ScheduleExpression": "rate(30 days)"},
        )
        aws.wait_for_rotations(timeout=60)
        results[name] = aws.rotations_of(arn)[-1].succeeded
    assert results == {"own": True, "unmarked user": False, "other installation": False}
    refused = {(d.action, d.resource.split(":")[2]) for d in aws.denials_of(role["Arn"])}
    assert ("iam:ListAccessKeys", "iam") in refused  # the unmarked user
    assert ("secretsmanager:DescribeSecret", "secretsmanager") in refused  # the other prefix
