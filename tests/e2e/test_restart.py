"""The operator SIGKILLed in the middle of a batch and started again converges: no duplicate AWS
resources, no lost key, and exactly one rotation per object and request."""

from __future__ import annotations

from typing import Any

import pytest

from keyrotor_sandbox.aws import Rotation
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

# Ten rotations at once can take longer than the harness's --stuck-after 20s on a busy machine;
# this module is about restarts, not about clearing stuck rotations (test_errors covers that).
KEYROTOR_ARGS = ("--stuck-after", "120")
BATCH = 10
CONVERGE_TIMEOUT = 180


def _batch(keyrotor: Harness) -> tuple[str, dict[str, str]]:
    ns = keyrotor.namespace("batch")
    users = {f"app-{i}": keyrotor.iam_user(namespaces=ns) for i in range(BATCH)}
    for name, user in users.items():
        keyrotor.create(ns, name, {"iamUser": user})
    return ns, users


def _rotations(keyrotor: Harness, ns: str) -> list[Rotation]:
    """The emulator's rotations of this namespace's secrets (default names embed it)."""
    marker = f":secret:keyrotor/{keyrotor.cluster_name}/{ns}/"
    return [r for r in list(keyrotor.aws.rotations) if marker in r.secret_arn]


def _wait_all_ready(keyrotor: Harness, ns: str, names: list[str]) -> dict[str, dict[str, Any]]:
    def probe() -> dict[str, dict[str, Any]] | None:
        objects = {name: keyrotor.get(ns, name) or {} for name in names}
        ready = all(
            (keyrotor.condition(obj, "Ready") or {}).get("status") == "True"
            for obj in objects.values()
        )
        return objects if ready else None

    return keyrotor.wait(probe, CONVERGE_TIMEOUT, f"all {len(names)} objects in {ns} Ready")


def _assert_converged(
    keyrotor: Harness, ns: str, users: dict[str, str], objects: dict[str, dict[str, Any]]
) -> None:
    aws = keyrotor.aws
    aws.wait_for_rotations()
    sm = aws.client("secretsmanager")
    cluster = keyrotor.cluster_name

    # Exactly one Secrets Manager secret per object.
    listed = []
    for page in sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "tag-key", "Values": ["keyrotor.io/cluster"]}]
    ):
        listed.extend(page["SecretList"])
    tags = [{t["Key"]: t["Value"] for t in s.get("Tags", [])} for s in listed]
    ours = [t for t in tags if t.get("keyrotor.io/cluster") == cluster]
    in_ns = [t for t in ours if t.get("keyrotor.io/namespace") == ns]
    assert sorted(t["keyrotor.io/uid"] for t in in_ns) == sorted(
        obj["metadata"]["uid"] for obj in objects.values()
    )

    # One rotation Lambda, one execution role, one invoke permission for the installation.
    functions = [
        f["FunctionName"]
        for page in aws.client("lambda").get_paginator("list_functions").paginate()
        for f in page["Functions"]
        if cluster in f["FunctionName"]
    ]
    assert functions == [f"keyrotor-{cluster}-rotation"]
    roles = [
        r["RoleName"]
        for page in aws.client("iam").get_paginator("list_roles").paginate()
        for r in page["Roles"]
        if cluster in r["RoleName"]
    ]
    assert roles == [f"keyrotor-{cluster}-rotation"]

    for name, user in users.items():
        status = objects[name]["status"]
        stages = sm.describe_secret(SecretId=status["secretArn"])["VersionIdsToStages"]
        assert [v for v, s in stages.items() if "AWSPENDING" in s and "AWSCURRENT" not in s] == []
        assert "AWSCURRENT" in stages[status["versionId"]]
        keys = keyrotor.user_keys(user)
        assert 1 <= len(keys) <= 2, (name, keys)
        data = keyrotor.secret_data(keyrotor.secret(ns, name))
        assert data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]
        assert keys[status["accessKeyId"]] == "Active"
        arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
        assert arn.endswith(f":user/{user}")


def test_killed_while_creating_a_batch_converges_after_restart(keyrotor: Harness) -> None:
    ns, users = _batch(keyrotor)
    # SIGKILL as soon as the first rotations (the objects' first keys) are running.
    keyrotor.wait(lambda: len(_rotations(keyrotor, ns)) >= 2, what="the first rotations")
    keyrotor.operator.kill()
    keyrotor.start_operator()

    objects = _wait_all_ready(keyrotor, ns, list(users))
    _assert_converged(keyrotor, ns, users, objects)
    # One first key per object: every object's secret saw exactly one successful rotation.
    for name, obj in objects.items():
        rotations = keyrotor.aws.rotations_of(obj["status"]["secretArn"])
        events = [(e.reason, e.message) for e in keyrotor.events(ns, name)]
        assert [r.succeeded for r in rotations] == [True], (rotations, events)


def test_killed_during_a_rotate_now_batch_makes_one_new_key_each(keyrotor: Harness) -> None:
    ns, users = _batch(keyrotor)
    before = _wait_all_ready(keyrotor, ns, list(users))
    keyrotor.aws.wait_for_rotations()
    rotations_before = len(_rotations(keyrotor, ns))
    old = {name: obj["status"] for name, obj in before.items()}

    for name in users:
        keyrotor.annotate(ns, name, {"keyrotor.io/rotate-now": "batch-1"})
    keyrotor.wait(
        lambda: len(_rotations(keyrotor, ns)) > rotations_before, what="the first rotate-now"
    )
    keyrotor.operator.kill()
    keyrotor.start_operator()

    def all_rotated() -> dict[str, dict[str, Any]] | None:
        objects = {name: keyrotor.get(ns, name) or {} for name in users}
        for name, obj in objects.items():
            status = obj.get("status") or {}
            if (
                status.get("rotateNowHandled") != "batch-1"
                or status.get("accessKeyId") in (None, old[name]["accessKeyId"])
                or (keyrotor.condition(obj, "Ready") or {}).get("status") != "True"
            ):
                return None
        return objects

    after = keyrotor.wait(all_rotated, CONVERGE_TIMEOUT, "every object rotated once and Ready")
    _assert_converged(keyrotor, ns, users, after)
    for name, user in users.items():
        status = after[name]["status"]
        # Exactly one new key: the old one (still within its grace period) and the new one.
        assert set(keyrotor.user_keys(user)) == {old[name]["accessKeyId"], status["accessKeyId"]}
        rotations = keyrotor.aws.rotations_of(status["secretArn"])
        assert [r.succeeded for r in rotations] == [True, True], rotations
        assert status["previousKey"]["accessKeyId"] == old[name]["accessKeyId"]
