"""Refusals and failures an operator user meets, each as a condition with a reason and a message
that says what to do, a Warning Event, and recovery without touching the object once it is fixed.

The module's operator runs with one ``--allow`` rule (namespaces ``allowed-*`` may claim IAM users
``allowed-*``); the other tests use namespaces and users the rule does not match.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from keyrotor_sandbox.aws import LAMBDA_RETRIES
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

KEYROTOR_ARGS = ("--allow", "allowed-*:allowed-*")
NAMESPACES_TAG = "keyrotor.io/namespaces"


def _warning_event(keyrotor: Harness, ns: str, name: str, reason: str) -> Any:
    def probe() -> Any:
        return next(
            (e for e in keyrotor.events(ns, name) if e.reason == reason and e.type == "Warning"),
            None,
        )

    return keyrotor.wait(probe, what=f"a Warning Event {reason} for {ns}/{name}")


def _assert_key_works(keyrotor: Harness, ns: str, name: str, user: str) -> dict[str, str]:
    secret = keyrotor.secret(ns, name)
    assert secret is not None
    data = keyrotor.secret_data(secret)
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    return data


def _tag_user(keyrotor: Harness, user: str, value: str) -> None:
    keyrotor.aws.client("iam").tag_user(
        UserName=user, Tags=[{"Key": NAMESPACES_TAG, "Value": value}]
    )


def _stages(keyrotor: Harness, secret_arn: str) -> dict[str, list[str]]:
    described = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=secret_arn)
    return dict(described.get("VersionIdsToStages") or {})


def _stuck_pending(stages: dict[str, list[str]]) -> list[str]:
    return [v for v, s in stages.items() if "AWSPENDING" in s and "AWSCURRENT" not in s]


# --- Who may claim an IAM user -----------------------------------------------------------------


def test_untagged_user_is_not_authorized_until_tagged(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user()  # no keyrotor.io/namespaces tag
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "NotAuthorized")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert f"add the tag {NAMESPACES_TAG}={ns}" in message
    assert f"aws iam tag-user --user-name {user}" in message
    assert f"--allow {ns}:{user}" in message
    event = _warning_event(keyrotor, ns, "app", "NotAuthorized")
    assert event.message == message
    # Nothing was made for a refused claim: no AWS secret, no key, no mirrored Secret.
    assert "secretArn" not in obj["status"]
    assert keyrotor.user_keys(user) == {}
    assert keyrotor.secret(ns, "app") is None

    _tag_user(keyrotor, user, f"other, {ns}")
    obj = keyrotor.wait_ready(ns, "app")
    assert obj["metadata"]["generation"] == 1  # the object itself was not touched
    _assert_key_works(keyrotor, ns, "app", user)


def test_user_listing_another_namespace_is_not_authorized(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    other = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=other)
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "NotAuthorized")
    message = keyrotor.condition(obj, "Ready")["message"]
    assert f"the tag is {other!r}; add {ns!r} to it" in message
    assert f"--allow {ns}:{user}" in message
    _warning_event(keyrotor, ns, "app", "NotAuthorized")
    assert keyrotor.user_keys(user) == {}

    _tag_user(keyrotor, user, f"{other} {ns}")
    keyrotor.wait_ready(ns, "app")
    _assert_key_works(keyrotor, ns, "app", user)


def test_allow_rule_admits_an_untagged_user(keyrotor: Harness) -> None:
    allowed_ns = keyrotor.namespace("allowed")
    other_ns = keyrotor.namespace()
    user = keyrotor.iam_user(name=f"allowed-{uuid.uuid4().hex[:8]}")  # untagged
    stranger = keyrotor.iam_user(name=f"svc-{uuid.uuid4().hex[:8]}")  # untagged, not matched
    elsewhere = keyrotor.iam_user(name=f"allowed-{uuid.uuid4().hex[:8]}")  # untagged
    keyrotor.create(allowed_ns, "app", {"iamUser": user})
    keyrotor.create(allowed_ns, "stranger", {"iamUser": stranger})
    keyrotor.create(other_ns, "app", {"iamUser": elsewhere})

    keyrotor.wait_ready(allowed_ns, "app")
    _assert_key_works(keyrotor, allowed_ns, "app", user)
    # The rule admits its namespaces and users only.
    keyrotor.wait_condition(allowed_ns, "stranger", "Ready", "False", "NotAuthorized")
    keyrotor.wait_condition(other_ns, "app", "Ready", "False", "NotAuthorized")
    assert keyrotor.user_keys(stranger) == {} and keyrotor.user_keys(elsewhere) == {}


def test_second_claim_on_a_user_is_a_conflict_until_the_first_goes(keyrotor: Harness) -> None:
    first_ns = keyrotor.namespace()
    second_ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=f"{first_ns},{second_ns}")
    keyrotor.create(first_ns, "older", {"iamUser": user})
    keyrotor.wait_ready(first_ns, "older")
    older_key = keyrotor.get(first_ns, "older")["status"]["accessKeyId"]

    keyrotor.create(second_ns, "younger", {"iamUser": user})
    obj = keyrotor.wait_condition(second_ns, "younger", "Ready", "False", "Conflict")
    message = keyrotor.condition(obj, "Ready")["message"]
    # The holder is in another namespace: not named to this tenant (the operator log names it).
    assert "another AccessKeyRotation" in message and repr(user) in message
    assert first_ns not in message
    _warning_event(keyrotor, second_ns, "younger", "Conflict")
    assert keyrotor.secret(second_ns, "younger") is None
    # The older one is untouched: still Ready, same key, no second key made for the younger.
    older = keyrotor.get(first_ns, "older")
    assert keyrotor.condition(older, "Ready")["status"] == "True"
    assert older["status"]["accessKeyId"] == older_key
    assert list(keyrotor.user_keys(user)) == [older_key]

    keyrotor.delete(first_ns, "older")
    keyrotor.wait(lambda: keyrotor.get(first_ns, "older") is None, what="older deleted")
    obj = keyrotor.wait_ready(second_ns, "younger")
    data = _assert_key_works(keyrotor, second_ns, "younger", user)
    assert data["AWS_ACCESS_KEY_ID"] == obj["status"]["accessKeyId"] != older_key
    assert len(keyrotor.user_keys(user)) <= 2


# --- Bad input the schema cannot catch --------------------------------------------------------


def test_schema_refuses_interval_with_schedule(keyrotor: Harness) -> None:
    """One smoke test through the API server; the whole schema is in tests/integration."""
    ns = keyrotor.namespace()
    with pytest.raises(ApiException) as refused:
        keyrotor.create(
            ns,
            "app",
            {"iamUser": "someone", "rotation": {"interval": "30d", "schedule": "rate(1 day)"}},
        )
    assert refused.value.status == 422
    assert keyrotor.get(ns, "app") is None


def test_unknown_iam_user(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = f"svc-{uuid.uuid4().hex[:8]}"  # no such IAM user (yet)
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "UserNotFound")
    assert repr(user) in keyrotor.condition(obj, "Ready")["message"]
    _warning_event(keyrotor, ns, "app", "UserNotFound")
    assert keyrotor.secret(ns, "app") is None

    keyrotor.iam_user(namespaces=ns, name=user)
    keyrotor.wait_ready(ns, "app")
    _assert_key_works(keyrotor, ns, "app", user)


def test_missing_aws_permission_is_reported_and_recovers(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    faults = keyrotor.aws.faults
    faults.fail("CreateSecret", when="before", error="AccessDeniedException", times=10**6)
    try:
        keyrotor.create(ns, "app", {"iamUser": user})
        obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "AccessDenied")
        message = keyrotor.condition(obj, "Ready")["message"]
        assert "missing an AWS permission" in message and "CreateSecret" in message
        event = _warning_event(keyrotor, ns, "app", "AccessDenied")
        assert "CreateSecret" in event.message
        assert keyrotor.user_keys(user) == {}
    finally:
        faults.clear()
    keyrotor.wait_ready(ns, "app")
    _assert_key_works(keyrotor, ns, "app", user)


# --- A rotation that never finishes -----------------------------------------------------------


def test_stuck_rotation_is_cleared_and_rotation_goes_on(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    first = keyrotor.wait_ready(ns, "app")["status"]
    arn = first["secretArn"]
    keyrotor.aws.wait_for_rotations()
    assert _stuck_pending(_stages(keyrotor, arn)) == []

    # testSecret fails in every attempt Lambda makes: the rotation stops half way.
    faults = keyrotor.aws.faults
    faults.crash_lambda("testSecret", times=LAMBDA_RETRIES + 1)
    try:
        keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "1"})

        def failed_rotation() -> Any:
            rotations = keyrotor.aws.rotations_of(arn)
            last = rotations[-1] if len(rotations) >= 2 else None
            return last if last is not None and last.succeeded is False else None

        rotation = keyrotor.wait(failed_rotation, what="the rotation to fail")
        assert rotation.failed_step == "testSecret"
        stages = _stages(keyrotor, arn)
        # AWSCURRENT did not move; AWSPENDING stays on the failed version (the operator leaves
        # it for --stuck-after, 20s from the version's creation).
        assert "AWSCURRENT" in stages[first["versionId"]]
        assert _stuck_pending(stages) == [rotation.token]
    finally:
        faults.clear()

    # The decision that clears it reads the user's keys (ListAccessKeys), which IAM throttles
    # here and botocore retries: seconds pass between the pending version's age and the plan,
    # as under a heavy load (CI run 16). The key the failed rotation made is still its own:
    # RotationStuck, not a KeyInUse naming it.
    faults.fail("ListAccessKeys", error="Throttling", service="iam", times=3)
    try:
        event = _warning_event(keyrotor, ns, "app", "RotationStuck")
    finally:
        faults.clear()
    assert rotation.token in event.message
    assert "KeyInUse" not in keyrotor.event_reasons(ns, "app")
    keyrotor.wait(lambda: _stuck_pending(_stages(keyrotor, arn)) == [], what="AWSPENDING cleared")
    obj = keyrotor.wait_ready(ns, "app")
    assert obj["status"]["accessKeyId"] == first["accessKeyId"]  # the old key is still mirrored
    _assert_key_works(keyrotor, ns, "app", user)

    # The next rotation works.
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "2"})

    def rotated() -> dict[str, Any] | None:
        status = (keyrotor.get(ns, "app") or {}).get("status") or {}
        new = status.get("accessKeyId") not in (None, first["accessKeyId"])
        return status if new and status.get("rotateNowHandled") == "2" else None

    second = keyrotor.wait(rotated, what="a new key after the stuck rotation was cleared")
    keyrotor.wait_ready(ns, "app")
    data = _assert_key_works(keyrotor, ns, "app", user)
    assert data["AWS_ACCESS_KEY_ID"] == second["accessKeyId"]
    keyrotor.aws.wait_for_rotations()
    stages = _stages(keyrotor, arn)
    assert _stuck_pending(stages) == []
    assert "AWSCURRENT" in stages[second["versionId"]]
    # The half-made key of the failed rotation was swept: the old and the new key remain.
    assert set(keyrotor.user_keys(user)) == {first["accessKeyId"], second["accessKeyId"]}


def test_first_rotation_that_never_finishes_is_tried_again(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    faults = keyrotor.aws.faults
    faults.crash_lambda("createSecret", times=LAMBDA_RETRIES + 1)
    try:
        keyrotor.create(ns, "app", {"iamUser": user})
        arn = keyrotor.wait(
            lambda: ((keyrotor.get(ns, "app") or {}).get("status") or {}).get("secretArn"),
            what="the secret",
        )

        def failed_rotation() -> Any:
            rotations = keyrotor.aws.rotations_of(arn)
            return rotations[0] if rotations and rotations[0].succeeded is False else None

        rotation = keyrotor.wait(failed_rotation, what="the first rotation to fail")
        assert _stuck_pending(_stages(keyrotor, arn)) == [rotation.token]
    finally:
        faults.clear()

    event = _warning_event(keyrotor, ns, "app", "RotationStuck")
    assert rotation.token in event.message
    obj = keyrotor.wait_ready(ns, "app")
    data = _assert_key_works(keyrotor, ns, "app", user)
    assert list(keyrotor.user_keys(user)) == [data["AWS_ACCESS_KEY_ID"]]
    keyrotor.aws.wait_for_rotations()
    stages = _stages(keyrotor, arn)
    assert _stuck_pending(stages) == [] and "AWSCURRENT" in stages[obj["status"]["versionId"]]
