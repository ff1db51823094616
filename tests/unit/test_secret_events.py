"""Event mode's pure parts: which secret an EventBridge event names and whether it can mean a
new AWSCURRENT (keyrotor.secret_events); the rule's pattern and the queue's policy
(keyrotor.aws.eventing); the settings (event mode is off by default, its sweep is the 30-minute
safety net unless --sync-interval says otherwise)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keyrotor.aws import eventing
from keyrotor.cli import build_parser, settings_from_args
from keyrotor.secret_events import SecretEvent, matching, names_secret, parse
from keyrotor.settings import SettingsError

ARN = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:keyrotor/prod/team-a/svc-AbCdEf"
NAME = "keyrotor/prod/team-a/svc"


def api_call(name: str, request: dict[str, Any], response: Any = None, **extra: Any) -> str:
    detail = {
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": name,
        "requestParameters": request,
        "responseElements": response,
        **extra,
    }
    return json.dumps(
        {
            "id": "e1",
            "source": "aws.secretsmanager",
            "detail-type": "AWS API Call via CloudTrail",
            "detail": detail,
        }
    )


def service_event(name: str, secret: str) -> str:
    return json.dumps(
        {
            "id": "e2",
            "source": "aws.secretsmanager",
            "detail-type": "AWS Service Event via CloudTrail",
            "detail": {"eventName": name, "additionalEventData": {"SecretId": secret}},
        }
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The rotation function's finishSecret: AWSCURRENT moves.
        (
            api_call(
                "UpdateSecretVersionStage",
                {"secretId": ARN, "versionStage": "AWSCURRENT", "moveToVersionId": "v2"},
                {"arn": ARN, "name": NAME},
            ),
            SecretEvent(ARN, "UpdateSecretVersionStage", "e1"),
        ),
        # Taking AWSPENDING off, or AWSCURRENT only removed: nothing moved to it.
        (
            api_call(
                "UpdateSecretVersionStage",
                {"secretId": ARN, "versionStage": "AWSPENDING", "removeFromVersionId": "v2"},
            ),
            None,
        ),
        (
            api_call(
                "UpdateSecretVersionStage",
                {"secretId": ARN, "versionStage": "AWSCURRENT", "removeFromVersionId": "v1"},
            ),
            None,
        ),
        # A new value without stages becomes AWSCURRENT; the request names the secret by name.
        (
            api_call("PutSecretValue", {"secretId": NAME, "secretString": "HIDDEN"}),
            SecretEvent(NAME, "PutSecretValue", "e1"),
        ),
        (
            api_call("PutSecretValue", {"secretId": NAME, "versionStages": ["AWSCURRENT"]}),
            SecretEvent(NAME, "PutSecretValue", "e1"),
        ),
        # createSecret's AWSPENDING version.
        (api_call("PutSecretValue", {"secretId": ARN, "versionStages": ["AWSPENDING"]}), None),
        # The response's ARN (spelled aRN by older events) is the full one.
        (
            api_call("PutSecretValue", {"secretId": NAME}, {"aRN": ARN}),
            SecretEvent(ARN, "PutSecretValue", "e1"),
        ),
        # A refused call moved nothing.
        (
            api_call("PutSecretValue", {"secretId": ARN}, None, errorCode="AccessDenied"),
            None,
        ),
        (service_event("RotationSucceeded", ARN), SecretEvent(ARN, "RotationSucceeded", "e2")),
        (service_event("RotationStarted", ARN), None),
        (service_event("RotationFailed", ARN), None),
        (api_call("RotateSecret", {"secretId": ARN}), None),
        (api_call("GetSecretValue", {"secretId": ARN}), None),
        (json.dumps({"source": "aws.s3", "detail-type": "x", "detail": {}}), None),
        (service_event("RotationSucceeded", ""), None),
        ("not json", None),
        ("[1, 2]", None),
        (json.dumps({"source": "aws.secretsmanager", "detail": "odd"}), None),
    ],
)
def test_parse(body: str, expected: SecretEvent | None) -> None:
    assert parse(body) == expected


@pytest.mark.parametrize(
    ("secret_id", "expected"),
    [
        (ARN, True),
        (ARN[:-7], True),  # a partial ARN (without the random suffix)
        (NAME, True),
        ("keyrotor/prod/team-a/sv", False),
        ("keyrotor/prod/team-a/svc-AbCdEf", False),  # a name that looks like name + suffix
        (ARN.replace("111122223333", "999999999999"), False),
        ("", False),
    ],
)
def test_names_secret(secret_id: str, expected: bool) -> None:
    assert names_secret(secret_id, ARN) is expected


def test_matching_picks_the_secret_among_others() -> None:
    other = ARN.replace("/svc-", "/svc2-")
    assert matching(NAME, [other, ARN]) == [ARN]


def test_pattern_covers_this_installation_only() -> None:
    target = eventing.EventTarget(cluster_name="prod", region="eu-west-1", account_id="1" * 12)
    pattern = eventing.event_pattern(target)
    assert pattern["source"] == ["aws.secretsmanager"]
    api, service = pattern["$or"]
    assert api["detail-type"] == ["AWS API Call via CloudTrail"]
    assert api["detail"]["eventName"] == ["PutSecretValue", "UpdateSecretVersionStage"]
    assert api["detail"]["requestParameters"]["secretId"] == [
        {"prefix": "keyrotor/prod/"},
        {"prefix": "arn:aws:secretsmanager:eu-west-1:111111111111:secret:keyrotor/prod/"},
    ]
    assert service["detail-type"] == ["AWS Service Event via CloudTrail"]
    assert service["detail"]["eventName"] == ["RotationSucceeded"]
    assert service["detail"]["additionalEventData"]["SecretId"] == [
        {"prefix": "arn:aws:secretsmanager:eu-west-1:111111111111:secret:keyrotor/prod/"}
    ]
    assert target.queue_arn == "arn:aws:sqs:eu-west-1:111111111111:keyrotor-prod-events"


def test_event_mode_is_off_by_default_and_lengthens_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = settings_from_args(build_parser().parse_args(["run"]))
    assert (plain.event_mode, plain.sync_interval, plain.event_queue_url) == (False, 300, None)
    events = settings_from_args(build_parser().parse_args(["run", "--event-mode"]))
    assert (events.event_mode, events.sync_interval) == (True, 1800)
    given = build_parser().parse_args(["run", "--event-mode", "--sync-interval", "10m"])
    assert settings_from_args(given).sync_interval == 600
    monkeypatch.setenv("KEYROTOR_EVENT_MODE", "true")
    monkeypatch.setenv("KEYROTOR_EVENT_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/q")
    from_env = settings_from_args(build_parser().parse_args(["run"]))
    assert from_env.event_mode and from_env.event_queue_url.endswith("/q")  # type: ignore[union-attr]


def test_a_queue_url_without_event_mode_is_refused() -> None:
    args = build_parser().parse_args(["run", "--event-queue-url", "https://x/1/q"])
    with pytest.raises(SettingsError, match="--event-queue-url"):
        settings_from_args(args)
