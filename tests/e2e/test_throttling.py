"""AWS throttling is retried with backoff (botocore's standard retry mode), not reported."""

from __future__ import annotations

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def test_throttled_calls_are_retried(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    faults = keyrotor.aws.faults
    # Two throttled answers in a row for the secret's creation and for its first rotation request,
    # one lost (throttled after it took effect) for the user lookup.
    faults.fail("CreateSecret", error="Throttling", times=2, service="secretsmanager")
    faults.fail("RotateSecret", error="Throttling", times=2, service="secretsmanager")
    faults.fail("GetUser", when="after", error="Throttling", service="iam")
    try:
        keyrotor.create(ns, "app", {"iamUser": user})
        obj = keyrotor.wait_ready(ns, "app")
        fired = list(faults.fired)
    finally:
        faults.clear()
    assert len(fired) == 5, fired
    reasons = keyrotor.event_reasons(ns, "app")
    assert "AwsError" not in reasons and "AccessDenied" not in reasons
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    assert data["AWS_ACCESS_KEY_ID"] == obj["status"]["accessKeyId"]
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
    secrets = keyrotor.aws.client("secretsmanager").list_secrets(
        Filters=[{"Key": "tag-value", "Values": [obj["metadata"]["uid"]]}]
    )["SecretList"]
    assert len(secrets) == 1
