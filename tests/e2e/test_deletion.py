"""Deleting an AccessKeyRotation: deletionPolicy Retain and Delete, and the mirrored Secret goes
with its owner (the fixture's kube-controller-manager runs the garbage collector)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def _ready_object(keyrotor: Harness, spec_extra: dict) -> tuple[str, str, dict]:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, **spec_extra})
    status = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations(timeout=30)
    assert keyrotor.secret(ns, "app") is not None
    return ns, user, status


def _gone(keyrotor: Harness, ns: str) -> None:
    keyrotor.wait(lambda: keyrotor.get(ns, "app") is None, what="the object gone (finalizer done)")
    keyrotor.wait(
        lambda: keyrotor.secret(ns, "app") is None,
        timeout=90,
        what="the mirrored Secret garbage-collected with its owner",
    )


def test_retain_leaves_the_aws_secret_and_keys_and_cancels_rotation(keyrotor: Harness) -> None:
    ns, user, status = _ready_object(keyrotor, {"secretsManager": {"deletionPolicy": "Retain"}})
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    keys_before = keyrotor.user_keys(user)
    assert keys_before == {status["accessKeyId"]: "Active"}

    keyrotor.delete(ns, "app")
    _gone(keyrotor, ns)

    described = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=status["secretArn"])
    assert "DeletedDate" not in described
    # Nothing rotates unowned (issue 8, 1): the retained secret's schedule is cancelled.
    assert not described.get("RotationEnabled")
    assert keyrotor.user_keys(user) == keys_before
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
    events = [e for e in keyrotor.events(ns, "app") if e.reason == "SecretRetained"]
    assert events and events[0].type == "Normal"
    assert status["secretArn"] in events[0].message


def test_delete_schedules_deletion_and_cancels_rotation(keyrotor: Harness) -> None:
    ns, user, status = _ready_object(
        keyrotor, {"secretsManager": {"deletionPolicy": "Delete", "recoveryWindowDays": 9}}
    )
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))

    keyrotor.delete(ns, "app")
    _gone(keyrotor, ns)

    sm = keyrotor.aws.client("secretsmanager")
    described = sm.describe_secret(SecretId=status["secretArn"])
    assert "DeletedDate" in described
    in_window = described["DeletedDate"] - datetime.now(UTC)
    assert timedelta(days=8) < in_window <= timedelta(days=9)
    assert not described.get("RotationEnabled")
    assert "NextRotationDate" not in described
    assert [
        e.type for e in keyrotor.events(ns, "app") if e.reason == "SecretDeletionScheduled"
    ] == ["Normal"]
    # The key itself is not the deletion policy's business: it still works until rotated away.
    assert keyrotor.user_keys(user) == {data["AWS_ACCESS_KEY_ID"]: "Active"}
