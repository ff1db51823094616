"""Event mode end to end (issue 10): ``keyrotor run --event-mode`` with a sweep too long to
matter (an hour), against the real API server and the AWS emulator, whose Secrets Manager emits
the events CloudTrail hands to EventBridge (the emulator's fix 12).

- A rotation keyrotor did not start (RotateSecret called outside keyrotor, as the console's
  "rotate immediately" does) reaches the Secret through its event: no ListSecrets sweep ran.
- A repeated or stale event changes nothing: one DescribeSecret, no value read, no write.
- A lost event (the emulator drops them) is caught by the sweep, once the sweep is short.
"""

from __future__ import annotations

import json

import pytest

from keyrotor_sandbox.aws import Call
from tests.fixtures.aws import awscurrent_moved
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

KEYROTOR_ARGS = ("--event-mode", "--sync-interval", "3600")


def _queue_url(keyrotor: Harness) -> str:
    sqs = keyrotor.aws.client("sqs")

    def probe() -> str | None:
        urls = sqs.list_queues(QueueNamePrefix=f"keyrotor-{keyrotor.cluster_name}-events")
        return next(iter(urls.get("QueueUrls", [])), None)

    url = keyrotor.wait(probe, what="the operator's event queue")
    rule = f"keyrotor-{keyrotor.cluster_name}-secrets"
    events = keyrotor.aws.client("events")
    keyrotor.wait(
        lambda: (
            events.list_targets_by_rule(Rule=rule)["Targets"]
            if rule in [r["Name"] for r in events.list_rules(NamePrefix=rule)["Rules"]]
            else None
        ),
        what="the operator's event rule and its target",
    )
    return url


def _queue_empty(keyrotor: Harness, url: str) -> bool:
    attributes = keyrotor.aws.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def _calls_since(keyrotor: Harness, start: int) -> list[Call]:
    return keyrotor.aws.calls.snapshot()[start:]


def test_a_rotation_keyrotor_did_not_start_is_mirrored_through_its_event(
    keyrotor: Harness,
) -> None:
    url = _queue_url(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("ev", "app")
    start = len(keyrotor.aws.calls)
    new_version = keyrotor.rotate_outside(ns, "app", first["secretArn"])
    keyrotor.aws.wait_for_rotations()
    calls = _calls_since(keyrotor, start)
    operations = [c.operation for c in calls if c.step is None]  # not the rotation Lambda's
    assert "ListSecrets" not in operations  # the sweep (hourly) did not find it: the event did
    assert "ReceiveMessage" in operations and "DeleteMessage" in operations
    assert operations.count("GetSecretValue") == 1  # the value, read once
    status = dict((keyrotor.get(ns, "app") or {})["status"])
    assert status["versionId"] == new_version and status["accessKeyId"] != first["accessKeyId"]
    delivered = {
        (kind, name)
        for kind, name, secret in keyrotor.aws.emitted_events
        if secret == first["secretArn"]
    }
    assert ("AWS Service Event via CloudTrail", "RotationSucceeded") in delivered
    keyrotor.wait(lambda: _queue_empty(keyrotor, url), what="every message handled and deleted")


def test_repeated_and_stale_events_change_nothing(keyrotor: Harness) -> None:
    url = _queue_url(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("ev", "steady")
    secret = keyrotor.secret(ns, "steady")
    assert secret is not None
    # An event for a version that is no longer (or never was) AWSCURRENT, three times over.
    stale = awscurrent_moved(first["secretArn"], "stale-1")
    keyrotor.wait(lambda: _queue_empty(keyrotor, url), what="an empty queue")
    start = len(keyrotor.aws.calls)
    sqs = keyrotor.aws.client("sqs")
    for _ in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(stale))
    keyrotor.wait(lambda: _queue_empty(keyrotor, url), what="the three events handled")

    operations = [c.operation for c in _calls_since(keyrotor, start)]
    assert operations.count("DeleteMessage") == 3
    assert operations.count("DescribeSecret") >= 1  # a look (one per event; others may look too)
    assert "GetSecretValue" not in operations  # AWSCURRENT did not move: no value read
    after = keyrotor.secret(ns, "steady")
    assert after is not None
    assert after.metadata.resource_version == secret.metadata.resource_version
    assert dict((keyrotor.get(ns, "steady") or {})["status"])["versionId"] == first["versionId"]


def test_a_lost_event_is_caught_by_the_sweep(keyrotor: Harness) -> None:
    """The same rotation with every event lost: nothing arrives in the queue, and an operator
    whose sweep is short (10 s) mirrors it anyway."""
    url = _queue_url(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("ev", "lost")
    # The first key's own events are consumed before the stop: a message the stopped operator
    # had received but not deleted would come back after its visibility timeout, in the queue
    # this test expects empty at the end.
    keyrotor.wait(lambda: _queue_empty(keyrotor, url), what="the first key's events consumed")
    keyrotor.operator.stop()
    restarted = len(keyrotor.aws.calls)
    keyrotor.start_operator("--sync-interval", "10")
    # Its first sweep over its objects: the restart's own reconciles are over by then.
    keyrotor.wait(
        lambda: "ListSecrets" in [c.operation for c in _calls_since(keyrotor, restarted)],
        what="the new operator's first sweep",
    )
    keyrotor.aws.drop_events = True
    try:
        start = len(keyrotor.aws.calls)
        rotated = keyrotor.aws.client("secretsmanager").rotate_secret(SecretId=first["secretArn"])
        keyrotor.aws.wait_for_rotations()
        new_version = rotated["VersionId"]
        keyrotor.wait(
            lambda: keyrotor.mirrored_version(ns, "lost") == new_version,
            timeout=90,
            what="the new version, found by the sweep",
        )
    finally:
        keyrotor.aws.drop_events = False
    lost = {name for _, name, secret in keyrotor.aws.dropped_events if secret == first["secretArn"]}
    assert {"RotationSucceeded", "UpdateSecretVersionStage", "PutSecretValue"} <= lost
    operations = [c.operation for c in _calls_since(keyrotor, start) if c.step is None]
    assert "ListSecrets" in operations
    assert _queue_empty(keyrotor, url)  # nothing was delivered


def test_a_queue_the_user_names_is_used_as_it_is(keyrotor: Harness) -> None:
    """--event-queue-url: the rule sends to the user's queue, whose policy keyrotor leaves alone;
    a rotation keyrotor did not start arrives through it."""
    _queue_url(keyrotor)
    ns, first = keyrotor.ready_and_mirrored("ev", "mine")
    sqs = keyrotor.aws.client("sqs")
    url = sqs.create_queue(QueueName=f"platform-{keyrotor.cluster_name}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    keyrotor.operator.stop()
    keyrotor.start_operator("--event-queue-url", url, "--sync-interval", "3600")
    rule = f"keyrotor-{keyrotor.cluster_name}-secrets"
    events = keyrotor.aws.client("events")
    keyrotor.wait(
        lambda: (
            events.list_targets_by_rule(Rule=rule)["Targets"]
            == [{"Id": "keyrotor-events", "Arn": arn}]
        ),
        what="the rule pointed at the user's queue",
    )
    start = len(keyrotor.aws.calls)
    keyrotor.rotate_outside(ns, "mine", first["secretArn"])
    operations = [c.operation for c in _calls_since(keyrotor, start) if c.step is None]
    assert "ListSecrets" not in operations
    assert "SetQueueAttributes" not in operations and "CreateQueue" not in operations
    assert (
        "Policy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    )
