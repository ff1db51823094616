"""Issue 8 (3): a mirrored key deleted or deactivated outside keyrotor, or its user deleted, is
noticed from IAM's credential report (O(1) calls for the whole installation), said on the object,
and healed by a rotation where the user still exists; and (4) a rotation Lambda deleted out of
band comes back without an object event.

The emulator keeps AWS's rule that a report younger than four hours is not generated again; the
tests date the report back (``age_credential_report``) instead of waiting.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, timedelta
from typing import Any

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

KEYROTOR_ARGS = ("--dead-key-check-interval", "2", "--installation-recheck", "3")


def _status(keyrotor: Harness, ns: str, name: str) -> dict[str, Any]:
    return dict(((keyrotor.get(ns, name) or {}).get("status")) or {})


def _ready_object(keyrotor: Harness) -> tuple[str, str, dict[str, Any]]:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    status = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations()
    return ns, user, status


def _new_report(keyrotor: Harness) -> None:
    """Make the current report look five hours old: the next check has a new one made."""
    with contextlib.suppress(KeyError):  # no report yet: the next check has the first one made
        keyrotor.aws.age_credential_report(timedelta(hours=5))


def _warning(keyrotor: Harness, ns: str, reason: str, text: str) -> Any:
    return keyrotor.wait(
        lambda: next(
            (
                e
                for e in keyrotor.events(ns, "app")
                if e.reason == reason and e.type == "Warning" and text in e.message
            ),
            None,
        ),
        what=f"a Warning {reason} saying {text!r}",
    )


def _healed(keyrotor: Harness, ns: str, user: str, dead: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _status(keyrotor, ns, "app")
        if status.get("accessKeyId") in (None, dead):
            return None
        data = keyrotor.secret_data(keyrotor.secret(ns, "app"))
        return status if data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"] else None

    status = keyrotor.wait(probe, what="a new key mirrored in place of the dead one")
    secret = keyrotor.secret(ns, "app")
    data = keyrotor.secret_data(secret)
    # The key's CreateDate rides on the Secret: after a restart the check needs no lookup.
    keys = keyrotor.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    created = next(k["CreateDate"] for k in keys if k["AccessKeyId"] == status["accessKeyId"])
    annotation = secret.metadata.annotations["keyrotor.io/access-key-created"]
    assert annotation == created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    keyrotor.wait_ready(ns, "app")
    return status


@pytest.mark.parametrize("how", ["deleted", "deactivated"])
def test_dead_key_is_reported_and_replaced(keyrotor: Harness, how: str) -> None:
    ns, user, first = _ready_object(keyrotor)
    iam = keyrotor.aws.client("iam")
    dead = first["accessKeyId"]
    if how == "deleted":
        iam.delete_access_key(UserName=user, AccessKeyId=dead)
    else:
        iam.update_access_key(UserName=user, AccessKeyId=dead, Status="Inactive")
    _new_report(keyrotor)

    ready = _warning(keyrotor, ns, "DeadKey", dead)
    assert how in ready.message
    _warning(keyrotor, ns, "RotationRequested", f"{dead} was {how}")
    healed = _healed(keyrotor, ns, user, dead)
    assert healed["previousKey"] == {
        "accessKeyId": dead,
        "state": "Deleted" if how == "deleted" else "Inactive",
    }
    keys = keyrotor.user_keys(user)
    assert keys[healed["accessKeyId"]] == "Active"
    assert keys.get(dead) == (None if how == "deleted" else "Inactive")


def test_deleted_user_is_reported_and_nothing_is_rotated(keyrotor: Harness) -> None:
    ns, user, first = _ready_object(keyrotor)
    iam = keyrotor.aws.client("iam")
    rotations = len(keyrotor.aws.rotations_of(first["secretArn"]))
    iam.delete_access_key(UserName=user, AccessKeyId=first["accessKeyId"])
    tags = [t["Key"] for t in iam.list_user_tags(UserName=user)["Tags"]]
    iam.untag_user(UserName=user, TagKeys=tags)
    iam.delete_user(UserName=user)
    _new_report(keyrotor)

    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "UserNotFound")
    assert repr(user) in keyrotor.condition(obj, "Ready")["message"]
    _warning(keyrotor, ns, "UserNotFound", user)
    keyrotor.aws.wait_for_rotations()
    assert len(keyrotor.aws.rotations_of(first["secretArn"])) == rotations


def test_rotation_lambda_deleted_out_of_band_comes_back_by_itself(keyrotor: Harness) -> None:
    """Issue 8 (4): the installation is checked at a fixed period (--installation-recheck 3s
    here), not only when an object's event happens to come."""
    ns, user, first = _ready_object(keyrotor)
    lam = keyrotor.aws.client("lambda")
    function = f"keyrotor-{keyrotor.cluster_name}-rotation"
    lam.delete_function(FunctionName=function)

    def back() -> str | None:
        try:
            return str(lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"])
        except lam.exceptions.ResourceNotFoundException:
            return None

    assert keyrotor.wait(back, what="the rotation Lambda put back") == first["lambdaArn"]
    obj = keyrotor.get(ns, "app")
    assert obj is not None and obj["metadata"]["generation"] == 1  # nobody touched the object
    # Secrets Manager can rotate again with it.
    keyrotor.aws.client("secretsmanager").rotate_secret(SecretId=first["secretArn"])
    _healed(keyrotor, ns, user, first["accessKeyId"])
