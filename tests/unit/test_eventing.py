"""The rule's targets when the delivery is switched (keyrotor.aws.eventing.ensure_rule_target):
ensuring one delivery's target takes keyrotor's other delivery's off that rule, leaves targets
with any other Id alone, touches no other rule (another shard's), and writes nothing when all is
as wanted. Pure parts without any network; the rest against in-process moto.

The end-to-end switch (operator restarts, under exactly the generated policy) is in
tests/e2e/test_event_delivery_switch.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws

from keyrotor.aws import api_destination, eventing
from keyrotor.errors import KeyrotorError, failure_for

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

ACCOUNT = "123456789012"
REGION = "us-east-1"
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:keyrotor-c-events"
DESTINATION = f"arn:aws:events:{REGION}:{ACCOUNT}:api-destination/keyrotor-c-push/0a1b2c3d"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/keyrotor-c-event-push"
FOREIGN = {"Id": "audit-copy", "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:audit"}
QUEUE_TARGET = {"Id": eventing.RULE_TARGET_ID, "Arn": QUEUE}
PUSH_TARGET = {
    "Id": api_destination.TARGET_ID,
    "Arn": DESTINATION,
    "RoleArn": ROLE,
    "RetryPolicy": dict(api_destination.RETRY_POLICY),
}


def _target(shard: str = "") -> eventing.EventTarget:
    return eventing.EventTarget(cluster_name="c", region=REGION, account_id=ACCOUNT, shard=shard)


@pytest.mark.parametrize(
    ("ids", "wanted", "other"),
    [
        ([], eventing.RULE_TARGET_ID, []),
        (["keyrotor-events"], "keyrotor-events", []),
        (["keyrotor-events", "keyrotor-push"], "keyrotor-events", ["keyrotor-push"]),
        (["keyrotor-events", "keyrotor-push"], "keyrotor-push", ["keyrotor-events"]),
        (["keyrotor-events"], "keyrotor-push", ["keyrotor-events"]),
        # Someone else's targets, whatever they look like, are not keyrotor's.
        (["audit-copy", "keyrotor-events-2", "Keyrotor-Events", "keyrotor"], "keyrotor-push", []),
        (["audit-copy", "keyrotor-push"], "keyrotor-events", ["keyrotor-push"]),
    ],
)
def test_only_keyrotors_other_delivery_is_the_other_delivery(
    ids: list[str], wanted: str, other: list[str]
) -> None:
    targets = [{"Id": i, "Arn": QUEUE} for i in ids]
    assert eventing.other_delivery_targets(targets, wanted) == other


def test_the_two_delivery_ids_are_the_ones_the_deliveries_put() -> None:
    assert eventing.DELIVERY_TARGET_IDS == (eventing.RULE_TARGET_ID, api_destination.TARGET_ID)
    assert eventing.RULE_TARGET_ID != api_destination.TARGET_ID


@pytest.mark.parametrize(
    ("response", "says"),
    [
        ({"FailedEntryCount": 0, "FailedEntries": []}, None),
        ({}, None),
        (
            {
                "FailedEntryCount": 1,
                "FailedEntries": [
                    {
                        "TargetId": "keyrotor-push",
                        "ErrorCode": "ConcurrentModificationException",
                        "ErrorMessage": "try again",
                    }
                ],
            },
            "RemoveTargets on rule r failed for target keyrotor-push: "
            "ConcurrentModificationException try again",
        ),
        ({"FailedEntryCount": 1}, "RemoveTargets on rule r failed for target ?:"),
    ],
)
def test_entries_a_target_call_could_not_apply_are_an_error(
    response: dict[str, Any], says: str | None
) -> None:
    error = eventing.failed_entries(response, "RemoveTargets", "r")
    if says is None:
        assert error is None
        return
    assert isinstance(error, KeyrotorError) and str(error) == says
    assert error.service == "events" and error.operation == "RemoveTargets"
    assert failure_for(error).message == says  # retried with backoff, said as it is


@pytest.fixture
def events() -> Iterator[tuple[EventBridgeClient, list[str]]]:
    """An EventBridge client of in-process moto, and every operation it sends from now on."""
    with mock_aws():
        client = boto3.client("events", region_name=REGION)
        calls: list[str] = []
        client.meta.events.register(
            "before-call.events.*", lambda model, **_: calls.append(model.name)
        )
        yield client, calls


def _ids(events: EventBridgeClient, target: eventing.EventTarget) -> set[str]:
    return {t["Id"] for t in events.list_targets_by_rule(Rule=target.rule_name)["Targets"]}


def test_switching_delivery_takes_the_other_target_off_and_leaves_foreign_ones(
    events: tuple[EventBridgeClient, list[str]],
) -> None:
    client, calls = events
    target = _target()
    assert eventing.ensure_rule(client, target, QUEUE) is True
    client.put_targets(Rule=target.rule_name, Targets=[FOREIGN])  # someone else's
    # queue -> push: the push target is put first, then the queue's is taken off.
    calls.clear()
    assert eventing.ensure_rule_target(client, target, PUSH_TARGET) is True
    assert calls == ["DescribeRule", "ListTargetsByRule", "PutTargets", "RemoveTargets"]
    assert _ids(client, target) == {api_destination.TARGET_ID, FOREIGN["Id"]}
    # Nothing changed: read, nothing written.
    calls.clear()
    assert eventing.ensure_rule_target(client, target, PUSH_TARGET) is False
    assert calls == ["DescribeRule", "ListTargetsByRule"]
    # push -> queue: the queue target back, the push target off, the foreign one still there.
    calls.clear()
    assert eventing.ensure_rule(client, target, QUEUE) is True
    assert calls == ["DescribeRule", "ListTargetsByRule", "PutTargets", "RemoveTargets"]
    assert _ids(client, target) == {eventing.RULE_TARGET_ID, FOREIGN["Id"]}
    calls.clear()
    assert eventing.ensure_rule(client, target, QUEUE) is False
    assert calls == ["DescribeRule", "ListTargetsByRule"]


def test_a_left_target_alone_on_the_rule_is_taken_off_without_a_put(
    events: tuple[EventBridgeClient, list[str]],
) -> None:
    """Both targets on the rule (an operator that put the push target and stopped before taking
    the queue's off): the next start only removes."""
    client, calls = events
    target = _target()
    eventing.ensure_rule(client, target, QUEUE)
    client.put_targets(Rule=target.rule_name, Targets=[PUSH_TARGET])
    calls.clear()
    assert eventing.ensure_rule_target(client, target, PUSH_TARGET) is True
    assert calls == ["DescribeRule", "ListTargetsByRule", "RemoveTargets"]
    assert _ids(client, target) == {api_destination.TARGET_ID}


def test_a_shard_touches_only_its_own_rule(events: tuple[EventBridgeClient, list[str]]) -> None:
    """Each shard has its own rule: shard a switching to push leaves the queue targets of the
    unsharded rule and of shard b as they are."""
    client, _ = events
    unsharded, a, b = _target(), _target("a"), _target("b")
    assert len({unsharded.rule_name, a.rule_name, b.rule_name}) == 3
    for each in (unsharded, a, b):
        eventing.ensure_rule(client, each, QUEUE)
    eventing.ensure_rule_target(client, a, PUSH_TARGET)
    assert _ids(client, a) == {api_destination.TARGET_ID}
    assert _ids(client, unsharded) == _ids(client, b) == {eventing.RULE_TARGET_ID}


def test_a_target_that_is_not_a_keyrotor_delivery_is_refused_before_any_call(
    events: tuple[EventBridgeClient, list[str]],
) -> None:
    client, calls = events
    with pytest.raises(ValueError, match="not a keyrotor delivery target"):
        eventing.ensure_rule_target(client, _target(), FOREIGN)
    assert calls == []
