"""Event mode by push end to end (issue 10): ``keyrotor run --event-mode --event-delivery push``
with a sweep too long to matter (an hour), against the real API server and the AWS emulator,
whose EventBridge calls the operator's API destination as AWS does (the emulator's fix 15: the
event as a POST with the connection's API-key header). Everything stays on loopback; the
operator runs under exactly the policy ``keyrotor policy --event-delivery push`` prints.

- A rotation keyrotor did not start (RotateSecret outside keyrotor) reaches the Secret through a
  pushed event: no ListSecrets sweep, no queue, the value read once.
- A request with a wrong token changes nothing and makes no AWS call.
- A lost push is caught by the sweep; a restart with the same token writes nothing in AWS.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from keyrotor.aws import api_destination
from keyrotor_sandbox.aws import AwsEmulator, Call
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.aws import awscurrent_moved
from tests.fixtures.operator import Harness, event_push_role, free_port, push_flags, running

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

TOKEN = uuid.uuid4().hex + uuid.uuid4().hex  # 64 characters, as `openssl rand -hex 32`
AWS_WRITES = {
    "CreateConnection",
    "UpdateConnection",
    "CreateApiDestination",
    "UpdateApiDestination",
    "PutRule",
    "PutTargets",
}


@pytest.fixture(scope="module")
def push_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    push_port: int,
) -> Iterator[Harness]:
    harness = Harness(aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"))
    role = event_push_role(harness)
    harness.env = {"KEYROTOR_EVENT_PUSH_TOKEN": TOKEN}
    harness.extra_args = (*push_flags(push_port, role), "--sync-interval", "3600")
    with running(harness):
        yield harness
    assert TOKEN not in harness.all_logs()


def _push_target(keyrotor: Harness) -> dict[str, Any]:
    """Waits for the rule's target: the API destination, as the operator ensured it."""
    events = keyrotor.aws.client("events")
    rule = f"keyrotor-{keyrotor.cluster_name}-secrets"

    def probe() -> dict[str, Any] | None:
        names = [r["Name"] for r in events.list_rules(NamePrefix=rule)["Rules"]]
        targets = events.list_targets_by_rule(Rule=rule)["Targets"] if rule in names else []
        return next((t for t in targets if t["Id"] == api_destination.TARGET_ID), None)

    return keyrotor.wait(probe, what="the rule's API destination target")


def _operations_since(keyrotor: Harness, start: int) -> list[str]:
    calls: list[Call] = keyrotor.aws.calls.snapshot()[start:]
    return [c.operation for c in calls if c.step is None]  # not the rotation Lambda's


def _post(port: int, body: bytes, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", api_destination.TOKEN_HEADER: token}
        connection.request("POST", "/events", body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_rotation_aws_starts_is_mirrored_through_a_pushed_event(
    keyrotor: Harness, push_port: int
) -> None:
    target = _push_target(keyrotor)
    assert target["RoleArn"].endswith(f"keyrotor-{keyrotor.cluster_name}-event-push")
    ns, first = keyrotor.ready_and_mirrored("push", "app")
    start, pushed = len(keyrotor.aws.calls), len(keyrotor.aws.pushes)
    new_version = keyrotor.rotate_outside(ns, "app", first["secretArn"])
    keyrotor.aws.wait_for_rotations()
    # The Secret holds the new version (rotate_outside waited for it); status is written at the
    # end of the same decision, just after: the decision is over once status names it.
    status = keyrotor.wait(
        lambda: (
            (s := dict((keyrotor.get(ns, "app") or {})["status"]))["versionId"] == new_version and s
        ),
        what="status naming the new version",
    )
    assert status["accessKeyId"] != first["accessKeyId"]
    operations = _operations_since(keyrotor, start)
    assert "ListSecrets" not in operations  # the sweep (hourly) did not find it: a push did
    assert "ReceiveMessage" not in operations  # nothing polled
    assert operations.count("GetSecretValue") == 1  # the value, read once
    ours = f"http://127.0.0.1:{push_port}/events"
    answers = {status for url, status in keyrotor.aws.pushes[pushed:] if url == ours}
    assert 202 in answers and 401 not in answers


def test_a_request_with_a_wrong_token_changes_nothing(keyrotor: Harness, push_port: int) -> None:
    _push_target(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("push", "steady")
    before = keyrotor.secret(ns, "steady")
    assert before is not None
    # A well-formed event naming this object's secret, as if AWSCURRENT had moved.
    event = awscurrent_moved(first["secretArn"], "forged-1")
    body = json.dumps(event).encode()
    keyrotor.aws.wait_for_rotations()
    start = len(keyrotor.aws.calls)
    for token in ("", "x" * 64, TOKEN[:-1], TOKEN + "0", TOKEN.upper()):
        assert _post(push_port, body, token) == 401
    # The same event with the token: one look, bounded to a read; AWSCURRENT did not move, so
    # no value is read and nothing is written.
    assert _post(push_port, body, TOKEN) == 202
    keyrotor.wait(lambda: "DescribeSecret" in _operations_since(keyrotor, start), what="the look")
    operations = _operations_since(keyrotor, start)
    assert "GetSecretValue" not in operations
    assert not set(operations) - {"DescribeSecret"}  # the 401s made no call at all
    after = keyrotor.secret(ns, "steady")
    assert after is not None
    assert after.metadata.resource_version == before.metadata.resource_version
    assert dict((keyrotor.get(ns, "steady") or {})["status"])["versionId"] == first["versionId"]


def test_a_lost_push_is_caught_by_the_sweep(keyrotor: Harness) -> None:
    """Every event of a rotation lost (EventBridge never calls): an operator whose sweep is short
    (10 s) mirrors it anyway. Its restart, with the same token, writes nothing in AWS."""
    _push_target(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("push", "lost")
    keyrotor.operator.stop()
    restarted = len(keyrotor.aws.calls)
    keyrotor.start_operator("--sync-interval", "10")
    keyrotor.wait(
        lambda: "ListSecrets" in _operations_since(keyrotor, restarted),
        what="the new operator's first sweep",
    )
    keyrotor.wait(
        lambda: "DescribeApiDestination" in _operations_since(keyrotor, restarted),
        what="the new operator's check of its API destination",
    )
    assert not AWS_WRITES & set(_operations_since(keyrotor, restarted))  # same token: no write
    keyrotor.aws.drop_events = True
    try:
        start, pushed = len(keyrotor.aws.calls), len(keyrotor.aws.pushes)
        rotated = keyrotor.aws.client("secretsmanager").rotate_secret(SecretId=first["secretArn"])
        keyrotor.aws.wait_for_rotations()
        keyrotor.wait(
            lambda: keyrotor.mirrored_version(ns, "lost") == rotated["VersionId"],
            timeout=90,
            what="the new version, found by the sweep",
        )
    finally:
        keyrotor.aws.drop_events = False
    lost = {name for _, name, secret in keyrotor.aws.dropped_events if secret == first["secretArn"]}
    assert {"RotationSucceeded", "UpdateSecretVersionStage"} <= lost
    assert "ListSecrets" in _operations_since(keyrotor, start)
    assert len(keyrotor.aws.pushes) == pushed  # nothing was pushed
