"""The one error taxonomy: what the adapters raise, and what each means for an object."""

from __future__ import annotations

import json
import logging

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from kubernetes.client import ApiException

from keyrotor import errors
from keyrotor.aws.clients import aws_errors, translate
from keyrotor.k8s.client import kube_errors
from keyrotor.model import Reason


def client_error(code: str, operation: str = "RotateSecret") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"}}, operation)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("AccessDeniedException", errors.AccessDeniedError),
        ("AccessDenied", errors.AccessDeniedError),
        ("ThrottlingException", errors.ThrottledError),
        ("Throttling", errors.ThrottledError),
        ("ResourceNotFoundException", errors.NotFoundError),
        ("NoSuchEntity", errors.NotFoundError),
        ("ResourceExistsException", errors.ConflictError),
        ("InvalidRequestException", errors.InvalidError),
        ("InternalFailure", errors.KeyrotorError),
    ],
)
def test_aws_errors_are_typed_with_awss_code_and_message(code: str, kind: type) -> None:
    translated = translate(client_error(code), "secretsmanager")
    assert type(translated) is kind
    assert str(translated) == f"RotateSecret: {code}: {code} happened"


def test_no_answer_from_aws_is_not_ready_yet() -> None:
    assert isinstance(translate(EndpointConnectionError(endpoint_url="x")), errors.NotReadyError)


def test_adapters_raise_the_taxonomy() -> None:
    @aws_errors("lambda")
    def call() -> None:
        raise client_error("ResourceNotFoundException")

    with pytest.raises(errors.NotFoundError) as raised:
        call()
    assert raised.value.service == "lambda"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (403, errors.AccessDeniedError),
        (429, errors.ThrottledError),
        (422, errors.InvalidError),
        (503, errors.NotReadyError),
    ],
)
def test_kubernetes_errors_are_typed_with_the_servers_reason_and_message(
    status: int, kind: type
) -> None:
    @kube_errors
    def call() -> None:
        error = ApiException(status=status, reason="Because")
        error.body = json.dumps({"message": 'metadata.labels: Invalid value: "-x"'})
        raise error

    with pytest.raises(kind) as raised:
        call()
    assert str(raised.value) == f'{status} Because: metadata.labels: Invalid value: "-x"'


@pytest.mark.parametrize(
    ("error", "reason", "retry", "suspect", "level"),
    [
        (errors.AccessDeniedError("x"), Reason.ACCESS_DENIED, errors.Retry.RECHECK, False, 30),
        (errors.ThrottledError("x"), Reason.AWS_ERROR, errors.Retry.BACKOFF, False, 20),
        (errors.NotReadyError("x"), Reason.AWS_ERROR, errors.Retry.BACKOFF, True, 20),
        (errors.NotFoundError("x"), Reason.AWS_ERROR, errors.Retry.BACKOFF, True, 30),
        (
            errors.ConflictError("x", service="kubernetes"),
            Reason.SYNC_FAILED,
            errors.Retry.BACKOFF,
            False,
            30,
        ),
        (
            errors.InvalidError("x", service="kubernetes"),
            Reason.SYNC_FAILED,
            errors.Retry.BACKOFF,
            False,
            30,
        ),
        (ValueError("key material?"), Reason.AWS_ERROR, errors.Retry.BACKOFF, False, 40),
    ],
)
def test_one_mapping_from_error_to_reason_message_retry(
    error: Exception, reason: str, retry: errors.Retry, suspect: bool, level: int
) -> None:
    failure = errors.failure_for(error)
    assert (failure.reason, failure.retry, failure.installation_suspect) == (
        reason,
        retry,
        suspect,
    )
    assert failure.log_level == level
    # Throttling and waits are not errors in the log; a bug's arguments never reach a message.
    assert failure.log_level < logging.ERROR or failure.message == "internal error: ValueError"
