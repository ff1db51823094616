"""The shared rotation Lambda: the function and Secrets Manager's permission to invoke it."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Final

from keyrotor import errors
from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.aws.lambda_package import HANDLER, LambdaPackage
from keyrotor.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.type_defs import EnvironmentTypeDef

RUNTIME: Final = "python3.12"
TIMEOUT_SECONDS = 120  # testSecret waits for a new key to propagate
PERMISSION_STATEMENT_ID = "keyrotor-secretsmanager-invoke"
# A role created a moment ago may not be assumable by Lambda yet (IAM is eventually consistent).
_ROLE_NOT_READY = "cannot be assumed by Lambda"


@aws_errors("lambda")
def ensure_rotation_lambda(
    lambda_: LambdaClient,
    *,
    function_name: str,
    role_arn: str,
    package: LambdaPackage,
) -> str:
    """Create the function, or update its code only when the code hash differs. Returns its ARN."""
    env: EnvironmentTypeDef = {"Variables": {}}
    try:
        config = lambda_.get_function(FunctionName=function_name)["Configuration"]
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        try:
            created = lambda_.create_function(
                FunctionName=function_name,
                Runtime=RUNTIME,
                Role=role_arn,
                Handler=HANDLER,
                Code={"ZipFile": package.zip_bytes},
                Timeout=TIMEOUT_SECONDS,
                Environment=env,
                Description="keyrotor: rotates IAM user access keys for Secrets Manager",
                Tags={MANAGED_BY_LABEL: MANAGED_BY_VALUE},
            )
            return str(created["FunctionArn"])
        except Exception as create_exc:
            if _ROLE_NOT_READY in str(create_exc):
                raise errors.NotReadyError(
                    f"Lambda cannot assume role {role_arn} yet (a role just created)",
                    service="lambda",
                    operation="CreateFunction",
                ) from None
            if error_code(create_exc) != "ResourceConflictException":
                raise
            config = lambda_.get_function(FunctionName=function_name)["Configuration"]
    if config.get("CodeSha256") != package.code_sha256:
        lambda_.update_function_code(FunctionName=function_name, ZipFile=package.zip_bytes)
        _wait_updated(lambda_, function_name)
    if (
        config.get("Role") != role_arn
        or config.get("Handler") != HANDLER
        or config.get("Runtime") != RUNTIME
        or (config.get("Environment") or {}).get("Variables", {}) != env.get("Variables", {})
    ):
        lambda_.update_function_configuration(
            FunctionName=function_name,
            Role=role_arn,
            Handler=HANDLER,
            Runtime=RUNTIME,
            Timeout=TIMEOUT_SECONDS,
            Environment=env,
        )
    return str(config["FunctionArn"])


def _wait_updated(lambda_: LambdaClient, function_name: str, attempts: int = 30) -> None:
    for _ in range(attempts):
        status = lambda_.get_function_configuration(FunctionName=function_name)
        if status.get("LastUpdateStatus", "Successful") != "InProgress":
            return
        time.sleep(1)


@aws_errors("lambda")
def ensure_invoke_permission(lambda_: LambdaClient, *, function_name: str, account_id: str) -> None:
    """Secrets Manager may invoke the function, for this account's secrets only (SourceAccount)."""
    try:
        policy = json.loads(lambda_.get_policy(FunctionName=function_name)["Policy"])
        statements = policy.get("Statement", [])
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        statements = []
    for statement in statements:
        if statement.get("Sid") == PERMISSION_STATEMENT_ID:
            condition = json.dumps(statement.get("Condition", {}))
            if account_id in condition:
                return
            lambda_.remove_permission(
                FunctionName=function_name, StatementId=PERMISSION_STATEMENT_ID
            )
    try:
        lambda_.add_permission(
            FunctionName=function_name,
            StatementId=PERMISSION_STATEMENT_ID,
            Action="lambda:InvokeFunction",
            Principal="secretsmanager.amazonaws.com",
            SourceAccount=account_id,
        )
    except Exception as exc:
        if error_code(exc) != "ResourceConflictException":
            raise
