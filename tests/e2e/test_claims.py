"""The claim tag on the IAM user: one object rotates one user, across installations too."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

CLAIM = "keyrotor.io/claimed-by"


def test_claim_is_set_while_the_object_lives_and_released_after(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    created = keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.wait_ready(ns, "app")
    tags = keyrotor.user_tags(user)
    assert tags[CLAIM] == f"{keyrotor.installation_id}/{created['metadata']['uid']}"
    assert tags["keyrotor.io/claimed-by-object"] == f"{ns}/app"
    keyrotor.delete(ns, "app")
    keyrotor.wait(lambda: keyrotor.get(ns, "app") is None, what="the object finalized")
    assert CLAIM not in keyrotor.user_tags(user)
    assert tags["keyrotor.io/namespaces"] == keyrotor.user_tags(user)["keyrotor.io/namespaces"]


def test_user_claimed_by_another_installation_is_a_conflict(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    iam = keyrotor.aws.client("iam")
    iam.tag_user(
        UserName=user,
        Tags=[
            {"Key": CLAIM, "Value": "other-cluster/0b9d7c1e-uid"},
            {"Key": "keyrotor.io/claimed-by-object", "Value": "team-x/exporter"},
        ],
    )
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "Conflict")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert "already rotated by another AccessKeyRotation" in message
    # Another installation's object is not named to this tenant; the operator log names it.
    assert "team-x" not in message and "other-cluster" not in message
    keyrotor.wait(lambda: "team-x/exporter" in keyrotor.all_logs(), what="the holder in the log")
    assert keyrotor.user_keys(user) == {}  # nothing was rotated
    assert "secretArn" not in obj["status"]
    # The other installation lets go: this object takes the user.
    iam.untag_user(UserName=user, TagKeys=[CLAIM, "keyrotor.io/claimed-by-object"])
    status = keyrotor.wait_ready(ns, "app")["status"]
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
    assert data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]


def test_stale_claim_of_this_installation_is_taken_over(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.aws.client("iam").tag_user(
        UserName=user,
        Tags=[{"Key": CLAIM, "Value": f"{keyrotor.installation_id}/uid-of-an-object-long-gone"}],
    )
    created = keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.wait_ready(ns, "app")
    assert (
        keyrotor.user_tags(user)[CLAIM]
        == f"{keyrotor.installation_id}/{created['metadata']['uid']}"
    )


def test_claim_of_a_cluster_with_the_same_name_is_not_taken_over(keyrotor: Harness) -> None:
    """Issue 8 (6): two clusters that share a cluster name are two installations: a claim of
    the other one is never taken over as stale."""
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    other = f"{keyrotor.cluster_name}@00000000-0000-0000-0000-000000000000/uid-elsewhere"
    keyrotor.aws.client("iam").tag_user(UserName=user, Tags=[{"Key": CLAIM, "Value": other}])
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "Conflict")
    assert "uid-elsewhere" not in keyrotor.condition(obj, "Ready")["message"]
    assert keyrotor.user_tags(user)[CLAIM] == other
    assert keyrotor.user_keys(user) == {}
    assert "secretArn" not in obj["status"]


def test_case_variants_of_a_user_name_are_one_claim(keyrotor: Harness) -> None:
    """Issue 8 (6): IAM user names are not distinguished by case (the emulator's fix 14), so
    ``Svc-x`` and ``svc-x`` are one user and one claim: the second object is a Conflict, gets
    no key and no secret, and takes the user once the first is gone."""
    first_ns, second_ns = keyrotor.namespace(), keyrotor.namespace()
    user = keyrotor.iam_user(
        namespaces=f"{first_ns} {second_ns}", name=f"Svc-{uuid.uuid4().hex[:8]}"
    )
    keyrotor.create(first_ns, "holder", {"iamUser": user})
    holder = keyrotor.wait_ready(first_ns, "holder")["status"]
    keyrotor.create(second_ns, "spelling", {"iamUser": user.lower()})
    obj = keyrotor.wait_condition(second_ns, "spelling", "Ready", "False", "Conflict")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert "already rotated by another AccessKeyRotation" in message
    assert first_ns not in message and "holder" not in message  # not named to this tenant
    # Nothing was made for the second object: one key (the holder's), no secret, no Secret.
    assert keyrotor.user_keys(user) == {holder["accessKeyId"]: "Active"}
    assert "secretArn" not in (obj.get("status") or {})
    assert keyrotor.secret(second_ns, "spelling") is None
    secrets = keyrotor.aws.client("secretsmanager").list_secrets()["SecretList"]
    assert not [s["Name"] for s in secrets if second_ns in s["Name"]]
    assert keyrotor.user_tags(user)[CLAIM].endswith(f"/{holder_uid(keyrotor, first_ns)}")
    # The holder's key keeps working, as the user as created.
    data = keyrotor.secret_data(keyrotor.secret(first_ns, "holder"))
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    # The holder goes: the other spelling takes the claim.
    keyrotor.delete(first_ns, "holder")
    keyrotor.wait(lambda: keyrotor.get(first_ns, "holder") is None, what="the holder finalized")
    taken = keyrotor.wait_ready(second_ns, "spelling", timeout=90)
    assert keyrotor.user_tags(user)[CLAIM].endswith(f"/{taken['metadata']['uid']}")
    data = keyrotor.secret_data(keyrotor.secret(second_ns, "spelling"))
    assert data["AWS_ACCESS_KEY_ID"] == taken["status"]["accessKeyId"]
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")


def holder_uid(keyrotor: Harness, namespace: str) -> str:
    obj = keyrotor.get(namespace, "holder")
    assert obj is not None
    return str(obj["metadata"]["uid"])
