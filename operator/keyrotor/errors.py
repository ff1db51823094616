"""One error taxonomy for every path: adapters raise these, one function says what they mean.

The adapters in ``aws/`` and ``k8s/`` turn a boto3 ``ClientError`` or a Kubernetes
``ApiException`` into one of the types below (:func:`keyrotor.aws.clients.aws_errors`,
:func:`keyrotor.k8s.client.kube_errors`); :func:`failure_for` maps any exception to the reason,
message and retry an object reports. Messages carry AWS's or Kubernetes's own reason and message
(which never hold secret values), never only an exception class name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from keyrotor.model import Reason


class KeyrotorError(RuntimeError):
    """An error from AWS or Kubernetes, classified. ``service`` and ``operation`` say where."""

    def __init__(self, message: str, *, service: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.operation = operation


class NotFoundError(KeyrotorError):
    """Something the call needs does not exist (where absence is not the expected answer)."""


class ConflictError(KeyrotorError):
    """It exists and is not ours, or it changed under us (HTTP 409)."""


class AccessDeniedError(KeyrotorError):
    """keyrotor's identity lacks a permission: a person must grant it."""


class ThrottledError(KeyrotorError):
    """Rate limited after botocore's own retries: back off, nothing is broken."""


class NotReadyError(KeyrotorError):
    """Not yet: eventual consistency (a role just created), a server warming up."""


class InvalidError(KeyrotorError):
    """The request was refused as malformed (HTTP 400/422, AWS validation errors)."""


class Retry(Enum):
    RECHECK = "Recheck"  # a person must fix something: look again at the recheck interval
    BACKOFF = "Backoff"  # transient or unknown: exponential, capped, jittered per object


@dataclass(frozen=True)
class Failure:
    """What an error means for the object: its Ready reason, message and how to retry."""

    reason: str
    message: str
    retry: Retry
    installation_suspect: bool  # re-check the role, Lambda and permission before trying again
    log_level: int


def failure_for(exc: BaseException) -> Failure:
    """The one mapping from an exception to reason, message and retry, for every path."""
    message = str(exc)
    if isinstance(exc, AccessDeniedError):
        return Failure(
            Reason.ACCESS_DENIED,
            f"keyrotor is missing an AWS permission: {message}"
            if exc.service != "kubernetes"
            else f"keyrotor is missing a Kubernetes permission: {message}",
            Retry.RECHECK,
            installation_suspect=False,
            log_level=logging.WARNING,
        )
    if isinstance(exc, ThrottledError):
        return Failure(Reason.AWS_ERROR, message, Retry.BACKOFF, False, logging.INFO)
    if isinstance(exc, NotReadyError):
        return Failure(Reason.AWS_ERROR, message, Retry.BACKOFF, True, logging.INFO)
    if isinstance(exc, ConflictError) and exc.service != "kubernetes":
        return Failure(Reason.AWS_ERROR, message, Retry.BACKOFF, False, logging.WARNING)
    if isinstance(exc, NotFoundError):
        # Something the installation provides (the Lambda, its role) is gone: check it again.
        return Failure(Reason.AWS_ERROR, message, Retry.BACKOFF, True, logging.WARNING)
    if isinstance(exc, KeyrotorError):
        reason = Reason.SYNC_FAILED if exc.service == "kubernetes" else Reason.AWS_ERROR
        suspect = exc.service == "lambda"
        return Failure(reason, message, Retry.BACKOFF, suspect, logging.WARNING)
    # A bug, not an AWS or Kubernetes answer: the type only (arguments may hold key material).
    return Failure(
        Reason.AWS_ERROR,
        f"internal error: {type(exc).__name__}",
        Retry.BACKOFF,
        installation_suspect=False,
        log_level=logging.ERROR,
    )
