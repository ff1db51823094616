"""``--lambda-role-arn``: a pre-existing execution role is used, none is created."""

from __future__ import annotations

import json

import pytest

from keyrotor.aws import policies
from keyrotor_sandbox.aws import ACCOUNT_ID
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

ROLE_NAME = "platform-owned-keyrotor-role"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE_NAME}"
KEYROTOR_ARGS = ("--lambda-role-arn", ROLE_ARN)


def test_given_role_is_used_and_no_role_is_created(keyrotor: Harness) -> None:
    # The platform team makes the role from `keyrotor policy --lambda-role-arn ...
    # --document lambda-trust / lambda-role`; the operator's policy has no role-writing action.
    iam = keyrotor.aws.client("iam")
    params = keyrotor.policy_params(["--lambda-role-arn", ROLE_ARN])
    iam.create_role(
        RoleName=ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(policies.lambda_trust_policy(params)),
    )
    iam.put_role_policy(
        RoleName=ROLE_NAME,
        PolicyName="platform-owned",
        PolicyDocument=json.dumps(policies.lambda_role_policy(params)),
    )
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    status = keyrotor.wait_ready(ns, "app")["status"]

    function = keyrotor.aws.client("lambda").get_function(FunctionName=status["lambdaArn"])
    assert function["Configuration"]["Role"] == ROLE_ARN
    own_role = f"keyrotor-{keyrotor.cluster_name}-rotation"
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert own_role not in roles
    assert iam.list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == ["platform-owned"]
    operator_policy = iam.get_user_policy(
        UserName=keyrotor.operator_user or "", PolicyName="keyrotor-operator"
    )["PolicyDocument"]
    assert not {a for a in policies.actions_of(operator_policy) if "Role" in a} - {"iam:PassRole"}
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
