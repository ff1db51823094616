"""Switching event delivery end to end: ``keyrotor run --event-mode`` restarted from queue to
push delivery and back, each time under exactly the policy ``keyrotor policy`` prints for its
flags (the emulator refuses anything else, and the harness fails on any refusal).

- Queue, then push: the rule's target is the API destination only; keyrotor's queue target is
  taken off; a target someone else put on the rule (another Id) stays. The queue itself is left
  (README: Event mode, switching delivery).
- A restart with nothing changed writes nothing in AWS (no PutTargets, no RemoveTargets).
- Push, then queue again: the queue target only (and the foreign one); the connection and the
  API destination are left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from keyrotor.aws import api_destination, eventing
from keyrotor_sandbox.aws import AwsEmulator, Call
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness, event_push_role, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

TOKEN = uuid.uuid4().hex + uuid.uuid4().hex  # 64 characters, as `openssl rand -hex 32`
FOREIGN_ID = "audit-copy"  # someone else's target on keyrotor's rule
AWS_WRITES = {
    "CreateQueue",
    "SetQueueAttributes",
    "CreateConnection",
    "UpdateConnection",
    "CreateApiDestination",
    "UpdateApiDestination",
    "PutRule",
    "PutTargets",
    "RemoveTargets",
}


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:
    """Not started: the test starts each operator with its delivery's flags."""
    harness = Harness(
        aws_emulator,
        operator_rbac,
        tmp_path_factory.mktemp("operator"),
        extra_args=("--event-mode", "--sync-interval", "3600"),
    )
    harness.env = {"KEYROTOR_EVENT_PUSH_TOKEN": TOKEN}
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()
    assert TOKEN not in harness.all_logs()


def _rule(keyrotor: Harness) -> str:
    return f"keyrotor-{keyrotor.cluster_name}-secrets"


def _targets(keyrotor: Harness) -> dict[str, str]:
    """The rule's targets, Id to Arn (none while there is no rule)."""
    events, rule = keyrotor.aws.client("events"), _rule(keyrotor)
    if rule not in [r["Name"] for r in events.list_rules(NamePrefix=rule)["Rules"]]:
        return {}
    return {t["Id"]: t["Arn"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]}


def _wait_for_targets(keyrotor: Harness, ids: set[str], what: str) -> dict[str, str]:
    """Waits until the rule's targets have exactly these Ids; the targets."""

    def probe() -> dict[str, str] | None:
        found = _targets(keyrotor)
        return found if set(found) == ids else None

    return keyrotor.wait(probe, what=what)


def _operations_since(keyrotor: Harness, start: int) -> list[str]:
    calls: list[Call] = keyrotor.aws.calls.snapshot()[start:]
    return [c.operation for c in calls if c.step is None]  # not the rotation Lambda's


def test_switching_delivery_moves_the_rules_target_and_leaves_foreign_ones(
    keyrotor: Harness,
) -> None:
    aws, port = keyrotor.aws, free_port()
    push = (
        "--event-delivery",
        "push",
        "--event-push-port",
        str(port),
        "--event-push-url",
        f"http://127.0.0.1:{port}/events",
        "--event-push-role-arn",
        event_push_role(keyrotor),
    )
    queue_name = f"keyrotor-{keyrotor.cluster_name}-events"
    push_name = f"keyrotor-{keyrotor.cluster_name}-push"

    # Queue delivery: the rule sends to keyrotor's queue.
    keyrotor.start_operator()
    queue_arn = _wait_for_targets(keyrotor, {eventing.RULE_TARGET_ID}, "the queue target")[
        eventing.RULE_TARGET_ID
    ]
    assert queue_arn.endswith(f":{queue_name}")
    # Someone else's target on the same rule (another Id): never keyrotor's to take off.
    sqs = aws.client("sqs")
    audit_url = sqs.create_queue(QueueName=f"audit-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    audit_arn = sqs.get_queue_attributes(QueueUrl=audit_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    aws.client("events").put_targets(
        Rule=_rule(keyrotor), Targets=[{"Id": FOREIGN_ID, "Arn": audit_arn}]
    )

    # Push delivery: the API destination replaces the queue; the foreign target stays.
    keyrotor.operator.stop()
    restarted = len(aws.calls)
    keyrotor.start_operator(*push)
    found = _wait_for_targets(
        keyrotor, {api_destination.TARGET_ID, FOREIGN_ID}, "the push target alone (and foreign)"
    )
    assert found[FOREIGN_ID] == audit_arn
    assert ":api-destination/" in found[api_destination.TARGET_ID]
    operations = _operations_since(keyrotor, restarted)
    assert operations.count("PutTargets") == 1 and operations.count("RemoveTargets") == 1
    assert operations.index("PutTargets") < operations.index("RemoveTargets")  # new one first
    # The queue is left (README: switching delivery): nothing sends to it any more.
    assert sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]

    # A restart with nothing changed: the rule is checked (twice: a short check interval, so
    # the first check is known to be over) and nothing is written.
    keyrotor.operator.stop()
    restarted = len(aws.calls)
    keyrotor.start_operator(*push, "--sync-interval", "10", "--installation-recheck", "10")
    keyrotor.wait(
        lambda: _operations_since(keyrotor, restarted).count("ListTargetsByRule") >= 2 or None,
        what="two checks of the rule by the restarted operator",
    )
    assert not AWS_WRITES & set(_operations_since(keyrotor, restarted))
    assert set(_targets(keyrotor)) == {api_destination.TARGET_ID, FOREIGN_ID}

    # Back to the queue: the push target is taken off; the connection and destination are left.
    keyrotor.operator.stop()
    restarted = len(aws.calls)
    keyrotor.start_operator("--event-delivery", "queue")
    found = _wait_for_targets(
        keyrotor, {eventing.RULE_TARGET_ID, FOREIGN_ID}, "the queue target alone (and foreign)"
    )
    assert found == {eventing.RULE_TARGET_ID: queue_arn, FOREIGN_ID: audit_arn}
    operations = _operations_since(keyrotor, restarted)
    assert operations.count("PutTargets") == 1 and operations.count("RemoveTargets") == 1
    events = aws.client("events")
    assert events.describe_api_destination(Name=push_name)["Name"] == push_name
    assert events.describe_connection(Name=push_name)["Name"] == push_name
