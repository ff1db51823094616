"""Event mode's AWS side (keyrotor.aws.eventing) against the emulator: the queue, its policy and
the rule are ensured idempotently, and the rule delivers exactly this installation's rotation
events (the emulator's fix 12), which keyrotor.secret_events maps back to the secret."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from keyrotor import secret_events
from keyrotor.aws import api_destination, eventing
from keyrotor_sandbox.aws import AwsEmulator


def _target(aws: AwsEmulator) -> eventing.EventTarget:
    return eventing.EventTarget(
        cluster_name=f"ev{uuid.uuid4().hex[:8]}", region=aws.region, account_id=aws.account_id
    )


def _writes(aws: AwsEmulator, start: int) -> list[str]:
    reads = ("Get", "List", "Describe", "Receive")
    return [c.operation for c in aws.calls.snapshot()[start:] if not c.operation.startswith(reads)]


def _policy(aws: AwsEmulator, url: str) -> dict[str, Any]:
    attributes = aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    return dict(json.loads(attributes["Attributes"]["Policy"]))


def test_queue_is_created_once_with_a_policy_for_this_installations_rule_only(
    aws: AwsEmulator,
) -> None:
    target, sqs = _target(aws), aws.client("sqs")
    url = eventing.ensure_queue(sqs, target)
    assert url.endswith(f"/{aws.account_id}/keyrotor-{target.cluster_name}-events")
    (statement,) = _policy(aws, url)["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == target.queue_arn
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": target.rule_arn}}
    assert target.rule_arn == (
        f"arn:aws:events:{aws.region}:{aws.account_id}:rule/keyrotor-{target.cluster_name}-secrets"
    )
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["QueueArn"] == target.queue_arn
    assert attributes["ReceiveMessageWaitTimeSeconds"] == "20"

    start = len(aws.calls)
    assert eventing.ensure_queue(sqs, target) == url
    assert _writes(aws, start) == []  # looked, wrote nothing

    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({"Statement": []})})
    start = len(aws.calls)
    assert eventing.ensure_queue(sqs, target) == url
    assert _writes(aws, start) == ["SetQueueAttributes"]
    assert _policy(aws, url) == eventing.queue_policy(target)


def test_rule_is_put_once_and_put_back_when_changed(aws: AwsEmulator) -> None:
    target, events = _target(aws), aws.client("events")
    assert eventing.ensure_rule(events, target, target.queue_arn) is True
    rule = events.describe_rule(Name=target.rule_name)
    assert rule["State"] == "ENABLED"
    assert json.loads(rule["EventPattern"]) == eventing.event_pattern(target)
    assert events.list_targets_by_rule(Rule=target.rule_name)["Targets"] == [
        {"Id": "keyrotor-events", "Arn": target.queue_arn}
    ]

    start = len(aws.calls)
    assert eventing.ensure_rule(events, target, target.queue_arn) is False
    assert _writes(aws, start) == []

    events.disable_rule(Name=target.rule_name)
    events.remove_targets(Rule=target.rule_name, Ids=["keyrotor-events"])
    assert eventing.ensure_rule(events, target, target.queue_arn) is True
    assert events.describe_rule(Name=target.rule_name)["State"] == "ENABLED"
    assert len(events.list_targets_by_rule(Rule=target.rule_name)["Targets"]) == 1


def test_pattern_matches_only_this_installations_secrets(aws: AwsEmulator) -> None:
    """One rotation of a secret of this installation, one of another installation whose name
    shares a prefix ("<cluster>x"), one of a plain secret: only the first arrives, and its
    messages name its secret."""
    target, sqs = _target(aws), aws.client("sqs")
    url = eventing.ensure_queue(sqs, target)
    eventing.ensure_rule(aws.client("events"), target, target.queue_arn)
    sm = aws.client("secretsmanager")
    ours = sm.create_secret(Name=f"{target.secret_prefix}ns/a", SecretString="{}")["ARN"]
    theirs = sm.create_secret(Name=f"keyrotor/{target.cluster_name}x/ns/a", SecretString="{}")[
        "ARN"
    ]
    plain = sm.create_secret(Name=f"plain/{uuid.uuid4().hex}", SecretString="{}")["ARN"]
    for arn in (ours, theirs, plain):
        sm.put_secret_value(SecretId=arn, SecretString='{"v": 2}')  # moves AWSCURRENT
        sm.put_secret_value(SecretId=arn, SecretString="{}", VersionStages=["AWSPENDING"])

    messages = eventing.receive(sqs, url, wait_seconds=0)
    parsed = [secret_events.parse(m.body) for m in messages]
    # Both puts arrive (the rule matches PutSecretValue); only the AWSCURRENT one is a change.
    assert len(messages) == 2
    assert [p.secret_id if p else None for p in parsed] == [ours, None]
    for message in messages:
        eventing.delete(sqs, url, message)
        eventing.delete(sqs, url, message)  # a repeated delete is harmless
    assert eventing.receive(sqs, url, wait_seconds=0) == []


def test_a_given_queues_arn_is_read_from_it(aws: AwsEmulator) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"mine-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    assert eventing.queue_arn(sqs, url).endswith(url.rsplit("/", 1)[1])


def test_a_known_queue_url_is_checked_without_looking_it_up(aws: AwsEmulator) -> None:
    """The periodic check of a queue the consumer already knows reads its policy only (no
    GetQueueUrl); a queue deleted out of band is created again."""
    target, sqs = _target(aws), aws.client("sqs")
    url = eventing.ensure_queue(sqs, target)

    start = len(aws.calls)
    assert eventing.ensure_queue(sqs, target, known_url=url) == url
    assert [c.operation for c in aws.calls.snapshot()[start:]] == ["GetQueueAttributes"]

    sqs.delete_queue(QueueUrl=url)
    start = len(aws.calls)
    assert eventing.ensure_queue(sqs, target, known_url=url) == url
    assert _writes(aws, start) == ["CreateQueue"]
    assert _policy(aws, url) == eventing.queue_policy(target)


def test_a_refused_remove_targets_leaves_delivery_working_and_says_what_to_do(
    aws: AwsEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator upgraded before its policy (no events:RemoveTargets yet) and switched from
    push to queue: its queue target is put, the push target stays with a warning that names the
    permission and the command, and the ensure succeeds (the consumer goes on polling). With the
    permission, the next check takes the push target off."""
    target, events = _target(aws), aws.client("events")
    push = {"Id": api_destination.TARGET_ID, "Arn": target.queue_arn.replace("-events", "-push")}
    eventing.ensure_rule(events, target, target.queue_arn)
    events.put_targets(Rule=target.rule_name, Targets=[push])
    aws.faults.fail("RemoveTargets", service="events")  # access denied
    with caplog.at_level(logging.WARNING, logger="keyrotor.aws.eventing"):
        assert eventing.ensure_rule(events, target, target.queue_arn) is False
    assert [f.operation for f in aws.faults.fired] == ["RemoveTargets"]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "keyrotor.aws.eventing"]
    assert "events:RemoveTargets" in warning
    assert f"aws events remove-targets --rule {target.rule_name} --ids keyrotor-push" in warning
    ids = {t["Id"] for t in events.list_targets_by_rule(Rule=target.rule_name)["Targets"]}
    assert ids == {eventing.RULE_TARGET_ID, api_destination.TARGET_ID}

    start = len(aws.calls)
    assert eventing.ensure_rule(events, target, target.queue_arn) is True
    assert _writes(aws, start) == ["RemoveTargets"]
    ids = {t["Id"] for t in events.list_targets_by_rule(Rule=target.rule_name)["Targets"]}
    assert ids == {eventing.RULE_TARGET_ID}
