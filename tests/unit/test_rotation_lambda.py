"""The rotation Lambda's steps against in-process moto (mock_aws).

Rotation is started by writing moto's state directly (a version carrying AWSPENDING, rotation
enabled), as Secrets Manager does before it invokes the function; plain moto would try Docker.
Keys are dated a day back in moto's state, since plain moto reports a version's CreatedDate as
"now" (the emulator restores the real date; the orphan sweep is covered by the fault matrix).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core.utils import utcnow
from moto.iam.models import iam_backends
from moto.secretsmanager.models import secretsmanager_backends

from keyrotor.rotation_lambda import RotationError, lambda_handler

ACCOUNT, REGION = "123456789012", "us-east-1"
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


@pytest.fixture(autouse=True)
def _aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("KEYROTOR_TEST_ATTEMPTS", "2")
    monkeypatch.setenv("KEYROTOR_TEST_BASE_DELAY_SECONDS", "0")
    with mock_aws():
        yield


def iam() -> Any:
    return boto3.client("iam", region_name=REGION)


def sm() -> Any:
    return boto3.client("secretsmanager", region_name=REGION)


def make_user(name: str = "alice") -> str:
    return str(iam().create_user(UserName=name)["User"]["Arn"])


def make_key(user: str, *, days_old: int = 1) -> dict[str, str]:
    key = iam().create_access_key(UserName=user)["AccessKey"]
    for stored in iam_backends[ACCOUNT]["aws"].users[user].access_keys:
        if stored.access_key_id == key["AccessKeyId"]:
            stored.create_date = utcnow() - timedelta(days=days_old)
    return {"accesskey": key["AccessKeyId"], "secretkey": key["SecretAccessKey"]}


def make_secret(value: dict[str, Any] | str, name: str = "keyrotor/t/alice") -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return str(sm().create_secret(Name=name, SecretString=text)["ARN"])


def start_rotation(arn: str) -> str:
    """What RotateSecret does before the first step: an AWSPENDING version with no value."""
    token = str(uuid.uuid4())
    secret = secretsmanager_backends[ACCOUNT][REGION].secrets[arn]
    secret.versions[token] = {
        "createdate": int(time.time()),
        "version_id": token,
        "version_stages": ["AWSPENDING"],
    }
    secret.rotation_requested = secret.rotation_enabled = True
    secret.rotation_lambda_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rotation"
    return token


def run(arn: str, token: str, *steps: str) -> None:
    for step in steps or STEPS:
        lambda_handler({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)


def current(arn: str) -> dict[str, Any]:
    return dict(
        json.loads(sm().get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"])
    )


def keys(user: str = "alice") -> dict[str, str]:
    listed = iam().list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {k["AccessKeyId"]: k["Status"] for k in listed}


def stages(arn: str) -> dict[str, list[str]]:
    return dict(sm().describe_secret(SecretId=arn)["VersionIdsToStages"])


def test_first_rotation_creates_the_first_key() -> None:
    user_arn = make_user()
    arn = make_secret({"username": "alice"})
    token = start_rotation(arn)
    run(arn, token)
    value = current(arn)
    assert value["username"] == "alice"
    assert keys() == {value["accesskey"]: "Active"}
    assert stages(arn)[token] == ["AWSCURRENT"]
    identity = boto3.client(
        "sts",
        region_name=REGION,
        aws_access_key_id=value["accesskey"],
        aws_secret_access_key=value["secretkey"],
    ).get_caller_identity()
    assert identity["Arn"] == user_arn


def test_create_secret_is_idempotent_per_token() -> None:
    make_user()
    arn = make_secret({"username": "alice", **make_key("alice")})
    token = start_rotation(arn)
    run(arn, token, "createSecret")
    pending = sm().get_secret_value(SecretId=arn, VersionId=token)["SecretString"]
    run(arn, token, "createSecret")
    assert sm().get_secret_value(SecretId=arn, VersionId=token)["SecretString"] == pending
    assert len(keys()) == 2


def test_the_non_current_key_makes_room_and_the_current_key_survives() -> None:
    make_user()
    first = make_key("alice")
    older = make_key("alice", days_old=2)
    arn = make_secret({"username": "alice", **first})
    token = start_rotation(arn)
    run(arn, token)
    new = current(arn)["accesskey"]
    assert keys() == {first["accesskey"]: "Active", new: "Active"}
    assert older["accesskey"] not in keys()


def test_an_inactive_key_counts_and_may_go() -> None:
    make_user()
    first = make_key("alice")
    inactive = make_key("alice", days_old=2)["accesskey"]
    iam().update_access_key(UserName="alice", AccessKeyId=inactive, Status="Inactive")
    arn = make_secret({"username": "alice", **first})
    run(arn, start_rotation(arn))
    assert set(keys()) == {first["accesskey"], current(arn)["accesskey"]}


def test_two_active_keys_that_are_not_current_are_never_guessed_at() -> None:
    make_user()
    one, two = make_key("alice")["accesskey"], make_key("alice")["accesskey"]
    arn = make_secret({"username": "alice"})
    token = start_rotation(arn)
    with pytest.raises(RotationError) as refused:
        run(arn, token, "createSecret")
    assert "alice" in str(refused.value) and one in str(refused.value)
    assert keys() == {one: "Active", two: "Active"}
    assert stages(arn)[token] == ["AWSPENDING"]


def test_one_inactive_key_may_go_when_neither_is_current() -> None:
    make_user()
    active = make_key("alice")["accesskey"]
    inactive = make_key("alice")["accesskey"]
    iam().update_access_key(UserName="alice", AccessKeyId=inactive, Status="Inactive")
    arn = make_secret({"username": "alice"})
    run(arn, start_rotation(arn))
    assert set(keys()) == {active, current(arn)["accesskey"]}


def test_finish_secret_moves_awscurrent_and_leaves_no_awspending() -> None:
    make_user()
    arn = make_secret({"username": "alice", **make_key("alice")})
    old = sm().get_secret_value(SecretId=arn)["VersionId"]
    token = start_rotation(arn)
    run(arn, token)
    run(arn, token, "finishSecret")  # again: nothing changes
    assert stages(arn) == {old: ["AWSPREVIOUS"], token: ["AWSCURRENT"]}


def test_finish_secret_completes_a_half_done_finish() -> None:
    make_user()
    arn = make_secret({"username": "alice", **make_key("alice")})
    old = sm().get_secret_value(SecretId=arn)["VersionId"]
    token = start_rotation(arn)
    run(arn, token, "createSecret", "setSecret", "testSecret")
    sm().update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=old
    )
    run(arn, token, "finishSecret")
    assert stages(arn)[token] == ["AWSCURRENT"]


def test_test_secret_rejects_a_key_of_another_user() -> None:
    make_user()
    make_user("mallory")
    arn = make_secret({"username": "alice", **make_key("alice")})
    token = start_rotation(arn)
    run(arn, token, "createSecret")
    foreign = make_key("mallory")
    sm().update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=token
    )
    token = start_rotation(arn)
    sm().put_secret_value(
        SecretId=arn,
        ClientRequestToken=token,
        SecretString=json.dumps({"username": "alice", **foreign}),
        VersionStages=["AWSPENDING"],
    )
    with pytest.raises(RotationError) as refused:
        run(arn, token, "testSecret")
    assert "mallory" in str(refused.value) and foreign["secretkey"] not in str(refused.value)


def test_master_secret_credentials_manage_the_key() -> None:
    make_user("admin")
    make_user()
    master = make_secret({"username": "admin", **make_key("admin")}, name="keyrotor/t/admin")
    arn = make_secret({"username": "alice", "masterarn": master})
    run(arn, start_rotation(arn))
    assert current(arn)["masterarn"] == master
    assert set(keys()) == {current(arn)["accesskey"]}


def test_the_user_can_rotate_itself() -> None:
    make_user()
    first = make_key("alice")
    arn = make_secret({"username": "alice", **first})
    value = {"username": "alice", **first, "masterarn": arn}
    sm().put_secret_value(SecretId=arn, SecretString=json.dumps(value))
    run(arn, start_rotation(arn))
    assert current(arn)["masterarn"] == arn
    assert set(keys()) == {first["accesskey"], current(arn)["accesskey"]}


def test_no_secret_value_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    make_user()
    first = make_key("alice")
    arn = make_secret({"username": "alice", **first})
    caplog.set_level(logging.DEBUG, logger="keyrotor.rotation_lambda")
    run(arn, start_rotation(arn))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "createSecret" in text  # it did log
    for secret in (first["secretkey"], current(arn)["secretkey"]):
        assert secret not in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not json", "is not JSON"),
        ("no username", "has no 'username'"),
        ("unknown step", "unknown rotation step"),
        ("no such user", "does not exist"),
        ("unknown token", "does not exist"),
        ("token not pending", "is not AWSPENDING"),
        ("rotation not enabled", "rotation is not enabled"),
    ],
)
def test_malformed_input_fails_with_one_clear_error(case: str, expected: str) -> None:
    make_user()
    secret_value = (
        "hunter2-not-json"
        if case == "not json"
        else json.dumps(
            {
                "username": "nobody" if case == "no such user" else "alice",
                "secretkey": "s3cr3t-value",
            }
        )
    )
    if case == "no username":
        secret_value = json.dumps({"secretkey": "s3cr3t-value"})
    arn = make_secret(secret_value)
    token = start_rotation(arn)
    step = "createSecret"
    if case == "unknown step":
        step = "rotateEverything"
    elif case == "unknown token":
        token = str(uuid.uuid4())
    elif case == "token not pending":
        token = sm().get_secret_value(SecretId=arn)["VersionId"]
        sm().update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=start_rotation_other(arn),
            RemoveFromVersionId=token,
        )
    elif case == "rotation not enabled":
        secretsmanager_backends[ACCOUNT][REGION].secrets[arn].rotation_enabled = False
    with pytest.raises(RotationError) as failed:
        lambda_handler({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)
    message = str(failed.value)
    assert expected in message
    assert "s3cr3t-value" not in message and "hunter2" not in message
    if case not in ("unknown step",):
        assert arn in message


def start_rotation_other(arn: str) -> str:
    """A second version with a value, to move AWSCURRENT onto."""
    return str(
        sm().put_secret_value(SecretId=arn, SecretString="{}", VersionStages=["X"])["VersionId"]
    )
