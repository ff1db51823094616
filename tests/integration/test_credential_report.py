"""keyrotor.aws.credential_report against the AWS emulator (whose report is AWS's: fix 9)."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta

from keyrotor.aws.credential_report import fetch_report, key_created, key_state
from keyrotor_sandbox.aws import AwsEmulator


def _no_report_younger_than_four_hours(aws: AwsEmulator) -> None:
    with contextlib.suppress(KeyError):
        aws.age_credential_report(timedelta(hours=5))


def test_fetch_report_starts_a_generation_then_returns_the_report(
    aws: AwsEmulator, iam_user: str
) -> None:
    iam = aws.client("iam")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    _no_report_younger_than_four_hours(aws)
    aws.calls.reset()

    assert fetch_report(iam, now=datetime.now(UTC)) is None  # too old: a new one is started
    assert aws.calls.pairs() == [
        ("iam", "GetCredentialReport"),
        ("iam", "GenerateCredentialReport"),
    ]
    aws.calls.reset()
    report = fetch_report(iam, now=datetime.now(UTC))
    assert report is not None
    assert aws.calls.pairs() == [("iam", "GetCredentialReport")]  # one call, any number of users
    assert key_state(report, iam_user, key["CreateDate"]) == "active"


def test_fetch_report_says_not_ready_while_in_progress_and_never_sleeps(
    aws: AwsEmulator, iam_user: str
) -> None:
    iam = aws.client("iam")
    _no_report_younger_than_four_hours(aws)
    aws.credential_report_seconds = 3600.0
    try:
        assert fetch_report(iam, now=datetime.now(UTC)) is None  # started
        aws.calls.reset()
        assert fetch_report(iam, now=datetime.now(UTC)) is None  # in progress
        assert aws.calls.pairs() == [("iam", "GetCredentialReport")]
        aws.age_credential_report(timedelta(hours=1))
        assert fetch_report(iam, now=datetime.now(UTC)) is not None
    finally:
        aws.credential_report_seconds = 0.0


def test_a_report_within_max_age_is_used_as_is(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    _no_report_younger_than_four_hours(aws)
    fetch_report(iam, now=datetime.now(UTC))
    first = fetch_report(iam, now=datetime.now(UTC))
    assert first is not None
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    aws.age_credential_report(timedelta(hours=1))
    aws.calls.reset()

    again = fetch_report(iam, now=datetime.now(UTC))
    assert again is not None and again.generated == first.generated - timedelta(hours=1)
    assert aws.calls.pairs() == [("iam", "GetCredentialReport")]
    # The snapshot predates the key: it cannot say, and says so.
    assert key_state(again, iam_user, key["CreateDate"]) == "unknown"
    # Asking for a fresher one within AWS's four hours still gets this one (COMPLETE).
    aws.calls.reset()
    fresher = fetch_report(iam, now=datetime.now(UTC), max_age=timedelta(minutes=5))
    assert fresher is not None and fresher.generated == again.generated
    assert aws.calls.pairs() == [
        ("iam", "GetCredentialReport"),
        ("iam", "GenerateCredentialReport"),
    ]


def test_deleted_and_deactivated_keys_and_deleted_users_are_seen(aws: AwsEmulator) -> None:
    iam = aws.client("iam")
    hour_ago = datetime.now(UTC) - timedelta(hours=1)  # keys older than the report's second
    users = {}
    for role in ("deactivated", "deleted", "gone"):
        name = f"{role}-{uuid.uuid4().hex[:12]}"
        aws.create_iam_user(name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        aws.age_access_key(key["AccessKeyId"], created=hour_ago)
        users[role] = (name, hour_ago)
    keys = {
        role: iam.list_access_keys(UserName=name)["AccessKeyMetadata"][0]
        for role, (name, _) in users.items()
    }
    iam.update_access_key(
        UserName=users["deactivated"][0],
        AccessKeyId=keys["deactivated"]["AccessKeyId"],
        Status="Inactive",
    )
    iam.delete_access_key(UserName=users["deleted"][0], AccessKeyId=keys["deleted"]["AccessKeyId"])
    iam.delete_access_key(UserName=users["gone"][0], AccessKeyId=keys["gone"]["AccessKeyId"])
    iam.delete_user(UserName=users["gone"][0])
    _no_report_younger_than_four_hours(aws)
    fetch_report(iam, now=datetime.now(UTC))
    report = fetch_report(iam, now=datetime.now(UTC))
    assert report is not None
    states = {role: key_state(report, name, created) for role, (name, created) in users.items()}
    assert states == {"deactivated": "inactive", "deleted": "gone", "gone": "user-gone"}


def test_key_created_is_what_the_report_knows_the_key_by(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    aws.age_access_key(key["AccessKeyId"], created=datetime.now(UTC) - timedelta(days=3))
    created = key_created(iam, iam_user, key["AccessKeyId"])
    assert created is not None and created.microsecond == 0
    _no_report_younger_than_four_hours(aws)
    fetch_report(iam, now=datetime.now(UTC))
    report = fetch_report(iam, now=datetime.now(UTC))
    assert report is not None
    assert key_state(report, iam_user, created) == "active"
    assert key_created(iam, iam_user, "AKIANOSUCHKEY0000000") is None
    assert key_created(iam, "no-such-user-" + uuid.uuid4().hex[:8], key["AccessKeyId"]) is None
