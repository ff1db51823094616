"""``--lambda-role-arn``: a pre-existing execution role is used, none is created."""

from __future__ import annotations

import json

import pytest

from keyrotor_sandbox.aws import ACCOUNT_ID
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

ROLE_NAME = "platform-owned-keyrotor-role"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE_NAME}"
KEYROTOR_ARGS = ("--lambda-role-arn", ROLE_ARN)


def test_given_role_is_used_and_no_role_is_created(keyrotor: Harness) -> None:
    iam = keyrotor.aws.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    status = keyrotor.wait_ready(ns, "app")["status"]

    function = keyrotor.aws.client("lambda").get_function(FunctionName=status["lambdaArn"])
    assert function["Configuration"]["Role"] == ROLE_ARN
    own_role = f"keyrotor-{keyrotor.cluster_name}-rotation"
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert own_role not in roles
    assert iam.list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == []
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
