"""What every object of one installation shares in the AWS account: the rotation Lambda's role
and policy (unless given), the function, and Secrets Manager's permission to invoke it.

Ensured before the first object needs it, then known for ``installation_recheck`` seconds; a
failure that points at it (a function or role not found, a role not assumable yet) makes the next
decision ensure it again. Throttling does not: nothing is broken then.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from keyrotor import metrics
from keyrotor.aws import iam, policies, rotation_function
from keyrotor.aws.clients import AwsClients
from keyrotor.aws.lambda_package import rotation_lambda_package
from keyrotor.settings import Settings


@dataclass(frozen=True)
class Target:
    """Where the installation lives: the account and partition of the operator's identity."""

    account_id: str
    partition: str


class Installation:
    def __init__(self, settings: Settings, aws: AwsClients, target: Target) -> None:
        self._settings = settings
        self._aws = aws
        self._target = target
        self._lock = threading.Lock()
        self._lambda_arn: str | None = None
        self._checked_at = 0.0

    @property
    def target(self) -> Target:
        return self._target

    def known_lambda_arn(self) -> str | None:
        """The function's ARN while the last check is recent; None: ensure it first."""
        with self._lock:
            fresh = time.monotonic() - self._checked_at < self._settings.installation_recheck
            return self._lambda_arn if fresh else None

    def forget(self) -> None:
        with self._lock:
            self._lambda_arn = None

    def ensure(self) -> str:
        """Create or correct the role, function and permission; the function's ARN."""
        with self._lock:
            if self._lambda_arn is not None and (
                time.monotonic() - self._checked_at < self._settings.installation_recheck
            ):
                return self._lambda_arn
            self._lambda_arn = self._ensure()
            self._checked_at = time.monotonic()
            return self._lambda_arn

    def _ensure(self) -> str:
        settings, aws = self._settings, self._aws
        role_arn = settings.lambda_role_arn
        if not role_arn:
            # Exactly the documents `keyrotor policy` prints: the role is created with the
            # permissions boundary, which the operator's own policy requires.
            params = policies.PolicyParams(
                cluster_name=settings.cluster_name,
                region=aws.region,
                account_id=self._target.account_id,
                partition=self._target.partition,
                prefix=settings.secret_prefix,
                kms_keys=settings.kms_keys,
                allowed_user_globs=tuple(rule.user_glob for rule in settings.allow),
            )
            role_arn = iam.ensure_lambda_role(
                aws.iam,
                role_name=settings.lambda_role_name,
                policy=policies.lambda_role_policy(params),
                trust=policies.lambda_trust_policy(params),
                boundary_arn=params.boundary_arn,
            )
        lambda_arn = rotation_function.ensure_rotation_lambda(
            aws.lambda_,
            function_name=settings.lambda_function_name,
            role_arn=role_arn,
            package=rotation_lambda_package(),
        )
        rotation_function.ensure_invoke_permission(
            aws.lambda_,
            function_name=settings.lambda_function_name,
            account_id=self._target.account_id,
        )
        metrics.INSTALLATION_ENSURED.inc()
        return lambda_arn
