"""Rotations end to end: a scheduled rotation, restartOnRotation, previousKey, suspend.

The operator runs as in production (``keyrotor run``) against the real API server and the AWS
emulator; a scheduled rotation is started by the emulator's scheduler (``run_due_rotations``).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from kubernetes import client

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

RESTARTED_FOR = "keyrotor.io/restarted-for-version"


def _status(keyrotor: Harness, ns: str, name: str) -> dict[str, Any]:
    return dict(((keyrotor.get(ns, name) or {}).get("status")) or {})


def _wait_new_key(keyrotor: Harness, ns: str, name: str, old_key: str, what: str) -> dict:
    """Wait until status and the mirrored Secret both hold a key other than ``old_key``."""

    def probe() -> dict[str, Any] | None:
        status = _status(keyrotor, ns, name)
        if status.get("accessKeyId") in (None, old_key):
            return None
        secret = keyrotor.secret(
            ns, status.get("effective", {}).get("target", {}).get("secretName") or name
        )
        if (
            secret is None
            or keyrotor.secret_data(secret)["AWS_ACCESS_KEY_ID"] != status["accessKeyId"]
        ):
            return None
        return status

    return keyrotor.wait(probe, what=what)


def _secret_key(keyrotor: Harness, ns: str, name: str) -> tuple[str, str]:
    secret = keyrotor.secret(ns, name)
    assert secret is not None, f"Secret {ns}/{name} missing"
    data = keyrotor.secret_data(secret)
    return data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]


def _refused(keyrotor: Harness, key_id: str, secret_key: str) -> str:
    with pytest.raises(ClientError) as info:
        keyrotor.caller_arn(key_id, secret_key)
    return str(info.value.response["Error"]["Code"])


def _current_key_in_aws(keyrotor: Harness, secret_arn: str) -> str:
    value = keyrotor.aws.client("secretsmanager").get_secret_value(
        SecretId=secret_arn, VersionStage="AWSCURRENT"
    )
    return str(json.loads(value["SecretString"])["accesskey"])


def test_scheduled_rotation_is_mirrored(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    # The shortest interval the schema allows: no other object of this module is due as early,
    # so the scheduler below starts this secret's rotation and not theirs. The grace period must
    # be shorter than the interval (the default 24h is refused with a 4h interval).
    keyrotor.create(
        ns, "app", {"iamUser": user, "rotation": {"interval": "4h"}, "previousKey": {"after": "3h"}}
    )
    first = keyrotor.wait_ready(ns, "app")["status"]
    old_id, old_secret = _secret_key(keyrotor, ns, "app")
    assert old_id == first["accessKeyId"]
    scheduled = datetime.fromisoformat(first["nextRotationTime"].replace("Z", "+00:00"))
    assert timedelta(hours=3) < scheduled - datetime.now(UTC) <= timedelta(hours=4)
    keyrotor.aws.wait_for_rotations(timeout=30)
    sm = keyrotor.aws.client("secretsmanager")
    first_rotated = sm.describe_secret(SecretId=first["secretArn"])["LastRotatedDate"]
    # LastRotatedDate has one-second resolution: a scheduled rotation that starts in the same
    # second as the first key's is reported with the same time (this test then waited in vain
    # for lastRotationTime to move whenever the machine was fast).
    while datetime.now(UTC) < first_rotated.astimezone(UTC) + timedelta(seconds=1):
        time.sleep(0.05)

    started = keyrotor.aws.run_due_rotations(now=scheduled + timedelta(minutes=1))
    assert first["secretArn"] in started

    # Nothing asked the operator: the sync loop's ListSecrets sweep finds the new version.
    second = _wait_new_key(keyrotor, ns, "app", first["accessKeyId"], "the scheduled rotation")
    assert second["versionId"] != first["versionId"]
    assert second["accessKeyId"] == _current_key_in_aws(keyrotor, first["secretArn"])
    new_id, new_secret = _secret_key(keyrotor, ns, "app")
    assert keyrotor.caller_arn(new_id, new_secret).endswith(f":user/{user}")
    secret = keyrotor.secret(ns, "app")
    assert secret.metadata.annotations["keyrotor.io/version-id"] == second["versionId"]
    assert secret.metadata.annotations["keyrotor.io/access-key-id"] == new_id

    # previousKey: Deactivate (the default) after 3h; until then the old key stays usable.
    assert second["previousKey"]["accessKeyId"] == old_id
    assert second["previousKey"]["state"] == "Active"
    due = datetime.fromisoformat(second["previousKey"]["actionAfter"].replace("Z", "+00:00"))
    assert timedelta(hours=2) < due - datetime.now(UTC) <= timedelta(hours=3)
    assert keyrotor.user_keys(user) == {old_id: "Active", new_id: "Active"}
    assert keyrotor.caller_arn(old_id, old_secret).endswith(f":user/{user}")

    # The schedule on status follows the rotation that happened.
    recorded = sm.describe_secret(SecretId=first["secretArn"])["LastRotatedDate"]
    assert recorded > first_rotated
    expected = recorded.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    final = keyrotor.wait(
        lambda: (s := _status(keyrotor, ns, "app")).get("lastRotationTime") == expected and s,
        what=f"status.lastRotationTime {expected} after the scheduled rotation",
    )
    assert final["nextRotationTime"] != first["nextRotationTime"]
    messages = [e.message for e in keyrotor.events(ns, "app") if e.reason == "Synced"]
    assert any(new_id in m and "new key" in m for m in messages), messages


def test_rotation_time_follows_a_version_mirrored_before_it_was_recorded(
    keyrotor: Harness,
) -> None:
    """finishSecret moves AWSCURRENT before Secrets Manager records LastRotatedDate: the new
    version is mirrored first, and the rotation's times must still reach status."""
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    first = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations(timeout=30)
    time.sleep(1.1)  # LastRotatedDate has one-second resolution: a rotation in a later second
    keyrotor.aws.record_rotation_delay = 3.0
    try:
        keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "time-gap"})
        second = _wait_new_key(keyrotor, ns, "app", first["accessKeyId"], "the rotate-now key")
        keyrotor.aws.wait_for_rotations(timeout=30)
    finally:
        keyrotor.aws.record_rotation_delay = 0.0
    recorded = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=first["secretArn"])
    expected = recorded["LastRotatedDate"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert expected != first["lastRotationTime"]
    final = keyrotor.wait(
        lambda: (s := _status(keyrotor, ns, "app")).get("lastRotationTime") == expected and s,
        what=f"status.lastRotationTime {expected}",
    )
    assert final["versionId"] == second["versionId"]
    assert final["nextRotationTime"] != first["nextRotationTime"]


def _deployment(keyrotor: Harness, ns: str, name: str) -> None:
    labels = {"app": name}
    keyrotor.apps.create_namespaced_deployment(
        ns,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="app", image="example.invalid/app")]
                    ),
                ),
            ),
        ),
    )


def test_restart_on_rotation_annotates_the_pod_template(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    _deployment(keyrotor, ns, "web")
    keyrotor.create(
        ns,
        "app",
        {
            "iamUser": user,
            "restartOnRotation": [
                {"kind": "Deployment", "name": "web"},
                {"kind": "Deployment", "name": "absent"},
            ],
        },
    )
    first = keyrotor.wait_ready(ns, "app")["status"]
    # The first key is not a rotation: nothing is restarted.
    template = keyrotor.apps.read_namespaced_deployment("web", ns).spec.template
    assert RESTARTED_FOR not in (template.metadata.annotations or {})

    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r1"})
    second = _wait_new_key(keyrotor, ns, "app", first["accessKeyId"], "a new key after rotate-now")

    def restarted() -> str | None:
        template = keyrotor.apps.read_namespaced_deployment("web", ns).spec.template
        return (template.metadata.annotations or {}).get(RESTARTED_FOR)

    assert keyrotor.wait(restarted, what="the pod template annotation") == second["versionId"]
    # The missing workload is a Warning, and it did not block the sync.
    warnings = [e for e in keyrotor.events(ns, "app") if e.reason == "RestartFailed"]
    assert warnings and all(e.type == "Warning" for e in warnings)
    assert any("absent" in e.message for e in warnings)
    assert "WorkloadRestarted" in keyrotor.event_reasons(ns, "app")
    obj = keyrotor.wait_ready(ns, "app")
    assert keyrotor.condition(obj, "Synced")["status"] == "True"
    assert obj["status"]["versionId"] == second["versionId"]
    new_id, new_secret = _secret_key(keyrotor, ns, "app")
    assert keyrotor.caller_arn(new_id, new_secret).endswith(f":user/{user}")


def test_previous_key_delete(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(
        ns, "app", {"iamUser": user, "previousKey": {"action": "Delete", "after": "1s"}}
    )
    first = keyrotor.wait_ready(ns, "app")["status"]
    old_id, old_secret = _secret_key(keyrotor, ns, "app")
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r1"})
    second = _wait_new_key(keyrotor, ns, "app", first["accessKeyId"], "a new key after rotate-now")
    new_id = second["accessKeyId"]

    keyrotor.wait(lambda: old_id not in keyrotor.user_keys(user), what="the previous key deleted")
    assert keyrotor.user_keys(user) == {new_id: "Active"}
    assert _refused(keyrotor, old_id, old_secret) == "InvalidClientTokenId"
    final = keyrotor.wait(
        lambda: (
            (s := _status(keyrotor, ns, "app")).get("previousKey", {}).get("state") == "Deleted"
            and s
        ),
        what="status.previousKey Deleted",
    )
    assert final["previousKey"]["accessKeyId"] == old_id
    assert final["accessKeyId"] == new_id
    assert "PreviousKeyDeleted" in keyrotor.event_reasons(ns, "app")
    new_id_in_secret, new_secret = _secret_key(keyrotor, ns, "app")
    assert new_id_in_secret == new_id
    assert keyrotor.caller_arn(new_id, new_secret).endswith(f":user/{user}")


def test_previous_key_keep(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    # A Delete object beside it, with the same grace: when its previous key is gone, the grace
    # period of the Keep object is over too, and the operator has had its chance to act.
    witness_user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "keep", {"iamUser": user, "previousKey": {"action": "Keep", "after": "1s"}})
    keyrotor.create(
        ns, "witness", {"iamUser": witness_user, "previousKey": {"action": "Delete", "after": "1s"}}
    )
    first = keyrotor.wait_ready(ns, "keep")["status"]
    witness_first = keyrotor.wait_ready(ns, "witness")["status"]
    old_id, old_secret = _secret_key(keyrotor, ns, "keep")
    keyrotor.annotate(ns, "keep", {"keyrotor.io/rotate-now": "r1"})
    keyrotor.annotate(ns, "witness", {"keyrotor.io/rotate-now": "r1"})
    second = _wait_new_key(keyrotor, ns, "keep", first["accessKeyId"], "a new key (keep)")
    _wait_new_key(keyrotor, ns, "witness", witness_first["accessKeyId"], "a new key (witness)")
    keyrotor.wait(
        lambda: witness_first["accessKeyId"] not in keyrotor.user_keys(witness_user),
        what="the witness's previous key deleted",
    )
    # Also let a full reconcile of the Keep object run after the grace period.
    time.sleep(1.5)
    keyrotor.annotate(ns, "keep", {"example.com/touch": "1"})
    keyrotor.wait(
        lambda: (
            "example.com/touch"
            in ((keyrotor.get(ns, "keep") or {}).get("metadata", {}).get("annotations", {})).get(
                "kopf.keyrotor.io/last-handled-configuration", ""
            )
        ),
        what="the Keep object reconciled again",
    )

    assert keyrotor.user_keys(user) == {old_id: "Active", second["accessKeyId"]: "Active"}
    assert keyrotor.caller_arn(old_id, old_secret).endswith(f":user/{user}")
    status = _status(keyrotor, ns, "keep")
    assert status["previousKey"]["accessKeyId"] == old_id
    assert status["previousKey"]["state"] == "Active"
    assert status["accessKeyId"] == second["accessKeyId"]
    reasons = keyrotor.event_reasons(ns, "keep")
    assert "PreviousKeyDeactivated" not in reasons and "PreviousKeyDeleted" not in reasons
    new_id, new_secret = _secret_key(keyrotor, ns, "keep")
    assert keyrotor.caller_arn(new_id, new_secret).endswith(f":user/{user}")


def test_suspend_stops_rotation_and_sync_until_resumed(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    witness_user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.create(ns, "witness", {"iamUser": witness_user})
    first = keyrotor.wait_ready(ns, "app")["status"]
    witness_first = keyrotor.wait_ready(ns, "witness")["status"]
    keyrotor.aws.wait_for_rotations(timeout=30)
    rotations_before = len(keyrotor.aws.rotations_of(first["secretArn"]))

    keyrotor.patch(ns, "app", {"spec": {"suspend": True}})
    suspended = keyrotor.wait_condition(ns, "app", "Ready", "False", reason="Suspended")
    assert "Suspended" in keyrotor.event_reasons(ns, "app")

    # rotate-now while suspended: handled (kopf saw it) but no rotation.
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "while-suspended"})
    keyrotor.wait(
        lambda: (
            "while-suspended"
            in ((keyrotor.get(ns, "app") or {}).get("metadata", {}).get("annotations", {})).get(
                "kopf.keyrotor.io/last-handled-configuration", ""
            )
        ),
        what="the annotation change handled",
    )
    keyrotor.aws.wait_for_rotations(timeout=30)
    assert len(keyrotor.aws.rotations_of(first["secretArn"])) == rotations_before
    assert "rotateNowHandled" not in _status(keyrotor, ns, "app")

    # A rotation from outside (both secrets): the witness is mirrored, the suspended one is not.
    sm = keyrotor.aws.client("secretsmanager")
    sm.rotate_secret(SecretId=first["secretArn"])
    sm.rotate_secret(SecretId=witness_first["secretArn"])
    keyrotor.aws.wait_for_rotations(timeout=30)
    outside_key = _current_key_in_aws(keyrotor, first["secretArn"])
    assert outside_key != first["accessKeyId"]
    _wait_new_key(keyrotor, ns, "witness", witness_first["accessKeyId"], "the witness synced")
    assert _secret_key(keyrotor, ns, "app")[0] == first["accessKeyId"]
    status = _status(keyrotor, ns, "app")
    assert status["accessKeyId"] == first["accessKeyId"]
    assert keyrotor.condition({"status": status}, "Ready")["reason"] == "Suspended"
    assert suspended["status"]["accessKeyId"] == first["accessKeyId"]

    # Resume: Ready again, with the key that is AWSCURRENT now.
    keyrotor.patch(ns, "app", {"spec": {"suspend": False}})

    def resumed() -> dict[str, Any] | None:
        obj = keyrotor.get(ns, "app")
        ready = keyrotor.condition(obj, "Ready")
        if not obj or not ready or ready["status"] != "True":
            return None
        keyrotor.aws.wait_for_rotations(timeout=30)
        current = _current_key_in_aws(keyrotor, first["secretArn"])
        key_id, _ = _secret_key(keyrotor, ns, "app")
        if obj["status"].get("accessKeyId") == current == key_id:
            return dict(obj["status"])
        return None

    final = keyrotor.wait(resumed, what="the object resumed and synced")
    assert final["accessKeyId"] != first["accessKeyId"]
    key_id, secret_key = _secret_key(keyrotor, ns, "app")
    assert keyrotor.caller_arn(key_id, secret_key).endswith(f":user/{user}")
