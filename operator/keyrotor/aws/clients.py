"""boto3 clients, made once per process and shared (clients are thread-safe; sessions are not).

Endpoints and credentials come from boto3's own chain: ``AWS_ENDPOINT_URL`` (and the per-service
variants), IRSA, EKS Pod Identity, environment variables. Throttling is retried by botocore's
``standard`` retry mode with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sts import STSClient

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6}, user_agent_extra="keyrotor")


@dataclass(frozen=True)
class AwsClients:
    iam: IAMClient
    sts: STSClient
    secretsmanager: SecretsManagerClient
    lambda_: LambdaClient
    region: str

    @classmethod
    def create(cls, region: str | None = None) -> AwsClients:
        session = boto3.session.Session(region_name=region)
        name = session.region_name or "us-east-1"
        return cls(
            iam=session.client("iam", config=RETRY_CONFIG),
            sts=session.client("sts", region_name=name, config=RETRY_CONFIG),
            secretsmanager=session.client("secretsmanager", region_name=name, config=RETRY_CONFIG),
            lambda_=session.client("lambda", region_name=name, config=RETRY_CONFIG),
            region=name,
        )


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    """An AWS error as one line: code and AWS's own message (which never holds secret values)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "")
        return f"{operation}: {error.get('Code', '')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}"


ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
)
