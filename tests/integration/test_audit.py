"""``keyrotor audit`` as a user runs it (its own process, boto3's chain pointed at the emulator),
on an account holding keys of known ages: 1, 89, 91 and 400 days, managed by keyrotor or not.

The verdicts are AWS Security Hub IAM.3's: an active key older than 90 days is a violation,
inactive keys are not judged.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyrotor.model import TAG_CLUSTER, TAG_IAM_USER, TAG_NAME, TAG_NAMESPACE, TAG_UID
from keyrotor_sandbox.aws import AwsEmulator
from tests.fixtures.aws import deploy_rotation_lambda

# user -> (age of its active key in days, managed by keyrotor as <cluster>/<namespace>/<name>)
KEYS = {
    "fresh-unmanaged": (1, None),
    "almost-due-managed": (89, "prod/team-a/almost-due"),
    "just-over-managed": (91, "prod/team-a/just-over"),
    "ancient-unmanaged": (400, None),
    # Its object was deleted with deletionPolicy Retain: the secret stays, its rotation is off.
    "retained-managed": (30, "prod/team-b/retired"),
}
RETAINED = "retained-managed"
EXPECTED = {
    "fresh-unmanaged": ("ok", None),
    "retained-managed": ("ok", None),
    "almost-due-managed": ("ok", None),
    "just-over-managed": ("violation", "IAM.3"),
    "ancient-unmanaged": ("violation", "IAM.3"),
    "retired-inactive": ("inactive", None),  # 400 days old, but inactive: not judged
}


@pytest.fixture
def account(aws: AwsEmulator) -> Iterator[AwsEmulator]:
    """An account holding exactly the keys above, and a report that predates none of them."""
    aws.reset()  # the audit sees the whole account: start from an empty one
    function_arn = deploy_rotation_lambda(aws)
    iam, sm = aws.client("iam"), aws.client("secretsmanager")
    now = datetime.now(UTC)
    for user, (days, managed) in KEYS.items():
        aws.create_iam_user(user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        aws.age_access_key(
            key["AccessKeyId"],
            created=now - timedelta(days=days),
            last_used=now - timedelta(days=1),
        )
        if managed:
            cluster, namespace, name = managed.split("/")
            sm.create_secret(
                Name=f"keyrotor/{cluster}/{namespace}/{name}",
                SecretString=json.dumps({"username": user}),
                Tags=[
                    {"Key": TAG_CLUSTER, "Value": cluster},
                    {"Key": TAG_NAMESPACE, "Value": namespace},
                    {"Key": TAG_NAME, "Value": name},
                    {"Key": TAG_UID, "Value": "00000000-0000-0000-0000-000000000000"},
                    {"Key": TAG_IAM_USER, "Value": user},
                ],
            )
            if user != RETAINED:  # as the operator leaves it: rotation on, its own function
                sm.rotate_secret(
                    SecretId=f"keyrotor/{cluster}/{namespace}/{name}",
                    RotationLambdaARN=function_arn,
                    RotationRules={"ScheduleExpression": "rate(30 days)"},
                    RotateImmediately=False,
                )
    aws.create_iam_user("retired-inactive")
    old = iam.create_access_key(UserName="retired-inactive")["AccessKey"]
    aws.age_access_key(old["AccessKeyId"], created=now - timedelta(days=400))
    iam.update_access_key(
        UserName="retired-inactive", AccessKeyId=old["AccessKeyId"], Status="Inactive"
    )
    aws.create_iam_user("no-keys")
    # A secret of another tool (no keyrotor tags) does not make its user managed.
    sm.create_secret(Name="other/ancient", SecretString="{}", Tags=[{"Key": "team", "Value": "x"}])
    yield aws
    aws.reset()


def audit(aws: AwsEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyrotor.cli", "audit", *args],
        env={**_base_env(), **aws.environ()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KEYROTOR_"))}


def _by_user(keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert len({k["user"] for k in keys}) == len(keys), "one key per user here"
    return {k["user"]: k for k in keys}


def test_json_verdicts_follow_iam3_and_managed_keys_name_their_object(account: AwsEmulator) -> None:
    result = audit(account, "--output", "json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["maxAgeDays"] == 90
    assert document["violations"] == 2
    keys = _by_user(document["keys"])
    assert set(keys) == set(EXPECTED)  # every key, no user without one, the root has none
    for user, (verdict, rule) in EXPECTED.items():
        assert (keys[user]["verdict"], keys[user]["rule"]) == (verdict, rule), user
    for user, (days, managed) in KEYS.items():
        assert keys[user]["ageDays"] == days
        assert keys[user]["state"] == "Active"
        if user == RETAINED:
            managed = f"{managed} (rotation off)"
        assert keys[user]["managedBy"] == ([managed] if managed else [])
        assert keys[user]["lastUsed"] is not None
        assert keys[user]["arn"].endswith(f":user/{user}")
    assert keys["retired-inactive"]["state"] == "Inactive"
    assert keys["retired-inactive"]["lastUsed"] is None


def test_table_is_the_default_and_ends_with_a_summary(account: AwsEmulator) -> None:
    result = audit(account)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "USER", "SLOT", "STATE", "AGE", "DAYS", "LAST", "ROTATED", "LAST", "USED", "MANAGED",
        "BY", "VERDICT", "RULE",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and line[0] != " "}
    assert rows["just-over-managed"][-2:] == ["VIOLATION", "IAM.3"]
    assert "prod/team-a/just-over" in rows["just-over-managed"]
    assert rows["almost-due-managed"][-1] == "OK"
    assert rows["fresh-unmanaged"][-2:] == ["-", "OK"]
    assert rows["retired-inactive"][-1] == "INACTIVE"
    assert rows[RETAINED][-3:] == ["(rotation", "off)", "OK"]
    assert "6 access keys (3 managed by keyrotor); violations: 2" in lines[-1]


def test_csv_has_one_row_per_key(account: AwsEmulator) -> None:
    result = audit(account, "--output", "csv")
    assert result.returncode == 1, result.stderr
    rows = {row["user"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == set(EXPECTED)
    for user, (verdict, rule) in EXPECTED.items():
        assert (rows[user]["verdict"], rows[user]["rule"]) == (verdict, rule or "")
    assert rows["ancient-unmanaged"]["age_days"] == "400"
    assert rows["almost-due-managed"]["managed_by"] == "prod/team-a/almost-due"
    assert rows["fresh-unmanaged"]["managed_by"] == ""


def test_no_violation_exits_zero(account: AwsEmulator) -> None:
    result = audit(account, "--max-age-days", "500", "--output", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["violations"] == 0


def test_an_aws_error_exits_two_with_one_line(account: AwsEmulator) -> None:
    account.faults.fail("GetCredentialReport", times=10)
    result = audit(account)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "keyrotor audit: GetCredentialReport: AccessDenied: "
        "keyrotor sandbox: injected fault in GetCredentialReport"
    ]


def test_a_report_still_generating_after_wait_exits_two(account: AwsEmulator) -> None:
    account.credential_report_seconds = 3600.0
    try:
        result = audit(account, "--wait", "1")
    finally:
        account.credential_report_seconds = 0.0
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("keyrotor audit: IAM had not finished generating the credential report")


def test_the_report_is_generated_when_needed_and_waited_for(account: AwsEmulator) -> None:
    account.calls.reset()
    result = audit(account, "--output", "json")
    assert result.returncode == 1, result.stderr
    calls = account.calls.pairs()
    # No report yet: one generation, then Get until ready; one ListSecrets; nothing per user.
    assert calls[:2] == [("iam", "GetCredentialReport"), ("iam", "GenerateCredentialReport")]
    assert calls[-1] == ("secretsmanager", "ListSecrets")
    assert {op for _, op in calls} == {
        "GetCredentialReport",
        "GenerateCredentialReport",
        "ListSecrets",
    }
    # A second audit within four hours reuses the report: two calls in all.
    account.calls.reset()
    assert audit(account, "--output", "csv").returncode == 1
    assert account.calls.pairs() == [
        ("iam", "GetCredentialReport"),
        ("secretsmanager", "ListSecrets"),
    ]
