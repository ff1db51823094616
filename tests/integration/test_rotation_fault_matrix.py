"""The rotation survives a failure before or after every AWS call it makes, in every step.

The calls are discovered from the emulator's call log of a clean rotation, so the matrix follows
the handler's code. Each case starts from a user holding two keys (the secret's AWSCURRENT key and
an older, non-current one) and injects one fault, either once (the Lambda's retry of the step
recovers) or on every attempt (the rotation stops; the operator takes AWSPENDING off the failed
version and rotates again). Both key sources run the same matrix: the Lambda's own role, and
``masterarn`` = the secret itself (the user rotating itself).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from keyrotor_sandbox.aws import LAMBDA_RETRIES, ROTATION_STEPS, AwsEmulator
from tests.fixtures.aws import create_user_secret

_clean_runs: dict[str, dict[str, list[tuple[str, str, int]]]] = {}


@dataclass(frozen=True)
class Case:
    step: str
    service: str
    operation: str
    nth: int
    when: str
    persistent: bool

    def __str__(self) -> str:
        mode = "every attempt" if self.persistent else "once"
        return f"{self.step}: {self.when} {self.service}:{self.operation}#{self.nth} ({mode})"


@dataclass
class Subject:
    user: str
    arn: str
    initial_key: str
    user_arn: str


def _setup(aws: AwsEmulator, key_source: str) -> Subject:
    user = f"matrix-{uuid.uuid4().hex[:12]}"
    user_arn = aws.create_iam_user(user)
    arn = create_user_secret(
        aws, user, with_key=True, self_managed=(key_source == "masterarn-self")
    )
    initial = _value(aws, arn, "AWSCURRENT")["accesskey"]
    aws.client("iam").create_access_key(UserName=user)  # an older, non-current key
    return Subject(user, arn, initial, user_arn)


def _value(aws: AwsEmulator, arn: str, stage: str) -> dict[str, Any]:
    response = aws.client("secretsmanager").get_secret_value(SecretId=arn, VersionStage=stage)
    return dict(json.loads(response["SecretString"]))


def _user_keys(aws: AwsEmulator, user: str) -> set[str]:
    keys = aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {k["AccessKeyId"] for k in keys}


def _rotate(aws: AwsEmulator, subject: Subject, lambda_arn: str) -> str:
    sm = aws.client("secretsmanager")
    token = str(sm.rotate_secret(SecretId=subject.arn, RotationLambdaARN=lambda_arn)["VersionId"])
    aws.wait_for_rotations(timeout=120)
    return token


def _recover(aws: AwsEmulator, subject: Subject, lambda_arn: str) -> bool:
    """What the operator does after a stopped rotation: clear AWSPENDING, rotate again."""
    sm = aws.client("secretsmanager")
    for version, stages in sm.describe_secret(SecretId=subject.arn)["VersionIdsToStages"].items():
        if "AWSPENDING" in stages and "AWSCURRENT" not in stages:
            sm.update_secret_version_stage(
                SecretId=subject.arn, VersionStage="AWSPENDING", RemoveFromVersionId=version
            )
    _rotate(aws, subject, lambda_arn)
    return bool(aws.rotations_of(subject.arn)[-1].succeeded)


def _clean_run(
    aws: AwsEmulator, key_source: str, lambda_arn: str
) -> dict[str, list[tuple[str, str, int]]]:
    if key_source not in _clean_runs:
        subject = _setup(aws, key_source)
        aws.calls.reset()
        _rotate(aws, subject, lambda_arn)
        (rotation,) = aws.rotations_of(subject.arn)
        assert rotation.succeeded, rotation.error
        per_step: dict[str, list[tuple[str, str, int]]] = {}
        seen: Counter[tuple[str, str, str]] = Counter()
        for call in aws.calls.snapshot():
            if call.step is None:
                continue
            seen[(call.step, call.service, call.operation)] += 1
            nth = seen[(call.step, call.service, call.operation)]
            per_step.setdefault(call.step, []).append((call.service, call.operation, nth))
        _clean_runs[key_source] = per_step
    return _clean_runs[key_source]


def _check_invariants(aws: AwsEmulator, subject: Subject, case: Case) -> list[str]:
    """Problems found after the case (empty when all is well)."""
    problems = []
    sm = aws.client("secretsmanager")
    stages = sm.describe_secret(SecretId=subject.arn)["VersionIdsToStages"]
    current = _value(aws, subject.arn, "AWSCURRENT")
    identity = aws.client(
        "sts", aws_access_key_id=current["accesskey"], aws_secret_access_key=current["secretkey"]
    ).get_caller_identity()
    if identity["Arn"] != subject.user_arn:
        problems.append(f"AWSCURRENT key authenticates as {identity['Arn']}")
    if current["accesskey"] == subject.initial_key:
        problems.append("AWSCURRENT key was not replaced")
    if any("AWSPENDING" in s for s in stages.values()):
        problems.append(f"AWSPENDING left behind: {stages}")
    keys = _user_keys(aws, subject.user)
    previous = _value(aws, subject.arn, "AWSPREVIOUS").get("accesskey")
    if not keys <= {current["accesskey"], previous}:
        problems.append(f"orphaned key(s): {sorted(keys - {current['accesskey'], previous})}")
    for rotation in aws.rotations_of(subject.arn):
        if rotation.error and "LimitExceeded" in rotation.error:
            problems.append("the user was asked to hold a third key")
    if not any(f.operation == case.operation for f in aws.faults.fired):
        problems.append("the fault never fired")
    return problems


def _run_case(aws: AwsEmulator, key_source: str, lambda_arn: str, case: Case) -> list[str]:
    subject = _setup(aws, key_source)
    aws.faults.clear()
    aws.faults.fail(
        case.operation,
        nth=case.nth,
        when=case.when,  # type: ignore[arg-type]
        service=case.service,
        step=case.step,
        times=LAMBDA_RETRIES + 1 if case.persistent else 1,
    )
    _rotate(aws, subject, lambda_arn)
    (first,) = aws.rotations_of(subject.arn)
    problems: list[str] = []
    # Whatever happened, the key in AWSCURRENT still works and the user holds at most two keys.
    current = _value(aws, subject.arn, "AWSCURRENT")
    identity = aws.client(
        "sts", aws_access_key_id=current["accesskey"], aws_secret_access_key=current["secretkey"]
    ).get_caller_identity()
    if identity["Arn"] != subject.user_arn:
        problems.append(f"after the faulty rotation AWSCURRENT authenticates as {identity['Arn']}")
    if len(_user_keys(aws, subject.user)) > 2:
        problems.append("more than two keys after the faulty rotation")
    if not first.succeeded:
        if not case.persistent:
            problems.append(f"one fault stopped the rotation: {first.error}")
        if not _recover(aws, subject, lambda_arn):
            last = aws.rotations_of(subject.arn)[-1]
            problems.append(f"the rotation after recovery failed: {last.error}")
    problems += _check_invariants(aws, subject, case)
    aws.faults.clear()
    return [f"{case}: {p}" for p in problems]


@pytest.mark.parametrize("step", ROTATION_STEPS)
@pytest.mark.parametrize("key_source", ["lambda-role", "masterarn-self"])
def test_rotation_survives_a_fault_at_every_call(
    aws: AwsEmulator, rotation_lambda_arn: str, key_source: str, step: str
) -> None:
    calls = _clean_run(aws, key_source, rotation_lambda_arn).get(step, [])
    assert calls, f"{step} made no AWS call in a clean run"
    if step != "setSecret":
        assert len(calls) >= 3, calls
    cases = [
        Case(step, service, operation, nth, when, persistent)
        for service, operation, nth in calls
        for when in ("before", "after")
        for persistent in (False, True)
    ]
    problems = [p for case in cases for p in _run_case(aws, key_source, rotation_lambda_arn, case)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ROTATION_STEPS)
def test_rotation_survives_a_crash_in_every_step(
    aws: AwsEmulator, rotation_lambda_arn: str, step: str, when: str
) -> None:
    for persistent in (False, True):
        subject = _setup(aws, "lambda-role")
        aws.faults.clear()
        aws.faults.crash_lambda(
            step,
            when=when,  # type: ignore[arg-type]
            times=LAMBDA_RETRIES + 1 if persistent else 1,
        )
        _rotate(aws, subject, rotation_lambda_arn)
        (first,) = aws.rotations_of(subject.arn)
        assert first.succeeded is not persistent
        if not first.succeeded:
            assert _recover(aws, subject, rotation_lambda_arn)
        case = Case(step, "lambda", step, 1, when, persistent)
        problems = [p for p in _check_invariants(aws, subject, case) if "never fired" not in p]
        assert problems == [], problems
        assert [f.operation for f in aws.faults.fired] == [step] * (
            LAMBDA_RETRIES + 1 if persistent else 1
        )


def test_test_secret_waits_for_a_new_key_to_propagate(
    aws: AwsEmulator, rotation_lambda_arn: str
) -> None:
    subject = _setup(aws, "lambda-role")
    # IAM answers InvalidClientTokenId while a new key propagates: twice, then it works.
    aws.faults.fail("GetCallerIdentity", error="InvalidClientTokenId", step="testSecret", times=2)
    _rotate(aws, subject, rotation_lambda_arn)
    (rotation,) = aws.rotations_of(subject.arn)
    assert rotation.succeeded
    assert ("testSecret", False) not in rotation.invocations  # retried inside the step
    assert aws.calls.count("GetCallerIdentity") >= 3


def test_test_secret_gives_up_with_a_clear_message(
    aws: AwsEmulator, rotation_lambda_arn: str
) -> None:
    subject = _setup(aws, "lambda-role")
    aws.faults.fail("GetCallerIdentity", error="InvalidClientTokenId", step="testSecret", times=100)
    _rotate(aws, subject, rotation_lambda_arn)
    (rotation,) = aws.rotations_of(subject.arn)
    assert rotation.succeeded is False and rotation.failed_step == "testSecret"
    assert rotation.error is not None
    assert "RotationError" in rotation.error and "InvalidClientTokenId" in rotation.error
    assert subject.user in rotation.error
    pending = aws.client("secretsmanager").get_secret_value(
        SecretId=subject.arn, VersionStage="AWSPENDING"
    )
    assert json.loads(pending["SecretString"])["secretkey"] not in rotation.error
    assert _value(aws, subject.arn, "AWSCURRENT")["accesskey"] == subject.initial_key
