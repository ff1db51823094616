"""boto3 clients, made once per process and shared (clients are thread-safe; sessions are not).

Endpoints and credentials come from boto3's own chain: ``AWS_ENDPOINT_URL`` (and the per-service
variants), IRSA, EKS Pod Identity, environment variables. Every request first takes its turn in
the client-side rate limit of its API family (:mod:`keyrotor.aws.rate_limits`), so the operator
stays under AWS's quotas by waiting; throttling that happens anyway (other callers share the
quotas) is retried by botocore's ``standard`` retry mode with backoff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from keyrotor import errors
from keyrotor.aws.rate_limits import RateLimiter

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6}, user_agent_extra="keyrotor")
# A long poll holds the connection for up to 20 s: the read timeout must be longer.
LONG_POLL_CONFIG = RETRY_CONFIG.merge(Config(read_timeout=40))
DEFAULT_CONNECTIONS = 10  # botocore's own default pool size


@dataclass(frozen=True)
class AwsClients:
    iam: IAMClient
    sts: STSClient
    secretsmanager: SecretsManagerClient
    lambda_: LambdaClient
    region: str
    # Event mode only (made by create, which every operator process uses).
    sqs: SQSClient | None = None
    events: EventBridgeClient | None = None
    limiter: RateLimiter | None = None  # shared by every client above (made by create)

    @classmethod
    def create(
        cls,
        region: str | None = None,
        *,
        limiter: RateLimiter | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> AwsClients:
        """The operator's clients, all passing through one rate limiter (default rates unless
        given one); ``connections``: each client's HTTP connection pool (one per thread that may
        call at once)."""
        session = boto3.session.Session(region_name=region)
        name = session.region_name or "us-east-1"
        pool = Config(max_pool_connections=max(connections, DEFAULT_CONNECTIONS))
        config, long_poll = RETRY_CONFIG.merge(pool), LONG_POLL_CONFIG.merge(pool)
        limiter = limiter or RateLimiter()
        clients = cls(
            iam=session.client("iam", config=config),
            sts=session.client("sts", region_name=name, config=config),
            secretsmanager=session.client("secretsmanager", region_name=name, config=config),
            lambda_=session.client("lambda", region_name=name, config=config),
            region=name,
            sqs=session.client("sqs", region_name=name, config=long_poll),
            events=session.client("events", region_name=name, config=config),
            limiter=limiter,
        )
        for client in clients.all():
            limiter.install(client)
        return clients

    def all(self) -> tuple[Any, ...]:
        """Every client this holds."""
        made = (self.iam, self.sts, self.secretsmanager, self.lambda_, self.sqs, self.events)
        return tuple(client for client in made if client is not None)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, errors.KeyrotorError) and exc.__cause__ is not None:
        exc = exc.__cause__  # translated by an inner adapter
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
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NoSuchEntity", "NotFoundException"})
CONFLICT_CODES = frozenset({"ResourceConflictException", "ResourceExistsException"})
INVALID_CODES = frozenset(
    {"InvalidParameterException", "InvalidRequestException", "ValidationError", "MalformedPolicy"}
)


def translate(exc: BaseException, service: str = "") -> errors.KeyrotorError | None:
    """The taxonomy's type for an AWS error; None for anything that is not one."""
    if isinstance(exc, errors.KeyrotorError):
        return exc
    if isinstance(exc, BotoCoreError):  # no answer at all (connection, timeout): transient
        return errors.NotReadyError(f"AWS unreachable: {exc}")
    if not isinstance(exc, ClientError):
        return None
    code = error_code(exc)
    operation = getattr(exc, "operation_name", "")
    kind: type[errors.KeyrotorError] = errors.KeyrotorError
    if code in ACCESS_DENIED_CODES:
        kind = errors.AccessDeniedError
    elif code in THROTTLING_CODES:
        kind = errors.ThrottledError
    elif code in NOT_FOUND_CODES:
        kind = errors.NotFoundError
    elif code in CONFLICT_CODES:
        kind = errors.ConflictError
    elif code in INVALID_CODES:
        kind = errors.InvalidError
    return kind(error_message(exc), service=service, operation=operation)


P = ParamSpec("P")
R = TypeVar("R")


def aws_errors(service: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """An adapter's AWS errors leave it as the taxonomy's types (keyrotor.errors)."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except (ClientError, BotoCoreError) as exc:
                translated = translate(exc, service)
                if translated is None:
                    raise
                raise translated from exc

        return wrapper

    return decorate
