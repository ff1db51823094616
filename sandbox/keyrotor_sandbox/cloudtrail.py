"""The events CloudTrail hands to EventBridge for Secrets Manager (the emulator's fix 12): their
shape only, no I/O. :class:`keyrotor_sandbox.aws.AwsEmulator` puts them on moto's default event
bus, whose rules deliver them to their targets (moto's events backend sends to SQS itself).

Shapes follow secretsmanager/latest/userguide/cloudtrail_log_entries.html and
eventbridge/latest/userguide/eb-service-event-cloudtrail.html: an API call is
``AWS API Call via CloudTrail`` with the request's parameters in lowerCamelCase (secret values
replaced, as CloudTrail does) and the response's ``ARN``/``Name``/``VersionId`` as
``arn``/``name``/``versionId``; a rotation's own events (``RotationStarted``,
``RotationSucceeded``, ``RotationFailed``) are ``AWS Service Event via CloudTrail`` with the
secret's ARN in ``additionalEventData.SecretId``. EventBridge does not receive read-only calls
(Get*, List*, Describe*), so only writes are emitted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

SOURCE = "aws.secretsmanager"
EVENT_SOURCE = "secretsmanager.amazonaws.com"
API_CALL = "AWS API Call via CloudTrail"
SERVICE_EVENT = "AWS Service Event via CloudTrail"
HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"
SECRET_FIELDS = frozenset({"SecretString", "SecretBinary"})
# Secrets Manager's write operations (the ones CloudTrail hands to EventBridge).
WRITE_OPERATIONS = frozenset(
    {
        "CancelRotateSecret",
        "CreateSecret",
        "DeleteSecret",
        "PutSecretValue",
        "RestoreSecret",
        "RotateSecret",
        "TagResource",
        "UntagResource",
        "UpdateSecret",
        "UpdateSecretVersionStage",
    }
)
RESPONSE_FIELDS = {"ARN": "arn", "Name": "name", "VersionId": "versionId"}


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _common(name: str, account_id: str, region: str, now: datetime) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": _time(now),
        "eventSource": EVENT_SOURCE,
        "eventName": name,
        "awsRegion": region,
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": False,
        "managementEvent": True,
        "recipientAccountId": account_id,
        "eventCategory": "Management",
    }


def api_call(
    operation: str,
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    *,
    account_id: str,
    region: str,
    caller: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The ``detail`` of a successful API call's event. ``caller``: the access key id."""
    parameters = {
        _lower_camel(key): (HIDDEN if key in SECRET_FIELDS else value)
        for key, value in request.items()
    }
    elements = {RESPONSE_FIELDS[k]: v for k, v in response.items() if k in RESPONSE_FIELDS}
    return {
        **_common(operation, account_id, region, now or datetime.now(UTC)),
        "userIdentity": {"type": "IAMUser", "accountId": account_id, "accessKeyId": caller},
        "eventType": "AwsApiCall",
        "requestParameters": parameters,
        "responseElements": elements or None,
    }


def service_event(
    name: str, secret_arn: str, *, account_id: str, region: str, now: datetime | None = None
) -> dict[str, Any]:
    """The ``detail`` of a rotation's own event (RotationStarted/Succeeded/Failed)."""
    return {
        **_common(name, account_id, region, now or datetime.now(UTC)),
        "userIdentity": {"accountId": account_id, "invokedBy": EVENT_SOURCE},
        "sourceIPAddress": EVENT_SOURCE,
        "userAgent": EVENT_SOURCE,
        "eventType": "AwsServiceEvent",
        "requestParameters": None,
        "responseElements": None,
        "additionalEventData": {"SecretId": secret_arn},
    }


def event(
    detail_type: str, detail: Mapping[str, Any], *, account_id: str, region: str, at: float
) -> dict[str, Any]:
    """The EventBridge event (eventbridge/latest/ref/overiew-event-structure.html); ``time`` as
    a UNIX timestamp, which moto's targets format."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": SOURCE,
        "account": account_id,
        "time": at,
        "region": region,
        "resources": [],
        "detail": json.loads(json.dumps(detail)),
    }
