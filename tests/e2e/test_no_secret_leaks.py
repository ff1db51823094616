"""No secret access key appears in anything keyrotor writes besides the mirrored Secret: its logs
(debug included), Events, the objects' status, and kopf's annotations on the objects."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

KEYROTOR_ARGS = ("--verbose",)


def _secret_keys_in_aws(keyrotor: Harness, secret_arn: str) -> set[str]:
    """Every version's secret key, AWSPREVIOUS and unlabelled versions included."""
    sm = keyrotor.aws.client("secretsmanager")
    found = set()
    request: dict[str, Any] = {"SecretId": secret_arn, "IncludeDeprecated": True}
    while True:
        page = sm.list_secret_version_ids(**request)
        for version in page["Versions"]:
            value = sm.get_secret_value(SecretId=secret_arn, VersionId=version["VersionId"])
            secret = json.loads(value["SecretString"]).get("secretkey")
            if secret:
                found.add(secret)
        if not page.get("NextToken"):
            return found
        request["NextToken"] = page["NextToken"]


def test_no_secret_access_key_in_logs_events_status_or_annotations(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    names = {"keep": keyrotor.iam_user(namespaces=ns), "drop": keyrotor.iam_user(namespaces=ns)}
    specs = {
        "keep": {"secretsManager": {"deletionPolicy": "Retain"}},
        "drop": {
            "secretsManager": {"deletionPolicy": "Delete"},
            "previousKey": {"action": "Delete", "after": "1s"},
        },
    }
    for name, user in names.items():
        keyrotor.create(ns, name, {"iamUser": user, **specs[name]})

    secrets: set[str] = set()
    key_ids: set[str] = set()
    snapshots: list[dict[str, Any]] = []

    def observe() -> None:
        for name in names:
            obj = keyrotor.get(ns, name)
            if obj is not None:
                snapshots.append(obj)
                if obj.get("status", {}).get("secretArn"):
                    secrets.update(_secret_keys_in_aws(keyrotor, obj["status"]["secretArn"]))
            mirrored = keyrotor.secret(ns, name)
            if mirrored is not None:
                data = keyrotor.secret_data(mirrored)
                secrets.add(data["AWS_SECRET_ACCESS_KEY"])
                key_ids.add(data["AWS_ACCESS_KEY_ID"])

    # Create.
    first = {name: keyrotor.wait_ready(ns, name)["status"]["accessKeyId"] for name in names}
    observe()
    # Rotate now.
    for name in names:
        keyrotor.annotate(ns, name, {"keyrotor.io/rotate-now": "1"})
    for name in names:
        keyrotor.wait(
            lambda name=name: (
                ((keyrotor.get(ns, name) or {}).get("status") or {}).get("accessKeyId")
                not in (None, first[name])
            ),
            what=f"{name} rotated",
        )
        keyrotor.wait_ready(ns, name)
    keyrotor.aws.wait_for_rotations()
    observe()
    keyrotor.wait(
        lambda: (
            ((keyrotor.get(ns, "drop") or {}).get("status") or {})
            .get("previousKey", {})
            .get("state")
            == "Deleted"
        ),
        what="the previous key of drop deleted",
    )
    observe()
    # Repair: an edited and a deleted mirrored Secret are put back.
    good = keyrotor.secret_data(keyrotor.secret(ns, "keep"))
    keyrotor.core.patch_namespaced_secret(
        "keep", ns, {"stringData": {"AWS_SECRET_ACCESS_KEY": "edited-by-hand"}}
    )
    keyrotor.wait(
        lambda: keyrotor.secret_data(keyrotor.secret(ns, "keep")) == good,
        what="the edited Secret put back",
    )
    keyrotor.core.delete_namespaced_secret("drop", ns)
    keyrotor.wait(
        lambda: (
            (secret := keyrotor.secret(ns, "drop")) is not None
            and secret.metadata.deletion_timestamp is None
            and keyrotor.secret_data(secret).get("AWS_ACCESS_KEY_ID")
        ),
        what="the deleted Secret put back",
    )
    observe()
    # Delete (both policies).
    for name in names:
        keyrotor.delete(ns, name)
    for name in names:
        keyrotor.wait(lambda name=name: keyrotor.get(ns, name) is None, what=f"{name} deleted")

    # Every key of both users, twice rotated: two current, two previous.
    assert len(secrets) >= 4 and len(key_ids) >= 4
    assert set(first.values()) <= key_ids
    needles = secrets | {base64.b64encode(s.encode()).decode() for s in secrets}

    logs = keyrotor.all_logs()
    assert "DEBUG" in logs or "debug" in logs.lower()  # --verbose: debug logs are in the scan
    events = keyrotor.core.list_namespaced_event(ns).items
    messages = "\n".join(f"{e.reason}: {e.message}" for e in events)
    statuses = "\n".join(json.dumps(obj.get("status") or {}) for obj in snapshots)
    annotations = "\n".join(
        json.dumps({k: v for k, v in (obj["metadata"].get("annotations") or {}).items()})
        for obj in snapshots
    )
    assert any(
        k.startswith("kopf.keyrotor.io/")
        for obj in snapshots
        for k in obj["metadata"].get("annotations") or {}
    )
    # The scenario did what it says.
    happened = {(e.involved_object.name, e.reason) for e in events}
    for expected in [
        ("keep", "SecretRepaired"),
        ("drop", "SecretRepaired"),
        ("drop", "PreviousKeyDeleted"),
        ("keep", "SecretRetained"),
        ("drop", "SecretDeletionScheduled"),
    ]:
        assert expected in happened, (expected, sorted(happened))
    # The scan reads the right text: the public key ids are there.
    assert all(key_id in messages for key_id in first.values())
    assert all(key_id in statuses for key_id in first.values())

    for place, text in {
        "operator logs": logs,
        "Events": messages,
        "status": statuses,
        "annotations": annotations,
    }.items():
        leaked = [s[:4] + "..." for s in needles if s in text]
        assert not leaked, f"secret access keys in {place}: {leaked}"
