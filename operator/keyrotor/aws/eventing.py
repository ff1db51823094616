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

The rule has one keyrotor target, the delivery's: the queue (:data:`RULE_TARGET_ID`) or the API
destination of push delivery (:data:`PUSH_TARGET_ID`, keyrotor.aws.api_destination). Ensuring one
removes the other's, once the wanted one is in place, so an operator switched between deliveries
stops feeding a queue no one reads or a listener that is gone. Only those two Ids are keyrotor's:
a target with any other Id is someone else's and stays. What the other delivery made (its queue,
or its connection and API destination) is left: see :func:`ensure_rule_target`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyrotor.aws.clients import ACCESS_DENIED_CODES, aws_errors, error_code, error_message
from keyrotor.aws.policy_params import event_queue_name, event_rule_name
from keyrotor.errors import KeyrotorError
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

log = logging.getLogger(__name__)

RULE_TARGET_ID = "keyrotor-events"  # the queue's target (queue delivery)
PUSH_TARGET_ID = "keyrotor-push"  # the API destination's target (push delivery)
DELIVERY_TARGET_IDS = (RULE_TARGET_ID, PUSH_TARGET_ID)  # keyrotor's targets; no other Id is ours
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
    """The rule (pattern, enabled) and the queue (ARN ``queue``) as its target, push
    delivery's target taken off. True when something was written."""
    return ensure_rule_target(events, target, {"Id": RULE_TARGET_ID, "Arn": queue})


def other_delivery_targets(targets: Iterable[Mapping[str, Any]], wanted_id: str) -> list[str]:
    """The Ids among the rule's ``targets`` that are keyrotor's other delivery's, given the
    wanted target's Id. Any Id not in :data:`DELIVERY_TARGET_IDS` is someone else's."""
    return [
        str(t["Id"])
        for t in targets
        if t.get("Id") in DELIVERY_TARGET_IDS and t.get("Id") != wanted_id
    ]


def failed_entries(response: Mapping[str, Any], operation: str, rule: str) -> KeyrotorError | None:
    """PutTargets and RemoveTargets answer 200 and list the entries they could not apply: those,
    as an error (AWS's code and message, which name the target, never a value)."""
    failed = list(response.get("FailedEntries") or [])
    if not (response.get("FailedEntryCount") or failed):
        return None
    first = failed[0] if failed else {}
    return KeyrotorError(
        f"{operation} on rule {rule} failed for target {first.get('TargetId', '?')}: "
        f"{first.get('ErrorCode', '')} {first.get('ErrorMessage', '')}".strip(),
        service="events",
        operation=operation,
    )


def _ensure_rule(events: EventBridgeClient, target: EventTarget) -> bool:
    """The rule itself: this pattern, enabled. True when it was written."""
    pattern = event_pattern(target)
    try:
        rule = events.describe_rule(Name=target.rule_name)
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        rule = None
    if (
        rule is not None
        and rule.get("State") == "ENABLED"
        and _same_json(rule.get("EventPattern"), pattern)
    ):
        return False
    events.put_rule(
        Name=target.rule_name,
        EventPattern=json.dumps(pattern),
        State="ENABLED",
        Description=f"keyrotor {target.cluster_name}: rotation events of its secrets",
    )
    return True


def _remove_targets(events: EventBridgeClient, target: EventTarget, ids: list[str]) -> bool:
    """Take these targets off the rule. A refusal (a policy from before RemoveTargets was in it)
    leaves them with a warning and False: delivery itself works, so event mode goes on."""
    try:
        removed = events.remove_targets(Rule=target.rule_name, Ids=ids)
    except Exception as exc:
        if error_code(exc) not in ACCESS_DENIED_CODES:
            raise
        log.warning(
            "event mode: rule %s still has keyrotor's other delivery's target %s (%s): give the "
            "operator the policy keyrotor policy prints (events:RemoveTargets on the rule), or "
            "remove it: aws events remove-targets --rule %s --ids %s",
            target.rule_name,
            ", ".join(ids),
            error_message(exc),
            target.rule_name,
            " ".join(ids),
        )
        return False
    if error := failed_entries(removed, "RemoveTargets", target.rule_name):
        raise error
    return True


@aws_errors("events")
def ensure_rule_target(
    events: EventBridgeClient, target: EventTarget, wanted: Mapping[str, Any]
) -> bool:
    """The rule (pattern, enabled) and ``wanted`` (a target: Id, one of
    :data:`DELIVERY_TARGET_IDS`, Arn, and what else it sets) among its targets, compared field by
    field; then keyrotor's other delivery's target taken off the rule (after the wanted one is in
    place: no event is left without a keyrotor target in between). True when something was
    written; nothing is written when all is as wanted (the targets are read once either way).

    Only this rule (this installation's, this shard's) is touched, and on it only the other
    delivery's Id. The other delivery's own resources are left as they are: deleting the queue
    (``sqs:DeleteQueue``) or the connection and API destination (``events:Delete*``) from here
    would put a delete permission on the other mode's resources into every installation's
    policy for good, for a one-time switch, and deleting cannot be undone by a rollback.
    README (Event mode, "Switching delivery") gives the commands."""
    wanted_id = str(wanted["Id"])
    if wanted_id not in DELIVERY_TARGET_IDS:
        raise ValueError(f"not a keyrotor delivery target: {wanted_id!r}")
    wrote = _ensure_rule(events, target)
    targets = events.list_targets_by_rule(Rule=target.rule_name).get("Targets", [])
    stale = other_delivery_targets(targets, wanted_id)
    if not any(all(t.get(k) == v for k, v in wanted.items()) for t in targets):
        new = [dict(wanted)]
        put = events.put_targets(Rule=target.rule_name, Targets=new)  # type: ignore[arg-type]
        if error := failed_entries(put, "PutTargets", target.rule_name):
            raise error
        wrote = True
    if stale and _remove_targets(events, target, stale):
        log.info(
            "event mode: rule %s: took keyrotor's other delivery's target %s off (what that "
            "delivery made is left; README: Event mode, switching delivery)",
            target.rule_name,
            ", ".join(stale),
        )
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
