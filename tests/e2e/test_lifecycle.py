"""An AccessKeyRotation becomes a rotating key in Secrets Manager and a current Secret."""

from __future__ import annotations

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def test_object_becomes_ready_with_a_working_key(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, "rotation": {"interval": "30d", "window": "2h"}})
    obj = keyrotor.wait_ready(ns, "app")
    status = obj["status"]
    assert status["secretArn"].startswith("arn:aws:secretsmanager:")
    assert status["lambdaArn"].endswith(f"keyrotor-{keyrotor.cluster_name}-rotation")
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["effective"]["rotation"] == {
        "scheduleExpression": "rate(30 days)",
        "window": "2h",
    }
    assert obj["spec"] == {"iamUser": user, "rotation": {"interval": "30d", "window": "2h"}}
    secret = keyrotor.secret(ns, "app")
    assert secret is not None
    data = keyrotor.secret_data(secret)
    assert data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]
    assert secret.metadata.annotations["keyrotor.io/access-key-id"] == status["accessKeyId"]
    assert secret.metadata.annotations["keyrotor.io/version-id"] == status["versionId"]
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "keyrotor"
    assert secret.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    assert "[default]" in data["credentials"]
    assert data["AWS_SECRET_ACCESS_KEY"] in data["credentials"]
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    described = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=status["secretArn"])
    assert described["RotationEnabled"] is True
    assert described["RotationRules"]["ScheduleExpression"] == "rate(30 days)"
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["keyrotor.io/namespace"] == ns and tags["keyrotor.io/uid"] == obj["metadata"]["uid"]
    assert "Ready" in keyrotor.event_reasons(ns, "app")


def test_rotate_now_mirrors_a_new_key(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(
        ns, "app", {"iamUser": user, "previousKey": {"action": "Deactivate", "after": "2s"}}
    )
    first = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "1"})

    def rotated() -> dict | None:
        obj = keyrotor.get(ns, "app")
        status = (obj or {}).get("status") or {}
        return status if status.get("accessKeyId") not in (None, first["accessKeyId"]) else None

    second = keyrotor.wait(rotated, what="a new key after rotate-now")
    assert second["rotateNowHandled"] == "1"
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    assert data["AWS_ACCESS_KEY_ID"] == second["accessKeyId"]
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        user
    )
    # The previous key is deactivated after its grace period, the current one never.
    keyrotor.wait(
        lambda: keyrotor.user_keys(user).get(first["accessKeyId"]) == "Inactive",
        what="the previous key deactivated",
    )
    assert keyrotor.user_keys(user)[second["accessKeyId"]] == "Active"
    final = keyrotor.wait(
        lambda: (
            (keyrotor.get(ns, "app") or {}).get("status", {}).get("previousKey", {}).get("state")
            == "Inactive"
            and keyrotor.get(ns, "app")
        ),
        what="status.previousKey Inactive",
    )
    assert final["status"]["previousKey"]["accessKeyId"] == first["accessKeyId"]
    # The same annotation value again is not another rotation.
    keyrotor.annotate(ns, "app", {"unrelated": "change"})
    keyrotor.aws.wait_for_rotations(timeout=30)
    assert keyrotor.get(ns, "app")["status"]["accessKeyId"] == second["accessKeyId"]
