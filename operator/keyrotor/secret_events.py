"""Event mode, the pure part: which secret an EventBridge event (as an SQS message body) names,
and whether it can have moved ``AWSCURRENT``. No I/O.

An event is only a hint to look: the look (one ``DescribeSecret``) decides, and the value is read
only when ``AWSCURRENT`` really moved. So an event that is lost, repeated or late changes
nothing; the ``ListSecrets`` sweep catches what no event announced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

AWSCURRENT = "AWSCURRENT"
API_CALL = "AWS API Call via CloudTrail"
SERVICE_EVENT = "AWS Service Event via CloudTrail"
EVENT_SOURCE = "secretsmanager.amazonaws.com"
# Calls that can move AWSCURRENT, and the service event of a rotation that finished
# (secretsmanager/latest/userguide/monitoring-eventbridge.html).
API_CALL_EVENTS = ("PutSecretValue", "UpdateSecretVersionStage")
SERVICE_EVENTS = ("RotationSucceeded",)
SECRET_ARN_SUFFIX = 7  # Secrets Manager appends "-" and six random characters to a name


@dataclass(frozen=True)
class SecretEvent:
    secret_id: str  # a name, a full ARN, or an ARN without the suffix: as the caller gave it
    event_name: str
    event_id: str = ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _moves_current(event_name: str, request: Mapping[str, Any]) -> bool:
    if event_name == "UpdateSecretVersionStage":
        return request.get("versionStage") == AWSCURRENT and bool(request.get("moveToVersionId"))
    if event_name == "PutSecretValue":
        stages = request.get("versionStages")
        # Without VersionStages, PutSecretValue makes the new version AWSCURRENT.
        return not stages or (isinstance(stages, list) and AWSCURRENT in stages)
    return True


def parse(body: str) -> SecretEvent | None:
    """The secret an event names when it can mean a new ``AWSCURRENT``; None otherwise (not a
    Secrets Manager event, a failed call, a stage that is not AWSCURRENT, AWSPENDING put by the
    rotation function's createSecret, or not JSON at all)."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    if not isinstance(event, Mapping) or event.get("source") != "aws.secretsmanager":
        return None
    detail = _mapping(event.get("detail"))
    name = str(detail.get("eventName") or "")
    event_id = str(event.get("id") or "")
    if detail.get("errorCode"):
        return None  # CloudTrail records refused calls too: they moved nothing
    kind = event.get("detail-type")
    if kind == API_CALL and name in API_CALL_EVENTS:
        request = _mapping(detail.get("requestParameters"))
        if not _moves_current(name, request):
            return None
        response = _mapping(detail.get("responseElements"))
        # Some events spelled the ARN "aRN" (secretsmanager/latest/userguide/
        # cloudtrail_log_entries.html); the response's ARN is the full one.
        secret = response.get("arn") or response.get("aRN") or request.get("secretId")
    elif kind == SERVICE_EVENT and name in SERVICE_EVENTS:
        secret = _mapping(detail.get("additionalEventData")).get("SecretId")
    else:
        return None
    if not isinstance(secret, str) or not secret:
        return None
    return SecretEvent(secret_id=secret, event_name=name, event_id=event_id)


def names_secret(secret_id: str, secret_arn: str) -> bool:
    """``secret_id`` (a name, an ARN, or an ARN without its random suffix) is this secret."""
    if secret_id == secret_arn:
        return True
    without_suffix = secret_arn[:-SECRET_ARN_SUFFIX]
    if secret_id == without_suffix:
        return True
    _, sep, name = without_suffix.partition(":secret:")
    return bool(sep) and secret_id == name


def matching(secret_id: str, arns: Iterable[str]) -> list[str]:
    return [arn for arn in arns if names_secret(secret_id, arn)]
