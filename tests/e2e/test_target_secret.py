"""The mirrored Secret: put back when edited or deleted; target.secretName, profile, labels and
annotations."""

from __future__ import annotations

import base64
import configparser
from typing import Any

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def _holds(keyrotor: Harness, ns: str, name: str, status: dict[str, Any]) -> dict | None:
    """The Secret's data when it holds the status's key, intact, else None."""
    secret = keyrotor.secret(ns, name)
    if secret is None:
        return None
    data = keyrotor.secret_data(secret)
    annotations = secret.metadata.annotations or {}
    if (
        data.get("AWS_ACCESS_KEY_ID") != status["accessKeyId"]
        or annotations.get("keyrotor.io/version-id") != status["versionId"]
        or status["accessKeyId"] not in data.get("credentials", "")
    ):
        return None
    return data


def _repaired_events(keyrotor: Harness, ns: str, name: str) -> list[Any]:
    return [e for e in keyrotor.events(ns, name) if e.reason == "SecretRepaired"]


def test_edited_target_secret_is_put_back(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    status = keyrotor.wait_ready(ns, "app")["status"]
    original = _holds(keyrotor, ns, "app", status)
    assert original is not None
    assert not _repaired_events(keyrotor, ns, "app")

    edited = base64.b64encode(b"AKIAEDITEDBYHAND0000").decode()
    keyrotor.core.patch_namespaced_secret("app", ns, {"data": {"AWS_ACCESS_KEY_ID": edited}})

    data = keyrotor.wait(lambda: _holds(keyrotor, ns, "app", status), what="the edit undone")
    assert data == original
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
    events = keyrotor.wait(lambda: _repaired_events(keyrotor, ns, "app"), what="SecretRepaired")
    assert "drifted" in events[0].message
    # Putting back the same version is not a rotation: status keeps the key and stays Ready.
    obj = keyrotor.wait_ready(ns, "app")
    assert obj["status"]["accessKeyId"] == status["accessKeyId"]
    assert obj["status"]["versionId"] == status["versionId"]


def test_deleted_target_secret_is_put_back(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_ready(ns, "app")
    status = obj["status"]
    old_uid = keyrotor.secret(ns, "app").metadata.uid

    keyrotor.core.delete_namespaced_secret("app", ns)

    data = keyrotor.wait(
        lambda: (
            (s := keyrotor.secret(ns, "app")) is not None
            and s.metadata.uid != old_uid
            and _holds(keyrotor, ns, "app", status)
        ),
        what="the deleted Secret put back",
    )
    assert keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]).endswith(
        f":user/{user}"
    )
    secret = keyrotor.secret(ns, "app")
    assert secret.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "keyrotor"
    events = keyrotor.wait(lambda: _repaired_events(keyrotor, ns, "app"), what="SecretRepaired")
    assert "missing" in events[0].message
    assert keyrotor.wait_ready(ns, "app")["status"]["accessKeyId"] == status["accessKeyId"]


def test_target_options(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    target = {
        "secretName": "billing-aws",
        "profile": "billing",
        "labels": {"team": "billing"},
        "annotations": {"example.com/owner": "billing-team"},
    }
    keyrotor.create(ns, "app", {"iamUser": user, "target": target})
    status = keyrotor.wait_ready(ns, "app")["status"]
    assert keyrotor.secret(ns, "app") is None
    data = _holds(keyrotor, ns, "billing-aws", status)
    assert data is not None
    secret = keyrotor.secret(ns, "billing-aws")
    assert secret.metadata.labels["team"] == "billing"
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "keyrotor"
    assert secret.metadata.annotations["example.com/owner"] == "billing-team"
    assert secret.metadata.annotations["keyrotor.io/access-key-id"] == status["accessKeyId"]

    credentials = configparser.ConfigParser()
    credentials.read_string(data["credentials"])
    assert credentials.sections() == ["billing"]
    key_id = credentials["billing"]["aws_access_key_id"]
    secret_key = credentials["billing"]["aws_secret_access_key"]
    assert key_id == data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]
    assert secret_key == data["AWS_SECRET_ACCESS_KEY"]
    assert keyrotor.caller_arn(key_id, secret_key).endswith(f":user/{user}")

    # Changing the options later reaches the existing Secret too.
    keyrotor.patch(
        ns,
        "app",
        {
            "spec": {
                "target": {
                    "profile": "reporting",
                    "labels": {"team": "reporting"},
                    "annotations": {"example.com/owner": "reporting-team"},
                }
            }
        },
    )

    def updated() -> Any:
        secret = keyrotor.secret(ns, "billing-aws")
        if secret is None:
            return None
        data = keyrotor.secret_data(secret)
        return (
            "[reporting]" in data["credentials"]
            and (secret.metadata.labels or {}).get("team") == "reporting"
            and (secret.metadata.annotations or {}).get("example.com/owner") == "reporting-team"
            and secret
        )

    secret = keyrotor.wait(updated, what="the Secret with the new profile, labels, annotations")
    data = keyrotor.secret_data(secret)
    assert "[billing]" not in data["credentials"]
    assert data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]
    assert keyrotor.wait_ready(ns, "app")["status"]["accessKeyId"] == status["accessKeyId"]
    # A spec change is an update, not a repair.
    assert not _repaired_events(keyrotor, ns, "app")
