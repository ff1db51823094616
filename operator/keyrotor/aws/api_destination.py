"""Push delivery's AWS side: the installation's EventBridge rule (keyrotor.aws.eventing) sends its
events to an API destination, the operator's URL, through a connection that holds the shared
token EventBridge puts in a header (API-key authorization). Ensured idempotently: look first,
write only what differs.

The token is write-only in AWS: EventBridge keeps it in a Secrets Manager secret of its own and
``DescribeConnection`` answers only the header's name. So the connection's description carries a
salted, slow hash of the token (PBKDF2-HMAC-SHA256), and an unchanged token causes no write at a
start; a changed one (or a connection changed out of band) is written again with a new salt.
The hash lets nobody who can read the description check more than a few guesses a second, and
the token is at least 32 characters (keyrotor.settings).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from keyrotor.aws.clients import aws_errors, error_code
from keyrotor.aws.eventing import PUSH_TARGET_ID

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

TOKEN_HEADER = "X-Keyrotor-Token"  # noqa: S105  (the header's name, not a token)
TARGET_ID = PUSH_TARGET_ID  # the rule's target; ensuring it takes the queue's off (eventing)
HTTP_METHOD = "POST"
# Requests a second EventBridge may make to the operator: a burst of events waits in EventBridge
# (and is retried there) rather than piling up in the operator.
RATE_PER_SECOND = 20
# EventBridge retries a failed delivery (5xx, 429, a timeout) for at most this long; the sweep
# (every 1800 s by default in event mode) finds whatever is older.
RETRY_POLICY = {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 64}
HASH_NAME = "pbkdf2-sha256"
HASH_ITERATIONS = 200_000
GOOD_STATES = ("AUTHORIZED", "AUTHORIZING", "CREATING", "UPDATING")


def token_fingerprint(token: str, salt: str | None = None) -> str:
    """``pbkdf2-sha256$<iterations>$<salt>$<hash>`` of the token (a new salt unless given)."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt), HASH_ITERATIONS)
    return f"{HASH_NAME}${HASH_ITERATIONS}${salt}${digest.hex()}"


def description(cluster_name: str, fingerprint: str) -> str:
    return f"keyrotor {cluster_name}: push delivery; token {fingerprint}"


def token_matches(text: str, token: str) -> bool:
    """The description carries this token's fingerprint (compared in constant time)."""
    _, _, fingerprint = text.rpartition("token ")
    parts = fingerprint.split("$")
    if len(parts) != 4 or parts[0] != HASH_NAME or parts[1] != str(HASH_ITERATIONS):
        return False
    try:
        expected = token_fingerprint(token, parts[2])
    except ValueError:  # not hex: not ours
        return False
    return hmac.compare_digest(expected.encode(), fingerprint.encode())


@dataclass(frozen=True)
class PushDestination:
    """What push delivery makes in AWS (names, the URL, the role; no I/O)."""

    cluster_name: str
    name: str  # the connection's and the API destination's
    url: str
    role_arn: str


def _auth_parameters(token: str) -> dict[str, Any]:
    return {"ApiKeyAuthParameters": {"ApiKeyName": TOKEN_HEADER, "ApiKeyValue": token}}


def _connection_fields(push: PushDestination, token: str) -> dict[str, Any]:
    """CreateConnection's and UpdateConnection's parameters: the same connection either way."""
    return {
        "Name": push.name,
        "Description": description(push.cluster_name, token_fingerprint(token)),
        "AuthorizationType": "API_KEY",
        "AuthParameters": _auth_parameters(token),
    }


def _redacted(exc: ClientError, token: str) -> ClientError:
    """The same error without the token, should AWS's message ever quote a parameter."""
    response: Any = dict(exc.response)
    error = dict(response.get("Error") or {})
    error["Message"] = str(error.get("Message", "")).replace(token, "***")
    response["Error"] = error
    return ClientError(response, exc.operation_name)


def _write_connection(events: EventBridgeClient, create: bool, **kwargs: Any) -> Any:
    token = kwargs["AuthParameters"]["ApiKeyAuthParameters"]["ApiKeyValue"]
    try:
        if create:
            return events.create_connection(**kwargs)
        return events.update_connection(**kwargs)
    except ClientError as exc:
        raise _redacted(exc, token) from None


def _missing(exc: Exception) -> bool:
    return error_code(exc) == "ResourceNotFoundException"


@aws_errors("events")
def ensure_connection(events: EventBridgeClient, push: PushDestination, token: str) -> str:
    """The connection with API-key authorization by this token; its ARN."""
    try:
        found = events.describe_connection(Name=push.name)
    except Exception as exc:
        if not _missing(exc):
            raise
        created = _write_connection(events, True, **_connection_fields(push, token))
        return str(created["ConnectionArn"])
    api_key = (found.get("AuthParameters") or {}).get("ApiKeyAuthParameters") or {}
    if not (
        found.get("AuthorizationType") == "API_KEY"
        and api_key.get("ApiKeyName") == TOKEN_HEADER
        and found.get("ConnectionState") in GOOD_STATES
        and token_matches(str(found.get("Description") or ""), token)
    ):
        _write_connection(events, False, **_connection_fields(push, token))
    return str(found["ConnectionArn"])


def _destination_fields(push: PushDestination, connection_arn: str) -> dict[str, Any]:
    return {
        "ConnectionArn": connection_arn,
        "InvocationEndpoint": push.url,
        "HttpMethod": HTTP_METHOD,
        "InvocationRateLimitPerSecond": RATE_PER_SECOND,
    }


def _same(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(str(found.get(k)) == str(v) for k, v in wanted.items())


@aws_errors("events")
def ensure_destination(
    events: EventBridgeClient, push: PushDestination, connection_arn: str
) -> str:
    """The API destination: POST to the operator's URL through the connection; its ARN."""
    wanted = _destination_fields(push, connection_arn)
    try:
        found = events.describe_api_destination(Name=push.name)
    except Exception as exc:
        if not _missing(exc):
            raise
        created = events.create_api_destination(
            Name=push.name,
            Description=f"keyrotor {push.cluster_name}: rotation events to the operator",
            **wanted,
        )
        return str(created["ApiDestinationArn"])
    if not _same(found, wanted):
        events.update_api_destination(Name=push.name, **wanted)
    return str(found["ApiDestinationArn"])


def rule_target(push: PushDestination, destination_arn: str) -> dict[str, Any]:
    """The rule's target: the API destination, invoked with the administrator's role."""
    return {
        "Id": TARGET_ID,
        "Arn": destination_arn,
        "RoleArn": push.role_arn,
        "RetryPolicy": dict(RETRY_POLICY),
    }
