"""The rotation Lambda's steps against in-process moto (mock_aws).

Secrets carry the operator's tags (the IAM user, the installation) unless a test says otherwise.
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
from datetime import UTC, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core.utils import utcnow
from moto.iam.models import iam_backends
from moto.secretsmanager.models import secretsmanager_backends

from keyrotor import model, rotation_lambda
from keyrotor.rotation_lambda import KEY_IN_USE_PREFIX, KeyInUseError, RotationError, lambda_handler

ACCOUNT, REGION = "123456789012", "us-east-1"
CLUSTER = "t"
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


def make_secret(
    value: dict[str, Any] | str,
    name: str = "keyrotor/t/alice",
    *,
    tags: dict[str, str] | None = None,
) -> str:
    """A secret as the operator makes it: tagged with its IAM user and installation."""
    text = value if isinstance(value, str) else json.dumps(value)
    if tags is None:
        try:
            user = str(json.loads(text).get("username", "alice"))
        except ValueError:
            user = "alice"
        tags = {model.TAG_IAM_USER: user, model.TAG_CLUSTER: CLUSTER}
    return str(
        sm().create_secret(
            Name=name,
            SecretString=text,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["ARN"]
    )


def store_current(arn: str, value: dict[str, Any]) -> None:
    """A new AWSCURRENT value, as a finished rotation leaves it: the old one becomes AWSPREVIOUS."""
    sm().put_secret_value(SecretId=arn, SecretString=json.dumps(value))


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


def test_the_new_keys_create_date_is_stored_beside_it() -> None:
    """``keycreated`` names the new key and IAM's CreateDate for it; one a function copied over
    from the previous value (as the classic one copies every field) is replaced."""
    make_user()
    old = make_key("alice")
    stale = {"accesskey": old["accesskey"], "createdate": "2020-01-01T00:00:00Z"}
    arn = make_secret({"username": "alice", **old, "keycreated": stale})
    token = start_rotation(arn)
    run(arn, token)
    value = current(arn)
    listed = iam().list_access_keys(UserName="alice")["AccessKeyMetadata"]
    created = next(k["CreateDate"] for k in listed if k["AccessKeyId"] == value["accesskey"])
    assert value["keycreated"] == {
        "accesskey": value["accesskey"],
        "createdate": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert set(value) == {"username", "accesskey", "secretkey", "keycreated"}


def test_create_secret_is_idempotent_per_token() -> None:
    make_user()
    arn = make_secret({"username": "alice", **make_key("alice")})
    token = start_rotation(arn)
    run(arn, token, "createSecret")
    pending = sm().get_secret_value(SecretId=arn, VersionId=token)["SecretString"]
    run(arn, token, "createSecret")
    assert sm().get_secret_value(SecretId=arn, VersionId=token)["SecretString"] == pending
    assert len(keys()) == 2


def test_the_previous_key_makes_room_and_the_current_key_survives() -> None:
    make_user()
    previous = make_key("alice", days_old=2)
    first = make_key("alice")
    arn = make_secret({"username": "alice", **previous})
    store_current(arn, {"username": "alice", **first})
    token = start_rotation(arn)
    run(arn, token)
    new = current(arn)["accesskey"]
    assert keys() == {first["accesskey"]: "Active", new: "Active"}
    assert previous["accesskey"] not in keys()


def test_an_active_key_that_is_not_the_previous_one_stops_the_rotation() -> None:
    """Issue 8: a key this secret did not make (another secret's, a hand-made one) may be in
    use; at the two-key limit it is named, never deleted."""
    make_user()
    first = make_key("alice", days_old=3)
    arn = make_secret({"username": "alice", **first})
    foreign = make_key("alice")  # not in any version of this secret
    token = start_rotation(arn)
    with pytest.raises(KeyInUseError) as refused:
        run(arn, token, "createSecret")
    message = str(refused.value)
    assert message.startswith(f"{KEY_IN_USE_PREFIX} {foreign['accesskey']} of IAM user alice")
    assert arn in message and "update-access-key" in message
    assert first["accesskey"] not in message.split(":")[0]  # the current key is not blamed
    assert foreign["secretkey"] not in message and first["secretkey"] not in message
    assert keys() == {first["accesskey"]: "Active", foreign["accesskey"]: "Active"}
    assert stages(arn)[token] == ["AWSPENDING"]
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        sm().get_secret_value(SecretId=arn, VersionId=token)  # nothing was stored


def test_a_retained_secret_never_deletes_the_key_another_secret_serves() -> None:
    """Issue 8 case 1: a retained secret's schedule fires after a new object took the user."""
    make_user()
    old_previous = make_key("alice", days_old=5)
    retained_current = make_key("alice", days_old=4)
    retained = make_secret({"username": "alice", **old_previous}, name="keyrotor/t/old/alice")
    store_current(retained, {"username": "alice", **retained_current})
    iam().delete_access_key(UserName="alice", AccessKeyId=old_previous["accesskey"])
    serving = make_key("alice", days_old=1)  # the new object's secret holds this one
    make_secret({"username": "alice", **serving}, name="keyrotor/t/new/alice")
    with pytest.raises(KeyInUseError, match=serving["accesskey"]):
        run(retained, start_rotation(retained), "createSecret")
    assert keys() == {retained_current["accesskey"]: "Active", serving["accesskey"]: "Active"}


def test_the_key_of_a_rotation_that_stopped_may_go() -> None:
    """A rotation that stopped after createSecret leaves its key in a version that never became
    current; the operator takes AWSPENDING off it and rotates again, and that key makes room."""
    make_user()
    first = make_key("alice", days_old=2)
    arn = make_secret({"username": "alice", **first})
    failed = start_rotation(arn)
    run(arn, failed, "createSecret")
    stopped_key = json.loads(sm().get_secret_value(SecretId=arn, VersionId=failed)["SecretString"])
    sm().update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=failed
    )
    for stored in iam_backends[ACCOUNT]["aws"].users["alice"].access_keys:
        stored.create_date = utcnow() - timedelta(days=1)  # not an orphan of the next token
    run(arn, start_rotation(arn))
    assert set(keys()) == {first["accesskey"], current(arn)["accesskey"]}
    assert stopped_key["accesskey"] not in keys()


def test_an_inactive_key_goes_before_the_previous_key() -> None:
    make_user()
    previous = make_key("alice", days_old=3)
    first = make_key("alice", days_old=2)
    arn = make_secret({"username": "alice", **previous})
    store_current(arn, {"username": "alice", **first})
    iam().update_access_key(UserName="alice", AccessKeyId=previous["accesskey"], Status="Inactive")
    run(arn, start_rotation(arn))
    assert set(keys()) == {first["accesskey"], current(arn)["accesskey"]}


def test_the_previous_key_may_go_when_the_current_key_is_gone() -> None:
    make_user()
    previous = make_key("alice", days_old=3)
    first = make_key("alice", days_old=2)
    arn = make_secret({"username": "alice", **previous})
    store_current(arn, {"username": "alice", **first})
    iam().delete_access_key(UserName="alice", AccessKeyId=first["accesskey"])  # out of band
    foreign = make_key("alice")["accesskey"]
    run(arn, start_rotation(arn))
    assert set(keys()) == {foreign, current(arn)["accesskey"]}


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
    with pytest.raises(KeyInUseError) as refused:
        run(arn, token, "createSecret")
    assert str(refused.value).startswith(f"{KEY_IN_USE_PREFIX} {', '.join(sorted((one, two)))}")
    assert "alice" in str(refused.value)
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


@pytest.mark.parametrize(
    "master_tags",
    [
        {model.TAG_IAM_USER: "admin", model.TAG_CLUSTER: "other"},
        {model.TAG_IAM_USER: "admin"},
        {},
    ],
    ids=["other installation", "no installation tag", "untagged"],
)
def test_a_master_secret_of_another_installation_is_never_used(
    master_tags: dict[str, str],
) -> None:
    """Issue 9: masterarn names only a secret of the same installation (its cluster tag)."""
    make_user("admin")
    make_user()
    admin = make_key("admin")
    master = make_secret({"username": "admin", **admin}, name="elsewhere/admin", tags=master_tags)
    arn = make_secret({"username": "alice", "masterarn": master})
    token = start_rotation(arn)
    with pytest.raises(RotationError) as refused:
        run(arn, token, "createSecret")
    message = str(refused.value)
    assert "not a secret of the same keyrotor installation" in message and master in message
    assert admin["secretkey"] not in message
    assert keys() == {} and keys("admin") == {admin["accesskey"]: "Active"}


def test_a_missing_master_secret_is_named() -> None:
    make_user()
    missing = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:keyrotor/t/gone-AbCdEf"
    arn = make_secret({"username": "alice", "masterarn": missing})
    with pytest.raises(RotationError, match="does not exist"):
        run(arn, start_rotation(arn), "createSecret")
    assert keys() == {}


@pytest.mark.parametrize("step", ["createSecret", "testSecret"])
@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({model.TAG_IAM_USER: "alice", model.TAG_CLUSTER: CLUSTER}, "is tagged"),
        ({model.TAG_CLUSTER: CLUSTER}, "has no tag"),
    ],
    ids=["tag names another user", "no user tag"],
)
def test_a_username_the_secret_was_not_tagged_for_is_refused_first(
    step: str, tags: dict[str, str], expected: str
) -> None:
    """Issue 9: writing ``username`` into a secret value does not get keys minted for that user."""
    make_user()
    make_user("admin")
    arn = make_secret({"username": "alice", **make_key("alice")}, tags=tags)
    if step == "testSecret":  # a pending version exists: only testSecret's own check stops it
        sm().tag_resource(SecretId=arn, Tags=[{"Key": model.TAG_IAM_USER, "Value": "alice"}])
        token = start_rotation(arn)
        run(arn, token, "createSecret")
        if expected == "has no tag":
            sm().untag_resource(SecretId=arn, TagKeys=[model.TAG_IAM_USER])
    else:
        token = start_rotation(arn)
    store_current(arn, {"username": "admin"})  # an attacker rewrites the value
    before = keys("admin"), keys()
    with pytest.raises(RotationError, match=expected) as refused:
        run(arn, token, step)
    assert "admin" in str(refused.value)
    assert (keys("admin"), keys()) == before


def test_the_lambdas_tag_names_are_the_operators() -> None:
    assert rotation_lambda.TAG_IAM_USER == model.TAG_IAM_USER
    assert rotation_lambda.TAG_CLUSTER == model.TAG_CLUSTER


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
