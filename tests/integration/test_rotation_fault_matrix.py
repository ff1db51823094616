"""The rotation survives a failure before or after every AWS call it makes, in every step.

The calls are discovered from the emulator's call log of a clean rotation, so the matrix follows
the handler's code. Each case starts from a user holding two keys (the secret's AWSCURRENT key and
its AWSPREVIOUS key, as after an earlier rotation) and injects one fault, either once (the
Lambda's retry of the step recovers) or on every attempt (the rotation stops; the operator takes
AWSPENDING off the failed version and rotates again). Both key sources run the same matrix: the
Lambda's own role, and ``masterarn`` = the secret itself (the user rotating itself).

The two-key rule (issue 8) has a matrix of its own: the second key is Active and not this
secret's (another secret's, a hand-made one), so createSecret must refuse and name it; a fault at
any call of that refused step never turns the refusal into a deletion. It runs for the Lambda's
own role, ``masterarn`` = the secret itself, and ``masterarn`` = another secret of the same
installation. The Lambda's input checks (issue 9: the secret's IAM-user tag against the value's
``username``, ``masterarn`` only within the installation) run through the uploaded zip as well.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from keyrotor.model import TAG_CLUSTER, TAG_IAM_USER
from keyrotor.rotation_lambda import KEY_IN_USE_PREFIX
from keyrotor_sandbox.aws import LAMBDA_RETRIES, ROTATION_STEPS, AwsEmulator
from tests.fixtures.aws import TEST_CLUSTER, create_user_secret

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
        aws, user, with_previous_key=True, self_managed=(key_source == "masterarn-self")
    )
    initial = _value(aws, arn, "AWSCURRENT")["accesskey"]
    assert len(_user_keys(aws, user)) == 2  # AWSCURRENT's key and AWSPREVIOUS's
    # Made by earlier rotations, not in the rotation's own second (its orphan sweep's window):
    # the user is at the two-key limit and createSecret must read AWSPREVIOUS to make room.
    backdate_keys(aws, user)
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
    if step == "createSecret":  # the two-key limit is in the matrix: AWSPREVIOUS's key made room
        assert ("iam", "DeleteAccessKey", 1) in calls, calls
        assert sum(op == "GetSecretValue" for _, op, _ in calls) == 3, calls
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


# --- The two-key rule: a key that may be in use is never deleted --------------------------------

KEY_SOURCES = ["lambda-role", "masterarn-self", "masterarn"]


@dataclass
class KeyInUse:
    subject: Subject
    foreign_key: str


def _setup_key_in_use(aws: AwsEmulator, key_source: str) -> KeyInUse:
    """The user holds the secret's AWSCURRENT key and an Active key the secret never held."""
    user = f"inuse-{uuid.uuid4().hex[:12]}"
    user_arn = aws.create_iam_user(user)
    master = None
    if key_source == "masterarn":
        admin = f"admin-{uuid.uuid4().hex[:12]}"
        aws.create_iam_user(admin)
        master = create_user_secret(aws, admin, with_key=True)
    arn = create_user_secret(
        aws, user, with_key=True, self_managed=(key_source == "masterarn-self"), masterarn=master
    )
    initial = _value(aws, arn, "AWSCURRENT")["accesskey"]
    foreign = str(
        aws.client("iam").create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    )  # e.g. the key a new object's secret holds, after this one was retained (issue 8, case 1)
    backdate_keys(aws, user)
    return KeyInUse(Subject(user, arn, initial, user_arn), foreign)


def _key_status(aws: AwsEmulator, user: str) -> dict[str, str]:
    keys = aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {k["AccessKeyId"]: k["Status"] for k in keys}


def _check_key_in_use_kept(aws: AwsEmulator, case: KeyInUse) -> list[str]:
    subject, problems = case.subject, []
    keys = _key_status(aws, subject.user)
    if keys != {subject.initial_key: "Active", case.foreign_key: "Active"}:
        problems.append(f"keys changed: {keys}")
    current = _value(aws, subject.arn, "AWSCURRENT")
    if current["accesskey"] != subject.initial_key:
        problems.append("AWSCURRENT moved although no key could be made")
    identity = aws.client(
        "sts", aws_access_key_id=current["accesskey"], aws_secret_access_key=current["secretkey"]
    ).get_caller_identity()
    if identity["Arn"] != subject.user_arn:
        problems.append(f"AWSCURRENT key authenticates as {identity['Arn']}")
    return problems


@pytest.mark.parametrize("key_source", KEY_SOURCES)
def test_a_key_in_use_stops_the_rotation_with_its_id(
    aws: AwsEmulator, rotation_lambda_arn: str, key_source: str
) -> None:
    case = _setup_key_in_use(aws, key_source)
    subject = case.subject
    _rotate(aws, subject, rotation_lambda_arn)
    (rotation,) = aws.rotations_of(subject.arn)
    assert rotation.succeeded is False and rotation.failed_step == "createSecret"
    assert rotation.error is not None
    assert rotation.error.startswith(
        f"KeyInUseError: {KEY_IN_USE_PREFIX} {case.foreign_key} of IAM user {subject.user}"
    ), rotation.error
    assert rotation.invocations == [("createSecret", False)] * (LAMBDA_RETRIES + 1)
    assert _check_key_in_use_kept(aws, case) == []
    assert _value(aws, subject.arn, "AWSCURRENT")["secretkey"] not in rotation.error

    # The fix the message gives: deactivate the key, rotate again; the inactive key makes room.
    aws.client("iam").update_access_key(
        UserName=subject.user, AccessKeyId=case.foreign_key, Status="Inactive"
    )
    assert _recover(aws, subject, rotation_lambda_arn)
    current = _value(aws, subject.arn, "AWSCURRENT")["accesskey"]
    assert set(_key_status(aws, subject.user)) == {subject.initial_key, current}


def test_a_key_that_was_current_two_rotations_ago_is_not_taken_for_a_failed_ones(
    aws: AwsEmulator, rotation_lambda_arn: str, iam_user: str
) -> None:
    """Only a label-less version no older than AWSCURRENT's held a key that was never current."""
    iam, sm = aws.client("iam"), aws.client("secretsmanager")
    arn = create_user_secret(aws, iam_user, with_key=True)  # version 1: key A, current
    old = _value(aws, arn, "AWSCURRENT")
    key = iam.create_access_key(UserName=iam_user)["AccessKey"]
    newer = {**old, "accesskey": key["AccessKeyId"], "secretkey": key["SecretAccessKey"]}
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps(newer))  # 2: key B, current
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps(newer))  # 3: key B again
    versions = sm.list_secret_version_ids(SecretId=arn, IncludeDeprecated=True)["Versions"]
    label_less = [v["VersionId"] for v in versions if not v.get("VersionStages")]
    assert len(label_less) == 1  # version 1, whose key A was current two moves ago
    with aws_state_lock(aws):
        for version in secret_versions(aws, arn).values():  # as if made on earlier days
            if "AWSCURRENT" not in version["version_stages"]:
                version["createdate"] -= 86400
    backdate_keys(aws, iam_user)
    _rotate(aws, Subject(iam_user, arn, "", ""), rotation_lambda_arn)
    (rotation,) = aws.rotations_of(arn)
    assert rotation.error is not None
    assert rotation.error.startswith(f"KeyInUseError: {KEY_IN_USE_PREFIX} {old['accesskey']}")
    assert _user_keys(aws, iam_user) == {old["accesskey"], key["AccessKeyId"]}


def aws_state_lock(aws: AwsEmulator) -> Any:
    return aws._lock  # moto's backends are shared with the server thread


def secret_versions(aws: AwsEmulator, arn: str) -> dict[str, dict[str, Any]]:
    from moto.secretsmanager.models import secretsmanager_backends

    return dict(secretsmanager_backends[aws.account_id][aws.region].secrets[arn].versions)


def backdate_keys(aws: AwsEmulator, user: str) -> None:
    """Date the user's keys a day back. A key made in the same second as a rotation's pending
    version counts as that rotation's own orphan (dates have one-second precision)."""
    from moto.core.utils import utcnow
    from moto.iam.models import iam_backends

    with aws_state_lock(aws):
        for key in iam_backends[aws.account_id]["aws"].users[user].access_keys:
            key.create_date = utcnow() - timedelta(days=1)


def _refused_calls(
    aws: AwsEmulator, key_source: str, lambda_arn: str
) -> list[tuple[str, str, int]]:
    """The calls of one refused createSecret attempt, from the call log."""
    case = _setup_key_in_use(aws, key_source)
    aws.calls.reset()
    _rotate(aws, case.subject, lambda_arn)
    seen: Counter[tuple[str, str]] = Counter()
    calls = []
    for call in aws.calls.snapshot():
        if call.step != "createSecret":
            continue
        seen[(call.service, call.operation)] += 1
        calls.append((call.service, call.operation, seen[(call.service, call.operation)]))
    attempts = LAMBDA_RETRIES + 1
    assert len(calls) % attempts == 0, calls
    return calls[: len(calls) // attempts]


@pytest.mark.parametrize("key_source", KEY_SOURCES)
def test_no_fault_turns_the_refusal_into_a_deletion(
    aws: AwsEmulator, rotation_lambda_arn: str, key_source: str
) -> None:
    calls = _refused_calls(aws, key_source, rotation_lambda_arn)
    operations = {operation for _, operation, _ in calls}
    assert {"ListAccessKeys", "GetSecretValue"} <= operations, calls
    assert not operations & {"DeleteAccessKey", "CreateAccessKey", "PutSecretValue"}, calls
    problems = []
    for service, operation, nth in calls:
        for when in ("before", "after"):
            for persistent in (False, True):
                fault = Case("createSecret", service, operation, nth, when, persistent)
                case = _setup_key_in_use(aws, key_source)
                aws.faults.clear()
                aws.faults.fail(
                    operation,
                    nth=nth,
                    when=when,  # type: ignore[arg-type]
                    service=service,
                    step="createSecret",
                    times=LAMBDA_RETRIES + 1 if persistent else 1,
                )
                _rotate(aws, case.subject, rotation_lambda_arn)
                (rotation,) = aws.rotations_of(case.subject.arn)
                found = _check_key_in_use_kept(aws, case)
                if rotation.succeeded is not False:
                    found.append("the rotation went through")
                if not persistent and not (rotation.error or "").startswith("KeyInUseError"):
                    found.append(f"the retry did not name the key in use: {rotation.error}")
                if not aws.faults.fired:
                    found.append("the fault never fired")
                problems += [f"{fault}: {p}" for p in found]
                aws.faults.clear()
    assert problems == [], "\n".join(problems)


# --- Issue 9: the Lambda trusts the operator's tags, not the secret's value ---------------------


def test_a_value_naming_another_user_mints_no_key_for_it(
    aws: AwsEmulator, rotation_lambda_arn: str, iam_user: str
) -> None:
    """Whoever can write the secret's value cannot have keys made for another user."""
    admin = f"admin-{uuid.uuid4().hex[:12]}"
    aws.create_iam_user(admin)
    arn = create_user_secret(aws, iam_user, with_key=True)
    sm = aws.client("secretsmanager")
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": admin}))
    aws.calls.reset()
    _rotate(aws, Subject(iam_user, arn, "", ""), rotation_lambda_arn)
    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is False and rotation.failed_step == "createSecret"
    assert rotation.error is not None and f"{TAG_IAM_USER}={iam_user}" in rotation.error
    assert admin in rotation.error
    assert _user_keys(aws, admin) == set()
    assert {c.service for c in aws.calls.snapshot() if c.step} == {"secretsmanager"}  # no IAM


def test_a_value_naming_the_user_in_another_case_is_rotated(
    aws: AwsEmulator, rotation_lambda_arn: str
) -> None:
    """Issue 8 (6): IAM user names are not distinguished by case (the emulator's fix 14). The
    operator tags the secret with the name as IAM spells it; the value has the object's
    spelling. They name one user, so the rotation goes ahead, for that user."""
    user = f"Matrix-{uuid.uuid4().hex[:12]}"
    aws.create_iam_user(user)
    arn = create_user_secret(
        aws, user.lower(), with_key=True, tags={TAG_IAM_USER: user, TAG_CLUSTER: TEST_CLUSTER}
    )
    before = _user_keys(aws, user)
    _rotate(aws, Subject(user, arn, "", ""), rotation_lambda_arn)
    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is True, rotation.error
    value = json.loads(aws.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
    assert value["accesskey"] in _user_keys(aws, user) - before
    assert before <= _user_keys(aws, user)  # the key in use was not deleted


def test_a_secret_without_the_user_tag_is_not_rotated(
    aws: AwsEmulator, rotation_lambda_arn: str, iam_user: str
) -> None:
    arn = create_user_secret(aws, iam_user, with_key=True, tags={TAG_CLUSTER: TEST_CLUSTER})
    before = _user_keys(aws, iam_user)
    _rotate(aws, Subject(iam_user, arn, "", ""), rotation_lambda_arn)
    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is False and rotation.error is not None
    assert f"has no tag {TAG_IAM_USER}" in rotation.error
    assert _user_keys(aws, iam_user) == before


@pytest.mark.parametrize("master_cluster", ["other-cluster", None])
def test_masterarn_of_another_installation_is_never_read(
    aws: AwsEmulator, rotation_lambda_arn: str, iam_user: str, master_cluster: str | None
) -> None:
    admin = f"admin-{uuid.uuid4().hex[:12]}"
    aws.create_iam_user(admin)
    master_tags = {TAG_IAM_USER: admin, **({TAG_CLUSTER: master_cluster} if master_cluster else {})}
    master = create_user_secret(
        aws, admin, with_key=True, name=f"keyrotor/{master_cluster}/{admin}", tags=master_tags
    )
    arn = create_user_secret(aws, iam_user, masterarn=master)
    aws.calls.reset()
    _rotate(aws, Subject(iam_user, arn, "", ""), rotation_lambda_arn)
    (rotation,) = aws.rotations_of(arn)
    assert rotation.succeeded is False and rotation.error is not None
    assert "not a secret of the same keyrotor installation" in rotation.error
    assert _user_keys(aws, iam_user) == set()
    # Two GetSecretValue per attempt, both of this secret (is the token's version stored yet?
    # the AWSCURRENT value); the master's value would be a third.
    reads = [c for c in aws.calls.snapshot() if c.operation == "GetSecretValue" and c.step]
    assert len(reads) == 2 * (LAMBDA_RETRIES + 1)
