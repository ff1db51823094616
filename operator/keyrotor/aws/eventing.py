"""Event mode's AWS side: an EventBridge rule on the default bus that matches this installation's
Secrets Manager events (delivered through CloudTrail) and an SQS queue as its target, ensured
idempotently (look first, write only what differs), then long-polled.

What the rule matches (secretsmanager/latest/userguide/monitoring-eventbridge.html,
cloudtrail_log_entries.html), for secrets under this installation's prefix only:

- ``AWS API Call via CloudTrail``: ``PutSecretValue`` and ``UpdateSecretVersionStage``, the calls
  that move ``AWSCURRENT`` (the rotation function's finishSecret, a new value from the console),
  by ``requestParameters.secretId`` (a name or an ARN, as the caller gave it). ``RotateSecret``
  is not matched: it moves nothing itself, and the calls that finish the rotation are;
- ``AWS Service Event via CloudTrail``: ``RotationSucceeded``, by
  ``additionalEventData.SecretId`` (the ARN).

The queue (``keyrotor-<cluster>-events``) lets only this rule send to it (``aws:SourceArn``).
A queue the user names (``--event-queue-url``) is used as it is: its policy is the user's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.aws.policy_params import event_queue_name, event_rule_name
from keyrotor.secret_events import (
    API_CALL,
    API_CALL_EVENTS,
    EVENT_SOURCE,
    SERVICE_EVENT,
    SERVICE_EVENTS,
)

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_sqs import SQSClient

RULE_TARGET_ID = "keyrotor-events"
WAIT_TIME_SECONDS = 20  # SQS's longest long poll: one ReceiveMessage per 20 s when idle
MAX_MESSAGES = 10  # SQS's largest batch
VISIBILITY_TIMEOUT = 60  # a message not deleted (its check failed) comes back after this
RETENTION_SECONDS = 86400  # after a day, the sweep has long since caught what the event said


def queue_name(cluster_name: str, shard: str = "") -> str:
    return event_queue_name(cluster_name, shard)


def rule_name(cluster_name: str, shard: str = "") -> str:
    return event_rule_name(cluster_name, shard)


@dataclass(frozen=True)
class EventTarget:
    """Where one installation's events go: names and ARNs (no I/O)."""

    cluster_name: str
    region: str
    account_id: str
    partition: str = "aws"
    shard: str = ""  # a shard has its own rule and queue: each shard sees every event

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account_id}:{resource}"

    @property
    def secret_prefix(self) -> str:
        return f"keyrotor/{self.cluster_name}/"

    @property
    def secret_arn_prefix(self) -> str:
        return self._arn("secretsmanager", f"secret:{self.secret_prefix}")

    @property
    def rule_name(self) -> str:
        return rule_name(self.cluster_name, self.shard)

    @property
    def rule_arn(self) -> str:
        return self._arn("events", f"rule/{self.rule_name}")

    @property
    def queue_name(self) -> str:
        return queue_name(self.cluster_name, self.shard)

    @property
    def queue_arn(self) -> str:
        return self._arn("sqs", self.queue_name)


def event_pattern(target: EventTarget) -> dict[str, Any]:
    """The rule's pattern: this installation's secrets' rotation events (module docstring)."""
    by_name_or_arn = [{"prefix": target.secret_prefix}, {"prefix": target.secret_arn_prefix}]
    return {
        "source": ["aws.secretsmanager"],
        "$or": [
            {
                "detail-type": [API_CALL],
                "detail": {
                    "eventSource": [EVENT_SOURCE],
                    "eventName": list(API_CALL_EVENTS),
                    "requestParameters": {"secretId": by_name_or_arn},
                },
            },
            {
                "detail-type": [SERVICE_EVENT],
                "detail": {
                    "eventSource": [EVENT_SOURCE],
                    "eventName": list(SERVICE_EVENTS),
                    "additionalEventData": {"SecretId": [{"prefix": target.secret_arn_prefix}]},
                },
            },
        ],
    }


def queue_policy(target: EventTarget) -> dict[str, Any]:
    """Only this installation's rule may send to the queue."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OnlyThisInstallationsRuleMaySend",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": target.queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": target.rule_arn}},
            }
        ],
    }


def _same_json(text: str | None, document: Mapping[str, Any]) -> bool:
    try:
        return text is not None and json.loads(text) == document
    except ValueError:
        return False


QUEUE_GONE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


@aws_errors("sqs")
def ensure_queue(sqs: SQSClient, target: EventTarget, known_url: str | None = None) -> str:
    """The installation's queue with its policy; its URL. Created once; a policy changed out of
    band is put back; nothing else about an existing queue is touched. ``known_url`` (the URL an
    earlier call returned) saves the ``GetQueueUrl``: reading its policy shows it still exists."""
    policy = queue_policy(target)
    try:
        url = known_url or sqs.get_queue_url(QueueName=target.queue_name)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    except Exception as exc:
        if error_code(exc) not in QUEUE_GONE:
            raise
        created = sqs.create_queue(
            QueueName=target.queue_name,
            Attributes={
                "Policy": json.dumps(policy),
                "ReceiveMessageWaitTimeSeconds": str(WAIT_TIME_SECONDS),
                "VisibilityTimeout": str(VISIBILITY_TIMEOUT),
                "MessageRetentionPeriod": str(RETENTION_SECONDS),
                "SqsManagedSseEnabled": "true",
            },
        )
        return created["QueueUrl"]
    if not _same_json(attributes.get("Attributes", {}).get("Policy"), policy):
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    return url


@aws_errors("sqs")
def queue_arn(sqs: SQSClient, queue_url: str) -> str:
    """The ARN of a queue given by URL (a queue the user names)."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


@aws_errors("events")
def ensure_rule(events: EventBridgeClient, target: EventTarget, queue: str) -> bool:
    """The rule (pattern, enabled) and the queue (ARN ``queue``) as its target. True when
    something was written."""
    return ensure_rule_target(events, target, {"Id": RULE_TARGET_ID, "Arn": queue})


@aws_errors("events")
def ensure_rule_target(
    events: EventBridgeClient, target: EventTarget, wanted: Mapping[str, Any]
) -> bool:
    """The rule (pattern, enabled) and ``wanted`` (a target: Id, Arn, and what else it sets)
    among its targets, compared field by field. True when something was written."""
    pattern = event_pattern(target)
    wrote = False
    try:
        rule = events.describe_rule(Name=target.rule_name)
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        rule = None
    if (
        rule is None
        or rule.get("State") != "ENABLED"
        or not _same_json(rule.get("EventPattern"), pattern)
    ):
        events.put_rule(
            Name=target.rule_name,
            EventPattern=json.dumps(pattern),
            State="ENABLED",
            Description=f"keyrotor {target.cluster_name}: rotation events of its secrets",
        )
        wrote = True
    targets = events.list_targets_by_rule(Rule=target.rule_name).get("Targets", [])
    if not any(all(t.get(k) == v for k, v in wanted.items()) for t in targets):
        events.put_targets(Rule=target.rule_name, Targets=[dict(wanted)])  # type: ignore[list-item]
        wrote = True
    return wrote


@dataclass(frozen=True)
class Message:
    body: str
    receipt_handle: str


@aws_errors("sqs")
def receive(sqs: SQSClient, queue_url: str, wait_seconds: int = WAIT_TIME_SECONDS) -> list[Message]:
    """One long poll: up to ten messages, or none after ``wait_seconds``."""
    response = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=wait_seconds
    )
    return [
        Message(body=str(m.get("Body", "")), receipt_handle=str(m["ReceiptHandle"]))
        for m in response.get("Messages", [])
    ]


@aws_errors("sqs")
def delete(sqs: SQSClient, queue_url: str, message: Message) -> None:
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message.receipt_handle)
    except Exception as exc:
        if error_code(exc) != "ReceiptHandleIsInvalid":
            raise  # an expired handle: the message comes back and is handled again (harmless)
