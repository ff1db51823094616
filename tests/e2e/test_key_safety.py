"""Issue 8, end to end: each scenario that broke the promise, now safe. No working key is
deleted, nothing foreign is read, modified or mirrored, and the object says why.

(Case 6, claims split across clusters that share a name, is in test_claims.py; case 8, bad
input found too late, is the edges branch's.)
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

CLAIM = "keyrotor.io/claimed-by"
ADOPT = "keyrotor.io/adopt"


def _status(keyrotor: Harness, ns: str, name: str) -> dict[str, Any]:
    return dict(((keyrotor.get(ns, name) or {}).get("status")) or {})


def _gone(keyrotor: Harness, ns: str, name: str) -> None:
    keyrotor.delete(ns, name)
    keyrotor.wait(lambda: keyrotor.get(ns, name) is None, what=f"{ns}/{name} finalized")


def _works(keyrotor: Harness, ns: str, name: str, user: str) -> dict[str, str]:
    data = keyrotor.secret_data(keyrotor.secret(ns, name))
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    return data


def _user_tags(keyrotor: Harness, user: str) -> dict[str, str]:
    tags = keyrotor.aws.client("iam").list_user_tags(UserName=user)["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def _described(keyrotor: Harness, secret_id: str) -> dict[str, Any]:
    described = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=secret_id)
    return {k: v for k, v in described.items() if k != "ResponseMetadata"}


def _operator_reads(keyrotor: Harness) -> int:
    """GetSecretValue calls made by the operator (not by the rotation Lambda)."""
    return sum(1 for c in keyrotor.aws.calls if c.operation == "GetSecretValue" and c.step is None)


def _new_key(keyrotor: Harness, ns: str, name: str, old: str, what: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _status(keyrotor, ns, name)
        if status.get("accessKeyId") in (None, old):
            return None
        data = keyrotor.secret_data(keyrotor.secret(ns, name))
        return status if data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"] else None

    return keyrotor.wait(probe, what=what)


# --- 1. A retained secret never rotates unowned, and comes back to its object ------------------


def test_retained_secret_stops_rotating_and_is_taken_back(keyrotor: Harness) -> None:
    ns, moved_ns = keyrotor.namespace(), keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=f"{ns},{moved_ns}")
    spec = {"iamUser": user, "rotation": {"interval": "4h"}, "previousKey": {"after": "1h"}}
    keyrotor.create(ns, "app", spec)
    first = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations()

    _gone(keyrotor, ns, "app")  # deletionPolicy Retain (the default)
    retained = _described(keyrotor, first["secretArn"])
    assert not retained.get("RotationEnabled") and "DeletedDate" not in retained
    assert CLAIM not in _user_tags(keyrotor, user)
    events = [e.message for e in keyrotor.events(ns, "app") if e.reason == "SecretRetained"]
    assert events and "cancelled the rotation" in events[0]

    # The user moves to another namespace's object: its own secret, its own key.
    keyrotor.create(moved_ns, "moved", {"iamUser": user, "rotation": {"interval": "30d"}})
    moved = keyrotor.wait_ready(moved_ns, "moved")["status"]
    keyrotor.aws.wait_for_rotations()
    assert moved["secretArn"] != first["secretArn"]
    # The retained secret's schedule (4h) comes and goes: nothing rotates it.
    started = keyrotor.aws.run_due_rotations(now=datetime.now(UTC) + timedelta(hours=5))
    assert first["secretArn"] not in started
    keyrotor.aws.wait_for_rotations()
    assert keyrotor.user_keys(user) == {
        first["accessKeyId"]: "Active",
        moved["accessKeyId"]: "Active",
    }
    assert keyrotor.condition(keyrotor.get(moved_ns, "moved"), "Ready")["status"] == "True"
    _works(keyrotor, moved_ns, "moved", user)

    # The user moves back under the old name: the retained secret is taken back, not a Conflict.
    _gone(keyrotor, moved_ns, "moved")
    keyrotor.create(ns, "app", spec)
    back = keyrotor.wait_ready(ns, "app")["status"]
    assert back["secretArn"] == first["secretArn"]
    assert back["accessKeyId"] == first["accessKeyId"]  # the retained key, mirrored again
    assert _described(keyrotor, first["secretArn"])["RotationEnabled"] is True
    _works(keyrotor, ns, "app", user)


# --- 2. Only own secrets ----------------------------------------------------------------------


def _secret_by_hand(keyrotor: Harness, name: str, user: str, tags: dict[str, str]) -> str:
    key = keyrotor.aws.client("iam").create_access_key(UserName=user)["AccessKey"]
    value = {"username": user, "accesskey": key["AccessKeyId"], "secretkey": key["SecretAccessKey"]}
    sm = keyrotor.aws.client("secretsmanager")
    arn = sm.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]
    if tags:
        sm.tag_resource(SecretId=arn, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return str(arn)


def test_secret_made_by_hand_is_refused_untouched_until_an_administrator_hands_it_over(
    keyrotor: Harness,
) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    name = f"keyrotor/{keyrotor.cluster_name}/{ns}/by-hand"
    arn = _secret_by_hand(keyrotor, name, user, {})
    keys = keyrotor.user_keys(user)
    keyrotor.aws.wait_for_rotations()
    before, reads = _described(keyrotor, arn), _operator_reads(keyrotor)

    keyrotor.create(ns, "app", {"iamUser": user, "secretsManager": {"secretName": name}})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "NotAuthorized")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert f"{ADOPT}={ns}/app" in message and "leaves it alone" in message
    # Not modified, not read, not mirrored; no claim taken.
    after = _described(keyrotor, arn)
    assert after.get("Tags", []) == before.get("Tags", [])
    assert not after.get("RotationEnabled")
    assert after["VersionIdsToStages"] == before["VersionIdsToStages"]
    assert _operator_reads(keyrotor) == reads
    assert keyrotor.secret(ns, "app") is None
    assert CLAIM not in _user_tags(keyrotor, user)
    assert keyrotor.user_keys(user) == keys

    # An AWS administrator hands it over: adopted, its key mirrored, no new key made; the value
    # read once, although the decision takes the claim, tags the secret and turns rotation on
    # (each a step whose next gather would have read it again).
    keyrotor.aws.client("secretsmanager").tag_resource(
        SecretId=arn, Tags=[{"Key": ADOPT, "Value": f"{ns}/app"}]
    )
    status = keyrotor.wait_ready(ns, "app")["status"]
    assert _operator_reads(keyrotor) == reads + 1
    assert status["secretArn"] == arn
    assert {status["accessKeyId"]: "Active"} == keys
    _works(keyrotor, ns, "app", user)
    # A value made by hand has no CreateDate beside the key: IAM was asked (ListAccessKeys).
    listed = keyrotor.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    annotation = keyrotor.secret(ns, "app").metadata.annotations["keyrotor.io/access-key-created"]
    assert annotation == listed[0]["CreateDate"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = {t["Key"]: t["Value"] for t in _described(keyrotor, arn)["Tags"]}
    assert tags["keyrotor.io/uid"] == obj["metadata"]["uid"]


def test_secret_under_another_namespaces_path_is_refused_and_not_created(
    keyrotor: Harness,
) -> None:
    ns, other = keyrotor.namespace(), keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    squatted = f"keyrotor/{keyrotor.cluster_name}/{other}/app"
    keyrotor.create(ns, "squat", {"iamUser": user, "secretsManager": {"secretName": squatted}})
    obj = keyrotor.wait_condition(ns, "squat", "Ready", "False", "NotAuthorized")
    assert f"keyrotor/{keyrotor.cluster_name}/{ns}/" in keyrotor.condition(obj, "Ready")["message"]
    with pytest.raises(ClientError) as missing:
        _described(keyrotor, squatted)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert keyrotor.user_keys(user) == {} and CLAIM not in _user_tags(keyrotor, user)


def test_secret_handed_over_with_another_users_key_is_refused_unread_by_the_tenant(
    keyrotor: Harness,
) -> None:
    ns = keyrotor.namespace()
    victim = keyrotor.iam_user(namespaces="nobody")
    thief = keyrotor.iam_user(namespaces=ns)
    name = f"keyrotor/{keyrotor.cluster_name}/{ns}/victim"
    arn = _secret_by_hand(keyrotor, name, victim, {ADOPT: f"{ns}/app"})
    before, victim_keys = _described(keyrotor, arn), keyrotor.user_keys(victim)

    keyrotor.create(ns, "app", {"iamUser": thief, "secretsManager": {"secretName": name}})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "Conflict")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert "another IAM user" in message and victim not in message
    after = _described(keyrotor, arn)
    assert after.get("Tags") == before.get("Tags") and not after.get("RotationEnabled")
    assert keyrotor.secret(ns, "app") is None  # nothing mirrored into the tenant's namespace
    assert keyrotor.user_keys(victim) == victim_keys
    assert CLAIM not in _user_tags(keyrotor, thief)  # checked before the first write


# --- 4. No request is lost --------------------------------------------------------------------


def test_rotate_now_that_failed_is_retried_and_the_lambda_comes_back(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    first = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations()
    lam = keyrotor.aws.client("lambda")
    function = f"keyrotor-{keyrotor.cluster_name}-rotation"
    lam.delete_function(FunctionName=function)  # out of band

    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "after-delete"})
    failed = keyrotor.wait(
        lambda: next((e for e in keyrotor.events(ns, "app") if e.reason == "RotationFailed"), None),
        what="a RotationFailed Warning",
    )
    assert failed.type == "Warning" and "RotateSecret" in failed.message
    second = _new_key(keyrotor, ns, "app", first["accessKeyId"], "the rotate-now key")
    assert second["rotateNowHandled"] == "after-delete"
    assert lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"]
    assert keyrotor.user_keys(user)[first["accessKeyId"]] == "Active"  # in its grace period
    _works(keyrotor, ns, "app", user)


# --- 7. The grace period holds ----------------------------------------------------------------


def test_rotate_now_inside_the_grace_period_waits_unless_ended_early(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, "previousKey": {"after": "2h"}})
    a = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r1"})
    b = _new_key(keyrotor, ns, "app", a["accessKeyId"], "the first rotate-now")
    keyrotor.aws.wait_for_rotations()
    rotations = len(keyrotor.aws.rotations_of(a["secretArn"]))

    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r2"})
    obj = keyrotor.wait_condition(ns, "app", "RotationConfigured", "True", "GracePeriod")
    message = keyrotor.condition(obj, "RotationConfigured")["message"]
    assert b["previousKey"]["actionAfter"] in message
    assert "keyrotor.io/end-grace-period=r2" in message
    assert keyrotor.condition(obj, "Ready")["status"] == "True"
    assert obj["status"].get("rotateNowHandled") == "r1"
    assert len(keyrotor.aws.rotations_of(a["secretArn"])) == rotations
    assert keyrotor.user_keys(user) == {a["accessKeyId"]: "Active", b["accessKeyId"]: "Active"}
    assert "GracePeriod" in keyrotor.event_reasons(ns, "app")

    # An emergency: the user ends the grace period for this request.
    keyrotor.annotate(ns, "app", {"keyrotor.io/end-grace-period": "r2"})
    c = _new_key(keyrotor, ns, "app", b["accessKeyId"], "the rotate-now after the grace ended")
    assert c["rotateNowHandled"] == "r2"
    keys = keyrotor.user_keys(user)
    assert a["accessKeyId"] not in keys  # the one whose grace the user ended
    assert keys[b["accessKeyId"]] == "Active"  # the key pods used a moment ago still works
    _works(keyrotor, ns, "app", user)


# --- 5. Failures back off, per object, and one object's failure stops nobody else -------------


def test_failing_action_backs_off_and_other_objects_still_sync(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user, witness_user = keyrotor.iam_user(namespaces=ns), keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, "previousKey": {"after": "1s"}})
    keyrotor.create(ns, "witness", {"iamUser": witness_user})
    a = keyrotor.wait_ready(ns, "app")["status"]
    witness = keyrotor.wait_ready(ns, "witness")["status"]
    faults = keyrotor.aws.faults
    # An SCP that denies UpdateAccessKey: the previous key cannot be deactivated.
    faults.fail("UpdateAccessKey", error="AccessDenied", times=10**6, service="iam")
    try:
        keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r1"})
        obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "AccessDenied")
        assert "UpdateAccessKey" in keyrotor.condition(obj, "Ready")["message"]
        start = keyrotor.aws.calls.count("UpdateAccessKey")
        # Meanwhile the witness's secret rotates from outside, and is still mirrored.
        keyrotor.aws.client("secretsmanager").rotate_secret(SecretId=witness["secretArn"])
        _new_key(keyrotor, ns, "witness", witness["accessKeyId"], "the witness synced")
        keyrotor.wait(lambda: keyrotor.aws.calls.count("UpdateAccessKey") > start, what="a retry")
        # Backoff from --recheck-interval 3s, doubling: a handful of calls, not one every tick
        # (an upper bound: a slower machine makes fewer).
        time.sleep(15)
        tries = keyrotor.aws.calls.count("UpdateAccessKey") - start
        assert 1 <= tries <= 5, tries
    finally:
        faults.clear()
    final = keyrotor.wait(
        lambda: (
            (s := _status(keyrotor, ns, "app")).get("previousKey", {}).get("state") == "Inactive"
            and s
        ),
        timeout=90,
        what="the previous key deactivated once allowed",
    )
    assert final["previousKey"]["accessKeyId"] == a["accessKeyId"]
    keyrotor.wait_ready(ns, "app")


# --- The Lambda never deletes a key that may be in use; the object says which and what to do ---


def test_rotation_stopped_by_a_key_in_use_is_reported_and_nothing_deleted(
    keyrotor: Harness,
) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    first = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations()
    # Someone else's working key for the same user (made by hand): the user is at two keys.
    iam = keyrotor.aws.client("iam")
    foreign = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]

    # A key made in the same second as the rotation's pending version would be taken by the
    # Lambda for an orphan of that rotation (one-second precision): the hand-made key is older.
    time.sleep(1.1)
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "r1"})
    event = keyrotor.wait(
        lambda: next((e for e in keyrotor.events(ns, "app") if e.reason == "KeyInUse"), None),
        timeout=120,
        what="a KeyInUse Warning",
    )
    assert event.type == "Warning" and foreign in event.message
    assert f"--access-key-id {foreign}" in event.message
    assert keyrotor.user_keys(user) == {first["accessKeyId"]: "Active", foreign: "Active"}
    obj = keyrotor.wait_ready(ns, "app")
    assert obj["status"]["accessKeyId"] == first["accessKeyId"]
    _works(keyrotor, ns, "app", user)
