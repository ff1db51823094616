"""One test per AWS behaviour the emulator restores (keyrotor_sandbox.aws), and its test tools."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from keyrotor.aws.lambda_package import HANDLER, build_zip
from keyrotor_sandbox.aws import LAMBDA_RETRIES, PREVIOUS_ROTATION_INCOMPLETE, AwsEmulator
from tests.fixtures.aws import create_user_secret

MARKER_HANDLER = textwrap.dedent(
    """
    import json
    import boto3

    MARKER = "{marker}"

    def lambda_handler(event, context):
        sm = boto3.client("secretsmanager")
        arn, token, step = event["SecretId"], event["ClientRequestToken"], event["Step"]
        if step == "createSecret":
            sm.put_secret_value(SecretId=arn, ClientRequestToken=token,
                                SecretString=json.dumps({{"marker": MARKER}}),
                                VersionStages=["AWSPENDING"])
        elif step == "finishSecret":
            stages = sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
            current = next(v for v, s in stages.items() if "AWSCURRENT" in s)
            sm.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT",
                                           MoveToVersionId=token, RemoveFromVersionId=current)
            sm.update_secret_version_stage(SecretId=arn, VersionStage="AWSPENDING",
                                           RemoveFromVersionId=token)
    """
)


def _stages(aws: AwsEmulator, arn: str) -> dict[str, list[str]]:
    return dict(aws.client("secretsmanager").describe_secret(SecretId=arn)["VersionIdsToStages"])


def _holder(stages: dict[str, list[str]], label: str) -> str | None:
    return next((v for v, s in stages.items() if label in s), None)


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def _marker_function(aws: AwsEmulator, marker: str) -> str:
    role = aws.client("iam").create_role(
        RoleName=f"marker-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    return str(
        aws.client("lambda").create_function(
            FunctionName=f"marker-{uuid.uuid4().hex[:8]}",
            Runtime="python3.12",
            Role=role,
            Handler=HANDLER,
            Code={"ZipFile": build_zip(MARKER_HANDLER.format(marker=marker).encode())},
        )["FunctionArn"]
    )


def _plain_secret(aws: AwsEmulator, value: str = "v1") -> str:
    name = f"plain/{uuid.uuid4().hex}"
    return str(aws.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"])


# 1. Rotation runs the uploaded Lambda


def test_rotate_secret_runs_the_uploaded_handler(aws: AwsEmulator) -> None:
    sm, lam = aws.client("secretsmanager"), aws.client("lambda")
    function = _marker_function(aws, "first upload")
    arn = _plain_secret(aws)
    token = str(uuid.uuid4())

    response = sm.rotate_secret(SecretId=arn, RotationLambdaARN=function, ClientRequestToken=token)
    assert response["VersionId"] == token
    aws.wait_for_rotations()
    assert json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]) == {
        "marker": "first upload"
    }
    assert sm.get_secret_value(SecretId=arn)["VersionId"] == token

    lam.update_function_code(
        FunctionName=function,
        ZipFile=build_zip(MARKER_HANDLER.format(marker="second upload").encode()),
    )
    sm.rotate_secret(SecretId=arn)
    aws.wait_for_rotations()
    assert json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]) == {
        "marker": "second upload"
    }
    steps = [r.invocations for r in aws.rotations_of(arn)]
    assert (
        steps
        == [[(s, True) for s in ("createSecret", "setSecret", "testSecret", "finishSecret")]] * 2
    )


def test_failing_step_is_retried_then_stops(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm = aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)
    before = _stages(aws, arn)
    aws.faults.crash_lambda("testSecret", times=LAMBDA_RETRIES + 1)

    token = sm.rotate_secret(SecretId=arn, RotationLambdaARN=rotation_lambda_arn)["VersionId"]
    aws.wait_for_rotations()

    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is False and rotation.failed_step == "testSecret"
    assert rotation.invocations == [
        ("createSecret", True),
        ("setSecret", True),
        *[("testSecret", False)] * (LAMBDA_RETRIES + 1),
    ]
    after = _stages(aws, arn)
    assert _holder(after, "AWSCURRENT") == _holder(before, "AWSCURRENT")
    assert _holder(after, "AWSPENDING") == token


def test_failing_step_recovers_on_lambda_retry(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm = aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)
    aws.faults.crash_lambda("finishSecret")
    token = sm.rotate_secret(SecretId=arn, RotationLambdaARN=rotation_lambda_arn)["VersionId"]
    aws.wait_for_rotations()
    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is True
    assert rotation.invocations[-2:] == [("finishSecret", False), ("finishSecret", True)]
    assert _stages(aws, arn)[token] == ["AWSCURRENT"]


# 2. RotateSecret refuses while a rotation is incomplete


def test_rotate_secret_refuses_while_previous_rotation_is_incomplete(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm = aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)
    aws.faults.crash_lambda("createSecret", times=LAMBDA_RETRIES + 1)
    failed = sm.rotate_secret(SecretId=arn, RotationLambdaARN=rotation_lambda_arn)["VersionId"]
    aws.wait_for_rotations()

    with pytest.raises(ClientError) as refused:
        sm.rotate_secret(SecretId=arn)
    assert _code(refused) == "InvalidRequestException"
    assert PREVIOUS_ROTATION_INCOMPLETE in str(refused.value)

    # What the operator does: take AWSPENDING off the failed version, then rotate again.
    sm.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=failed
    )
    second = sm.rotate_secret(SecretId=arn)["VersionId"]
    aws.wait_for_rotations()
    third = sm.rotate_secret(SecretId=arn)["VersionId"]  # after a clean rotation: allowed
    aws.wait_for_rotations()
    stages = _stages(aws, arn)
    assert stages[third] == ["AWSCURRENT"] and stages[second] == ["AWSPREVIOUS"]
    assert _holder(stages, "AWSPENDING") is None


# 3. The AWSCURRENT version is the default version


def test_get_secret_value_follows_awscurrent_after_stage_move(aws: AwsEmulator) -> None:
    sm = aws.client("secretsmanager")
    arn = _plain_secret(aws, "old")
    first = sm.get_secret_value(SecretId=arn)["VersionId"]
    second = sm.put_secret_value(SecretId=arn, SecretString="new", VersionStages=["STAGED"])[
        "VersionId"
    ]
    sm.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=second, RemoveFromVersionId=first
    )
    assert sm.get_secret_value(SecretId=arn)["SecretString"] == "new"
    batch = sm.batch_get_secret_value(SecretIdList=[arn])["SecretValues"]
    assert [(v["VersionId"], v["SecretString"]) for v in batch] == [(second, "new")]
    # and a later PutSecretValue(AWSCURRENT) demotes the right version
    third = sm.put_secret_value(SecretId=arn, SecretString="newer")["VersionId"]
    stages = _stages(aws, arn)
    assert stages[third] == ["AWSCURRENT"] and "AWSPREVIOUS" in stages[second]


def test_plain_moto_still_returns_the_old_value_after_stage_move() -> None:
    """Why fix 3 exists: moto 5.2.5 alone gets it wrong (when this fails, drop fix 3)."""
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        arn = sm.create_secret(Name="plain", SecretString="old")["ARN"]
        first = sm.get_secret_value(SecretId=arn)["VersionId"]
        second = sm.put_secret_value(SecretId=arn, SecretString="new", VersionStages=["X"])[
            "VersionId"
        ]
        sm.update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=second,
            RemoveFromVersionId=first,
        )
        assert sm.get_secret_value(SecretId=arn)["SecretString"] == "old"


# 4. Rotation rules


@pytest.mark.parametrize(
    ("rules", "interval"),
    [
        ({"ScheduleExpression": "rate(10 days)", "Duration": "3h"}, timedelta(days=10)),
        ({"ScheduleExpression": "rate(4 hours)"}, timedelta(hours=4)),
        ({"AutomaticallyAfterDays": 30}, timedelta(days=30)),
        ({"ScheduleExpression": "cron(0 4 1 * ? *)", "Duration": "2h"}, None),
    ],
)
def test_rotation_rules_are_reported(
    aws: AwsEmulator, rotation_lambda_arn: str, rules: dict[str, Any], interval: timedelta | None
) -> None:
    sm = aws.client("secretsmanager")
    arn = _plain_secret(aws)
    start = datetime.now(UTC).replace(microsecond=0)
    sm.rotate_secret(
        SecretId=arn,
        RotationLambdaARN=rotation_lambda_arn,
        RotationRules=rules,
        RotateImmediately=False,
    )
    end = datetime.now(UTC)
    described = sm.describe_secret(SecretId=arn)
    assert described["RotationEnabled"] is True
    assert described["RotationLambdaARN"] == rotation_lambda_arn
    assert described["RotationRules"] == rules
    if interval is None:
        assert described.get("NextRotationDate") is None
    else:
        assert start + interval <= described["NextRotationDate"] <= end + interval
    listed = sm.list_secrets(Filters=[{"Key": "name", "Values": [described["Name"]]}])
    assert listed["SecretList"][0]["RotationRules"] == rules


def test_invalid_schedule_is_refused(aws: AwsEmulator, rotation_lambda_arn: str) -> None:
    sm = aws.client("secretsmanager")
    with pytest.raises(ClientError) as refused:
        sm.rotate_secret(
            SecretId=_plain_secret(aws),
            RotationLambdaARN=rotation_lambda_arn,
            RotationRules={"ScheduleExpression": "every tuesday"},
        )
    assert _code(refused) == "InvalidParameterException"


def test_rotate_immediately_false_does_not_rotate(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm, iam = aws.client("secretsmanager"), aws.client("iam")
    arn = create_user_secret(aws, iam_user, with_key=True)
    before, keys = _stages(aws, arn), iam.list_access_keys(UserName=iam_user)["AccessKeyMetadata"]
    response = sm.rotate_secret(
        SecretId=arn,
        RotationLambdaARN=rotation_lambda_arn,
        RotationRules={"ScheduleExpression": "rate(1 days)"},
        RotateImmediately=False,
    )
    aws.wait_for_rotations()
    assert "VersionId" not in response
    assert aws.rotations_of(arn) == []
    assert _stages(aws, arn) == before
    assert iam.list_access_keys(UserName=iam_user)["AccessKeyMetadata"] == keys


# 5. Versions keep their creation date


def test_list_secret_version_ids_reports_creation_dates(aws: AwsEmulator) -> None:
    from moto.secretsmanager.models import secretsmanager_backends

    sm = aws.client("secretsmanager")
    arn = _plain_secret(aws)
    version = sm.get_secret_value(SecretId=arn)["VersionId"]
    # Date the version back directly in moto's state (no test can wait a day).
    secret = secretsmanager_backends[aws.account_id][aws.region].secrets[arn]
    secret.versions[version]["createdate"] = 1_600_000_000
    (listed,) = sm.list_secret_version_ids(SecretId=arn)["Versions"]
    assert listed["CreatedDate"] == datetime.fromtimestamp(1_600_000_000, UTC)


# 6. Access keys are authenticated


def test_deleted_and_inactive_keys_are_refused(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    creds = {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }
    sts, as_user = aws.client("sts", **creds), aws.client("iam", **creds)
    user_arn = iam.get_user(UserName=iam_user)["User"]["Arn"]

    assert sts.get_caller_identity()["Arn"] == user_arn
    assert as_user.get_user(UserName=iam_user)["User"]["Arn"] == user_arn

    iam.update_access_key(UserName=iam_user, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    for call in (sts.get_caller_identity, lambda: as_user.get_user(UserName=iam_user)):
        with pytest.raises(ClientError) as refused:
            call()
        assert _code(refused) == "InvalidClientTokenId"

    iam.update_access_key(UserName=iam_user, AccessKeyId=key["AccessKeyId"], Status="Active")
    assert sts.get_caller_identity()["Arn"] == user_arn

    iam.delete_access_key(UserName=iam_user, AccessKeyId=key["AccessKeyId"])
    with pytest.raises(ClientError) as refused:
        sts.get_caller_identity()
    assert _code(refused) == "InvalidClientTokenId"

    unknown = aws.client("sts", aws_access_key_id="AKIAXXXXXXXXXXXXXXXX", aws_secret_access_key="x")
    with pytest.raises(ClientError) as refused:
        unknown.get_caller_identity()
    assert _code(refused) == "InvalidClientTokenId"


def test_wrong_secret_is_refused(aws: AwsEmulator, iam_user: str) -> None:
    key = aws.client("iam").create_access_key(UserName=iam_user)["AccessKey"]
    good = {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }
    # Correctly signed requests pass in every wire protocol (query, JSON, REST-JSON).
    aws.client("sts", **good).get_caller_identity()
    aws.client("secretsmanager", **good).list_secrets()
    aws.client("lambda", **good).list_functions()

    wrong = dict(good, aws_secret_access_key=key["SecretAccessKey"][:-1] + "x")
    for service, call in (
        ("sts", lambda c: c.get_caller_identity()),
        ("secretsmanager", lambda c: c.list_secrets()),
    ):
        with pytest.raises(ClientError) as refused:
            call(aws.client(service, **wrong))
        assert _code(refused) == "SignatureDoesNotMatch"


# 7. The scheduler


def test_run_due_rotations_rotates_secrets_that_are_due(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm = aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)
    sm.rotate_secret(
        SecretId=arn,
        RotationLambdaARN=rotation_lambda_arn,
        RotationRules={"ScheduleExpression": "rate(1 days)"},
        RotateImmediately=False,
    )
    due = sm.describe_secret(SecretId=arn)["NextRotationDate"]
    before = _stages(aws, arn)

    assert arn not in aws.run_due_rotations(due - timedelta(seconds=1))
    assert arn in aws.run_due_rotations(due)
    aws.wait_for_rotations()

    after = sm.describe_secret(SecretId=arn)
    assert _holder(after["VersionIdsToStages"], "AWSCURRENT") not in before
    assert after["NextRotationDate"] > due - timedelta(days=1)
    assert after["LastRotatedDate"] is not None
    assert arn not in aws.run_due_rotations(due)  # rescheduled a day later


# 8. LastRotatedDate after AWSCURRENT


def test_last_rotated_date_is_recorded_after_awscurrent_moves(
    aws: AwsEmulator, iam_user: str, rotation_lambda_arn: str
) -> None:
    sm = aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)
    before = _stages(aws, arn)
    aws.record_rotation_delay = 2.0
    try:
        token = sm.rotate_secret(
            SecretId=arn,
            RotationLambdaARN=rotation_lambda_arn,
            RotationRules={"ScheduleExpression": "rate(1 days)"},
        )["VersionId"]
        deadline = time.monotonic() + 30
        while _holder(_stages(aws, arn), "AWSCURRENT") != token:
            assert time.monotonic() < deadline, "AWSCURRENT never moved"
            time.sleep(0.05)
        moved = sm.describe_secret(SecretId=arn)
        assert moved.get("LastRotatedDate") is None  # finishSecret done, rotation not recorded
        aws.wait_for_rotations()
    finally:
        aws.record_rotation_delay = 0.0
    assert token not in before
    assert sm.describe_secret(SecretId=arn)["LastRotatedDate"] is not None


# Test tools: fault injection and the call log


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [
        ("iam", lambda c: c.list_users(), "AccessDenied"),
        ("sts", lambda c: c.get_caller_identity(), "AccessDenied"),
        ("secretsmanager", lambda c: c.list_secrets(), "AccessDeniedException"),
        ("lambda", lambda c: c.list_functions(), "AccessDeniedException"),
    ],
)
def test_fault_speaks_each_wire_protocol(
    aws: AwsEmulator, service: str, call: Any, code: str
) -> None:
    operation = {
        "iam": "ListUsers",
        "sts": "GetCallerIdentity",
        "secretsmanager": "ListSecrets",
        "lambda": "ListFunctions",
    }[service]
    aws.faults.fail(operation)
    client = aws.client(service)
    with pytest.raises(ClientError) as failed:
        call(client)
    assert _code(failed) == code
    call(client)  # only the first call fails
    assert [f.operation for f in aws.faults.fired] == [operation]


def test_fault_before_means_nothing_happened(aws: AwsEmulator) -> None:
    name = f"u-{uuid.uuid4().hex[:10]}"
    aws.faults.fail("CreateUser", when="before")
    iam = aws.client("iam")
    with pytest.raises(ClientError):
        iam.create_user(UserName=name)
    with pytest.raises(ClientError) as missing:
        iam.get_user(UserName=name)
    assert _code(missing) == "NoSuchEntity"


def test_fault_after_is_a_lost_response(aws: AwsEmulator) -> None:
    name = f"u-{uuid.uuid4().hex[:10]}"
    aws.faults.fail("CreateUser", when="after")
    iam = aws.client("iam")
    with pytest.raises(ClientError):
        iam.create_user(UserName=name)
    assert iam.get_user(UserName=name)["User"]["UserName"] == name


def test_fault_hits_the_nth_call_only(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    aws.faults.fail("GetUser", nth=2)
    iam.get_user(UserName=iam_user)
    with pytest.raises(ClientError):
        iam.get_user(UserName=iam_user)
    iam.get_user(UserName=iam_user)


@pytest.mark.parametrize(
    ("service", "operation", "call", "code"),
    [
        ("secretsmanager", "ListSecrets", lambda c: c.list_secrets(), "ThrottlingException"),
        ("iam", "ListUsers", lambda c: c.list_users(), "Throttling"),
        ("lambda", "ListFunctions", lambda c: c.list_functions(), "TooManyRequestsException"),
    ],
)
def test_throttling_is_retried_by_botocore(
    aws: AwsEmulator, service: str, operation: str, call: Any, code: str
) -> None:
    aws.faults.fail(operation, error="ThrottlingException")
    aws.calls.reset()
    call(aws.client(service))  # botocore retries throttling by itself
    assert aws.calls.count(operation, service) == 2

    aws.faults.fail(operation, error="ThrottlingException")
    with pytest.raises(ClientError) as failed:
        call(aws.client(service, config=Config(retries={"total_max_attempts": 1})))
    assert _code(failed) == code


def test_call_log_records_and_resets(aws: AwsEmulator) -> None:
    aws.calls.reset()
    aws.client("iam").list_users()
    aws.client("secretsmanager").list_secrets()
    assert aws.calls.pairs() == [("iam", "ListUsers"), ("secretsmanager", "ListSecrets")]
    assert aws.calls.count("ListUsers") == 1
    aws.calls.reset()
    assert len(aws.calls) == 0


def test_environ_points_a_process_at_the_emulator(aws: AwsEmulator) -> None:
    env = aws.environ()
    assert env["AWS_ENDPOINT_URL"] == aws.endpoint_url
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert env["AWS_DEFAULT_REGION"] == aws.region == "us-east-1"
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    identity = session.client("sts", endpoint_url=env["AWS_ENDPOINT_URL"]).get_caller_identity()
    assert identity["Account"] == aws.account_id


# -- fix 9: the credential report ----------------------------------------------------------------

AWS_REPORT_COLUMNS = [
    "user",
    "arn",
    "user_creation_time",
    "password_enabled",
    "password_last_used",
    "password_last_changed",
    "password_next_rotation",
    "mfa_active",
    *(
        f"access_key_{n}_{column}"
        for n in (1, 2)
        for column in (
            "active",
            "last_rotated",
            "last_used_date",
            "last_used_region",
            "last_used_service",
        )
    ),
    "cert_1_active",
    "cert_1_last_rotated",
    "cert_2_active",
    "cert_2_last_rotated",
]


def _fresh_report(aws: AwsEmulator) -> dict[str, Any]:
    """Generate a new report now (older ones are dated back past AWS's four hours) and get it."""
    iam = aws.client("iam")
    with contextlib.suppress(KeyError):
        aws.age_credential_report(timedelta(hours=5))
    assert iam.generate_credential_report()["State"] == "STARTED"
    return dict(iam.get_credential_report())


def _report_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report["Content"].decode())))


def _second(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def test_credential_report_has_awss_rows_and_columns(aws: AwsEmulator) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    iam = aws.client("iam")
    both = f"user-{uuid.uuid4().hex[:12]}"  # two keys, the first deactivated, the second used
    aws.create_iam_user(both)
    first = iam.create_access_key(UserName=both)["AccessKey"]
    second = iam.create_access_key(UserName=both)["AccessKey"]
    iam.update_access_key(UserName=both, AccessKeyId=first["AccessKeyId"], Status="Inactive")
    boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name=aws.region,
        aws_access_key_id=second["AccessKeyId"],
        aws_secret_access_key=second["SecretAccessKey"],
    ).get_caller_identity()
    survivor = f"user-{uuid.uuid4().hex[:12]}"  # two keys, the first deleted
    aws.create_iam_user(survivor)
    deleted = iam.create_access_key(UserName=survivor)["AccessKey"]
    kept = iam.create_access_key(UserName=survivor)["AccessKey"]
    iam.delete_access_key(UserName=survivor, AccessKeyId=deleted["AccessKeyId"])

    report = _fresh_report(aws)
    assert report["ReportFormat"] == "text/csv"
    assert before - timedelta(seconds=1) <= report["GeneratedTime"] <= datetime.now(UTC)
    rows = _report_rows(report)
    assert list(rows[0]) == AWS_REPORT_COLUMNS
    root = rows[0]
    assert root["user"] == "<root_account>"
    assert root["arn"] == f"arn:aws:iam::{aws.account_id}:root"
    assert root["password_enabled"] == "not_supported"

    by_user = {row["user"]: row for row in rows}
    row = by_user[both]
    assert row["password_enabled"] == "false" and row["password_last_used"] == "N/A"
    assert (row["access_key_1_active"], row["access_key_2_active"]) == ("false", "true")
    assert row["access_key_1_last_rotated"] == _second(first["CreateDate"])
    assert row["access_key_2_last_rotated"] == _second(second["CreateDate"])
    assert row["access_key_1_last_used_date"] == "N/A"
    assert row["access_key_1_last_used_region"] == row["access_key_1_last_used_service"] == "N/A"
    assert row["access_key_2_last_used_date"] != "N/A"
    assert datetime.fromisoformat(row["access_key_2_last_used_date"]) >= before
    assert (row["access_key_2_last_used_region"], row["access_key_2_last_used_service"]) == (
        aws.region,
        "sts",
    )

    row = by_user[survivor]
    rotated = {row["access_key_1_last_rotated"], row["access_key_2_last_rotated"]}
    assert rotated == {_second(kept["CreateDate"]), "N/A"}
    slot = 1 if row["access_key_1_last_rotated"] != "N/A" else 2
    assert row[f"access_key_{slot}_active"] == "true"
    assert row[f"access_key_{3 - slot}_active"] == "false"


def test_plain_moto_credential_report_is_not_awss() -> None:
    """Why fix 9 exists: moto 5.2.5 alone (when this fails, look at fix 9 again)."""
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="u")
        iam.generate_credential_report()
        report = iam.get_credential_report()
        rows = list(csv.DictReader(io.StringIO(report["Content"].decode())))
    assert report["GeneratedTime"].year == 2015
    assert [row["user"] for row in rows] == ["u"]  # no <root_account>


def test_credential_report_is_a_snapshot_regenerated_after_four_hours(
    aws: AwsEmulator, iam_user: str
) -> None:
    iam = aws.client("iam")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    first = _fresh_report(aws)
    assert _second(key["CreateDate"]) in first["Content"].decode()

    iam.delete_access_key(UserName=iam_user, AccessKeyId=key["AccessKeyId"])
    aws.age_credential_report(timedelta(hours=3, minutes=59))
    assert iam.generate_credential_report()["State"] == "COMPLETE"  # not generated again
    same = iam.get_credential_report()
    assert same["GeneratedTime"] == first["GeneratedTime"] - timedelta(hours=3, minutes=59)
    assert same["Content"] == first["Content"]  # the snapshot still holds the deleted key

    aws.age_credential_report(timedelta(minutes=2))  # now older than four hours
    assert iam.generate_credential_report()["State"] == "STARTED"
    fresh = iam.get_credential_report()
    assert fresh["GeneratedTime"] > same["GeneratedTime"]
    row = next(r for r in _report_rows(fresh) if r["user"] == iam_user)
    assert row["access_key_1_last_rotated"] == row["access_key_2_last_rotated"] == "N/A"


def test_credential_report_is_in_progress_while_generated(aws: AwsEmulator) -> None:
    iam = aws.client("iam")
    with contextlib.suppress(KeyError):
        aws.age_credential_report(timedelta(hours=5))
    aws.credential_report_seconds = 3600.0
    try:
        assert iam.generate_credential_report()["State"] == "STARTED"
        assert iam.generate_credential_report()["State"] == "INPROGRESS"
        with pytest.raises(ClientError) as not_ready:
            iam.get_credential_report()
        assert _code(not_ready) == "ReportInProgress"
        assert not_ready.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert type(not_ready.value).__name__ == "CredentialReportNotReadyException"
        aws.age_credential_report(timedelta(hours=1))  # generation done
        assert iam.generate_credential_report()["State"] == "COMPLETE"
        assert _report_rows(iam.get_credential_report())[0]["user"] == "<root_account>"
    finally:
        aws.credential_report_seconds = 0.0


# -- fix 10: aged keys ---------------------------------------------------------------------------


def test_age_access_key_sets_create_date_and_last_use(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    now = datetime.now(UTC).replace(microsecond=0)
    created, used = now - timedelta(days=400), now - timedelta(days=3)
    aws.age_access_key(key["AccessKeyId"], created=created, last_used=used)

    listed = iam.list_access_keys(UserName=iam_user)["AccessKeyMetadata"]
    assert [k["CreateDate"] for k in listed] == [created]
    last_used = iam.get_access_key_last_used(AccessKeyId=key["AccessKeyId"])["AccessKeyLastUsed"]
    assert (last_used["LastUsedDate"], last_used["Region"]) == (used, aws.region)
    row = next(r for r in _report_rows(_fresh_report(aws)) if r["user"] == iam_user)
    assert row["access_key_1_last_rotated"] == _second(created)
    assert row["access_key_1_last_used_date"] == _second(used)
    with pytest.raises(KeyError):
        aws.age_access_key("AKIANOSUCHKEY0000000", created=created)


# -- fix 11: CreateDate to the second ----------------------------------------------------------


def test_access_key_create_date_is_to_the_second(aws: AwsEmulator, iam_user: str) -> None:
    iam = aws.client("iam")
    created = iam.create_access_key(UserName=iam_user)["AccessKey"]["CreateDate"]
    listed = iam.list_access_keys(UserName=iam_user)["AccessKeyMetadata"][0]["CreateDate"]
    assert created == listed
    assert created.microsecond == 0


def test_plain_moto_create_date_has_microseconds() -> None:
    """Why fix 11 exists (when this fails, drop fix 11)."""
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="u")
        dates = [iam.create_access_key(UserName="u")["AccessKey"]["CreateDate"] for _ in range(2)]
    assert any(date.microsecond for date in dates)


# -- fix 14: user names are not distinguished by case -------------------------------------------


def test_user_names_are_not_distinguished_by_case(aws: AwsEmulator) -> None:
    iam = aws.client("iam")
    created = f"Svc-{uuid.uuid4().hex[:8]}"
    other = created.lower()
    iam.create_user(UserName=created, Tags=[{"Key": "team", "Value": "a"}])
    with pytest.raises(ClientError) as refused:
        iam.create_user(UserName=other)
    assert _code(refused) == "EntityAlreadyExists"
    # Every call that names the user finds it whatever the spelling; GetUser answers with the
    # name as created.
    assert iam.get_user(UserName=other)["User"]["UserName"] == created
    assert iam.get_user(UserName=created.upper())["User"]["UserName"] == created
    iam.tag_user(UserName=other, Tags=[{"Key": "claim", "Value": "x"}])
    iam.untag_user(UserName=created.upper(), TagKeys=["team"])
    tags = iam.list_user_tags(UserName=other)["Tags"]
    assert tags == iam.list_user_tags(UserName=created)["Tags"] == [{"Key": "claim", "Value": "x"}]
    key = iam.create_access_key(UserName=other)["AccessKey"]
    assert key["UserName"] == created
    listed = iam.list_access_keys(UserName=created.upper())["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    assert listed[0]["UserName"] == created
    iam.update_access_key(UserName=other, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    assert iam.list_access_keys(UserName=created)["AccessKeyMetadata"][0]["Status"] == "Inactive"
    iam.delete_access_key(UserName=other, AccessKeyId=key["AccessKeyId"])
    assert iam.list_access_keys(UserName=created)["AccessKeyMetadata"] == []
    iam.delete_user(UserName=other)
    with pytest.raises(ClientError) as gone:
        iam.get_user(UserName=created)
    assert _code(gone) == "NoSuchEntity"


def test_plain_moto_user_names_are_case_sensitive() -> None:
    """Why fix 14 exists (when this fails, drop fix 14)."""
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="Svc")
        with pytest.raises(ClientError) as missing:
            iam.get_user(UserName="svc")
        iam.create_user(UserName="svc")  # a second user of the "same" name
        names = sorted(u["UserName"] for u in iam.list_users()["Users"])
    assert _code(missing) == "NoSuchEntity"
    assert names == ["Svc", "svc"]


# 12. Secrets Manager's events reach EventBridge (and a long poll does not stop the server)


def _rule_to_queue(aws: AwsEmulator, pattern: dict[str, Any]) -> str:
    """A rule on the default bus with a fresh queue as its target; the queue's URL."""
    name = f"ev-{uuid.uuid4().hex[:8]}"
    sqs, events = aws.client("sqs"), aws.client("events")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name=name, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


def _drain(aws: AwsEmulator, url: str) -> list[dict[str, Any]]:
    sqs, found = aws.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_rotation_emits_cloudtrail_events_to_eventbridge_rules(aws: AwsEmulator) -> None:
    arn = _plain_secret(aws)
    url = _rule_to_queue(aws, {"source": ["aws.secretsmanager"]})
    token = str(uuid.uuid4())
    aws.client("secretsmanager").rotate_secret(
        SecretId=arn,
        RotationLambdaARN=_marker_function(aws, "value-a7f3"),
        ClientRequestToken=token,
    )
    aws.wait_for_rotations()
    events = [e for e in _drain(aws, url) if arn in json.dumps(e)]
    seen = [(e["detail-type"], e["detail"]["eventName"]) for e in events]
    api, service = "AWS API Call via CloudTrail", "AWS Service Event via CloudTrail"
    assert seen.count((api, "PutSecretValue")) == 1
    assert seen.count((api, "UpdateSecretVersionStage")) == 2  # AWSCURRENT moved, AWSPENDING off
    assert (api, "RotateSecret") in seen and (service, "RotationStarted") in seen
    assert seen.index((service, "RotationSucceeded")) > seen.index((api, "PutSecretValue"))
    put = next(e for e in events if e["detail"]["eventName"] == "PutSecretValue")
    assert put["source"] == "aws.secretsmanager" and put["region"] == aws.region
    assert put["account"] == aws.account_id
    assert put["detail"]["requestParameters"]["secretString"] == "HIDDEN_DUE_TO_SECURITY_REASONS"
    assert put["detail"]["requestParameters"]["versionStages"] == ["AWSPENDING"]
    assert put["detail"]["responseElements"]["arn"] == arn
    assert "value-a7f3" not in json.dumps(events)  # no secret value in any event
    move = next(
        e["detail"]["requestParameters"]
        for e in events
        if e["detail"]["eventName"] == "UpdateSecretVersionStage"
        and e["detail"]["requestParameters"]["versionStage"] == "AWSCURRENT"
    )
    assert move["moveToVersionId"] == token and move["secretId"] == arn
    succeeded = next(e for e in events if e["detail"]["eventName"] == "RotationSucceeded")
    assert succeeded["detail"]["additionalEventData"] == {"SecretId": arn}
    # Read-only calls are not handed to EventBridge.
    assert not {"DescribeSecret", "GetSecretValue"} & {e["detail"]["eventName"] for e in events}


def test_rules_match_the_events_patterns(aws: AwsEmulator) -> None:
    arn = _plain_secret(aws)
    only_succeeded = _rule_to_queue(
        aws,
        {
            "source": ["aws.secretsmanager"],
            "detail-type": ["AWS Service Event via CloudTrail"],
            "detail": {
                "eventName": ["RotationSucceeded"],
                "additionalEventData": {"SecretId": [arn]},
            },
        },
    )
    other_secret = _rule_to_queue(
        aws,
        {"source": ["aws.secretsmanager"], "detail": {"requestParameters": {"secretId": ["x"]}}},
    )
    aws.client("secretsmanager").rotate_secret(
        SecretId=arn, RotationLambdaARN=_marker_function(aws, "m")
    )
    aws.wait_for_rotations()
    assert [e["detail"]["eventName"] for e in _drain(aws, only_succeeded)] == ["RotationSucceeded"]
    assert _drain(aws, other_secret) == []


def test_a_disabled_rule_delivers_nothing(aws: AwsEmulator) -> None:
    arn = _plain_secret(aws)
    url = _rule_to_queue(aws, {"source": ["aws.secretsmanager"]})
    rule = url.rsplit("/", 1)[1]
    aws.client("events").disable_rule(Name=rule)
    aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v2")
    assert _drain(aws, url) == []
    aws.client("events").enable_rule(Name=rule)
    aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v3")
    assert [e["detail"]["eventName"] for e in _drain(aws, url)] == ["PutSecretValue"]


def test_drop_events_loses_them(aws: AwsEmulator) -> None:
    arn = _plain_secret(aws)
    url = _rule_to_queue(aws, {"source": ["aws.secretsmanager"]})
    aws.drop_events = True
    try:
        aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v2")
    finally:
        aws.drop_events = False
    assert _drain(aws, url) == []
    assert ("AWS API Call via CloudTrail", "PutSecretValue", arn) in aws.dropped_events
    aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v3")
    assert [e["detail"]["eventName"] for e in _drain(aws, url)] == ["PutSecretValue"]


def test_long_poll_does_not_block_other_requests(aws: AwsEmulator) -> None:
    import threading

    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"lp-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    received: list[Any] = []
    poller = threading.Thread(
        target=lambda: received.append(
            sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20).get("Messages", [])
        )
    )
    poller.start()
    # While the poll waits, the server answers others; the message ends the wait.
    _plain_secret(aws)
    aws.client("sqs").send_message(QueueUrl=url, MessageBody="hello")
    poller.join(25)
    assert not poller.is_alive()
    assert [m["Body"] for m in received[0]] == ["hello"]


def test_plain_moto_sends_no_secrets_manager_events() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        events = boto3.client("events", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(Name="r", EventPattern=json.dumps({"source": ["aws.secretsmanager"]}))
        events.put_targets(Rule="r", Targets=[{"Id": "q", "Arn": arn}])
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="s", SecretString="v"
        )
        assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []


# 15. EventBridge calls API destinations as AWS does


class _Endpoint:
    """An HTTP endpoint on loopback that records each request and answers the next status."""

    def __init__(self, statuses: tuple[int, ...] = (200,)) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        self.received = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with endpoint.received:
                    endpoint.requests.append((self.command, dict(self.headers.items()), body))
                    status = endpoint.statuses.pop(0) if len(endpoint.statuses) > 1 else 200
                    endpoint.received.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[str, dict[str, str], bytes]]:
        with self.received:
            self.received.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rule_to_api_destination(events: Any, endpoint: _Endpoint, pattern: dict[str, Any]) -> str:
    name = f"push-{uuid.uuid4().hex[:8]}"
    connection = events.create_connection(
        Name=name,
        AuthorizationType="API_KEY",
        AuthParameters={
            "ApiKeyAuthParameters": {"ApiKeyName": "X-Test-Key", "ApiKeyValue": "k-91"}
        },
    )["ConnectionArn"]
    destination = events.create_api_destination(
        Name=name,
        ConnectionArn=connection,
        InvocationEndpoint=endpoint.url,
        HttpMethod="POST",
    )["ApiDestinationArn"]
    events.put_rule(Name=name, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule=name,
        Targets=[{"Id": "d", "Arn": destination, "RoleArn": "arn:aws:iam::123456789012:role/r"}],
    )
    return name


def test_api_destinations_receive_the_event_with_the_connections_api_key(aws: AwsEmulator) -> None:
    endpoint = _Endpoint()
    try:
        arn = _plain_secret(aws)
        _rule_to_api_destination(
            aws.client("events"), endpoint, {"detail": {"responseElements": {"arn": [arn]}}}
        )
        aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v2")
        method, headers, body = endpoint.wait_for(1)[0]
        assert method == "POST"
        assert headers["X-Test-Key"] == "k-91"
        assert headers["Content-Type"].startswith("application/json")
        event = json.loads(body)
        assert event["source"] == "aws.secretsmanager"
        assert event["detail"]["eventName"] == "PutSecretValue"
        assert event["detail"]["responseElements"]["arn"] == arn
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])
        assert "v2" not in body.decode()
    finally:
        endpoint.close()


def test_api_destinations_are_retried_on_5xx_and_429_not_on_other_4xx(aws: AwsEmulator) -> None:
    retried, refused = _Endpoint((503, 429, 200)), _Endpoint((400,))
    try:
        arn = _plain_secret(aws)
        pattern = {"detail": {"responseElements": {"arn": [arn]}}}
        _rule_to_api_destination(aws.client("events"), retried, pattern)
        _rule_to_api_destination(aws.client("events"), refused, pattern)
        aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="v2")
        assert len(retried.wait_for(3)) == 3
        deadline = time.monotonic() + 10
        while len([u for u, _ in aws.pushes if u == retried.url]) < 3:
            assert time.monotonic() < deadline, aws.pushes
            time.sleep(0.05)
        assert [s for url, s in aws.pushes if url == retried.url] == [503, 429, 200]
        time.sleep(2)  # the first retry would have come after at most 0.5 s
        assert len(refused.requests) == 1
    finally:
        retried.close()
        refused.close()


def test_describe_connection_answers_the_key_name_not_its_value(aws: AwsEmulator) -> None:
    events = aws.client("events")
    name = f"c-{uuid.uuid4().hex[:8]}"
    events.create_connection(
        Name=name,
        AuthorizationType="API_KEY",
        AuthParameters={
            "ApiKeyAuthParameters": {"ApiKeyName": "X-Test-Key", "ApiKeyValue": "k-92"}
        },
    )
    raw: list[bytes] = []
    events.meta.events.register(
        "after-call.events.DescribeConnection",
        lambda http_response, **_: raw.append(http_response.content),
    )
    described = events.describe_connection(Name=name)
    assert described["AuthParameters"] == {"ApiKeyAuthParameters": {"ApiKeyName": "X-Test-Key"}}
    assert b"k-92" not in raw[0]  # not on the wire either


def test_plain_moto_posts_no_event_and_no_key_to_api_destinations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOTO_EVENTS_INVOKE_HTTP", "true")
    endpoint = _Endpoint()
    try:
        with mock_aws():
            events = boto3.client("events", region_name="us-east-1")
            _rule_to_api_destination(events, endpoint, {"source": ["test.push"]})
            events.put_events(
                Entries=[{"Source": "test.push", "DetailType": "t", "Detail": json.dumps({})}]
            )
        method, headers, body = endpoint.wait_for(1, timeout=10)[0]
        assert method == "POST" and body == b"" and "X-Test-Key" not in headers
        with mock_aws():
            events = boto3.client("events", region_name="us-east-1")
            name = _rule_to_api_destination(events, endpoint, {"source": ["x"]})
            raw: list[bytes] = []
            events.meta.events.register(
                "after-call.events.DescribeConnection",
                lambda http_response, **_: raw.append(http_response.content),
            )
            events.describe_connection(Name=name)  # boto3 drops the value; the wire has it
            assert b'"ApiKeyValue": "k-91"' in raw[0]
    finally:
        endpoint.close()
