"""Push delivery's listener (keyrotor.event_push), over real HTTP on loopback: the token, the
size limit, which secrets get looked at, and that a request can queue nothing but this
installation's own objects, each once. Also its settings and its AWS side (in-process moto):
an unchanged token writes nothing at a start.

No AWS look runs here (the inbox is inspected, not worked): the end-to-end test
tests/e2e/test_event_push.py shows the look and the mirror.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from kubernetes import client
from moto import mock_aws

from keyrotor import metrics
from keyrotor.aws import api_destination
from keyrotor.aws.clients import AwsClients
from keyrotor.cli import build_parser, settings_from_args
from keyrotor.event_push import MAX_BODY, PushDelivery, PushInbox, PushListener, own_secret
from keyrotor.installation import Installation, Target
from keyrotor.k8s.client import KubeApis
from keyrotor.outcome import IndexUpdate
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings, SettingsError
from keyrotor.sync import SyncLoop

TOKEN = "t0k3n-" + "a" * 40
ACCOUNT = "123456789012"
REGION = "us-east-1"
OURS = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:keyrotor/c/team-a/app-AbCdEf"
OTHER_INSTALLATION = (
    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:keyrotor/d/team-a/app-XyZ123"
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "cluster_name": "c",
        "event_mode": True,
        "event_delivery": "push",
        "event_push_port": 1,
        "event_push_url": "https://keyrotor.example.com/events",
        "event_push_role_arn": f"arn:aws:iam::{ACCOUNT}:role/keyrotor-c-event-push",
        "event_push_token": TOKEN,
    }
    return Settings(**{**values, **changes})


def _event(secret: str, name: str = "UpdateSecretVersionStage") -> dict[str, Any]:
    return {
        "version": "0",
        "id": "e-1",
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": name,
            "requestParameters": {
                "secretId": secret,
                "versionStage": "AWSCURRENT",
                "moveToVersionId": "v2",
            },
            "responseElements": {"arn": secret},
        },
    }


@pytest.fixture
def delivery() -> Iterator[PushDelivery]:
    """A delivery (not started: no AWS writes, no looks) on a listener on a free loopback port,
    with one object of this installation in the index."""
    with mock_aws():
        settings = _settings(event_push_port=_free_port())
        aws = AwsClients.create(REGION)
        api = client.ApiClient()  # never called: nothing here reaches Kubernetes
        kube = KubeApis(
            core=client.CoreV1Api(api),
            custom=client.CustomObjectsApi(api),
            apps=client.AppsV1Api(api),
        )
        rt = Runtime(
            settings=settings,
            aws=aws,
            kube=kube,
            installation=Installation(settings, aws, Target(ACCOUNT, "aws")),
            emit=lambda *_a, **_k: None,
        )
        rt.index.apply(
            "team-a",
            "app",
            "uid-1",
            IndexUpdate(active=True, iam_user="app", secret_arn=OURS, mirrored_version="v1"),
            now=T0,
            recheck_after=None,
            reported_last_rotation=None,
        )
        listener = PushListener(settings).start()
        push = PushDelivery(rt, SyncLoop(rt), listener)
        listener.attach(push.receive)
        try:
            yield push
        finally:
            listener.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(
    push: PushDelivery,
    body: bytes,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", push.listener.port, timeout=10)
    try:
        given = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, "/events", body=body, headers=given)
        return connection.getresponse().status
    finally:
        connection.close()


def _authorized(token: str = TOKEN) -> dict[str, str]:
    return {api_destination.TOKEN_HEADER: token}


def _count(outcome: str) -> float:
    return float(metrics.EVENT_PUSH_REQUESTS.labels(outcome=outcome)._value.get())


def test_a_request_with_the_token_queues_the_object_its_event_names(
    delivery: PushDelivery,
) -> None:
    accepted = _count("accepted")
    assert _post(delivery, json.dumps(_event(OURS)).encode(), _authorized()) == 202
    assert len(delivery.inbox) == 1
    assert delivery.inbox.take(timeout=1) == (("team-a", "app"), 0)
    assert _count("accepted") == accepted + 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _authorized("wrong-" + "a" * 40),
        _authorized(TOKEN[:-1]),
        _authorized(TOKEN + "x"),
        _authorized(TOKEN.upper()),
        {"Authorization": f"Bearer {TOKEN}"},
    ],
    ids=["none", "wrong", "prefix", "longer", "case", "other-header"],
)
def test_without_the_token_nothing_happens(delivery: PushDelivery, headers: dict[str, str]) -> None:
    refused = _count("unauthorized")
    assert _post(delivery, json.dumps(_event(OURS)).encode(), headers) == 401
    assert len(delivery.inbox) == 0
    assert _count("unauthorized") == refused + 1


def test_two_token_headers_are_refused(delivery: PushDelivery) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", delivery.listener.port, timeout=10)
    body = json.dumps(_event(OURS)).encode()
    connection.putrequest("POST", "/events")
    connection.putheader(api_destination.TOKEN_HEADER, TOKEN)
    connection.putheader(api_destination.TOKEN_HEADER, "x" * 40)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    assert connection.getresponse().status == 401
    connection.close()
    assert len(delivery.inbox) == 0


def test_a_body_over_the_limit_is_refused_unread(delivery: PushDelivery) -> None:
    # Only the headers are sent: the listener answers from Content-Length, without the body.
    connection = http.client.HTTPConnection("127.0.0.1", delivery.listener.port, timeout=10)
    connection.putrequest("POST", "/events")
    connection.putheader(api_destination.TOKEN_HEADER, TOKEN)
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    assert len(delivery.inbox) == 0


def test_other_methods_bad_bodies_and_missing_lengths_are_refused(delivery: PushDelivery) -> None:
    assert _post(delivery, b"", _authorized(), method="GET") == 405
    assert _post(delivery, b"not json", _authorized()) == 400
    assert _post(delivery, b"[" * 100_000 + b"]" * 100_000, _authorized()) == 400
    connection = http.client.HTTPConnection("127.0.0.1", delivery.listener.port, timeout=10)
    connection.putrequest("POST", "/events", skip_accept_encoding=True)
    connection.putheader(api_destination.TOKEN_HEADER, TOKEN)
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    assert connection.getresponse().status == 411
    connection.close()
    assert len(delivery.inbox) == 0


@pytest.mark.parametrize(
    "event",
    [
        _event(OTHER_INSTALLATION),  # another installation's secret: not looked at
        _event("keyrotor/c/team-b/unknown"),  # this installation's prefix, but no object here
        _event("plain/secret"),
        _event(OURS, name="DeleteSecret"),  # not a call that moves AWSCURRENT
        {**_event(OURS), "source": "aws.s3"},
        {**_event(OURS), "detail": {**_event(OURS)["detail"], "errorCode": "AccessDenied"}},
    ],
    ids=["other-installation", "unknown", "foreign", "not-current", "other-source", "failed"],
)
def test_only_this_installations_own_objects_are_queued(
    delivery: PushDelivery, event: dict[str, Any]
) -> None:
    assert _post(delivery, json.dumps(event).encode(), _authorized()) == 200
    assert len(delivery.inbox) == 0


def test_duplicates_collapse_into_one_look(delivery: PushDelivery) -> None:
    for name in ("UpdateSecretVersionStage", "UpdateSecretVersionStage", "PutSecretValue"):
        assert _post(delivery, json.dumps(_event(OURS, name)).encode(), _authorized()) == 202
    by_name = _event(OURS)
    by_name["detail"]["responseElements"] = {}
    by_name["detail"]["requestParameters"]["secretId"] = "keyrotor/c/team-a/app"
    assert _post(delivery, json.dumps(by_name).encode(), _authorized()) == 202
    assert len(delivery.inbox) == 1


def test_a_standby_answers_503_so_that_eventbridge_retries(delivery: PushDelivery) -> None:
    delivery.listener.attach(None)
    assert _post(delivery, json.dumps(_event(OURS)).encode(), _authorized()) == 503
    assert _post(delivery, json.dumps(_event(OURS)).encode(), {}) == 401  # the token first


def test_the_inbox_is_bounded_and_spaces_looks_at_one_object() -> None:
    inbox = PushInbox(limit=2, gap=60.0)
    assert inbox.add([("a", "1"), ("a", "2")])
    assert not inbox.add([("a", "3")])  # full: 429, EventBridge retries
    assert inbox.add([("a", "1")])  # already waiting: collapses
    assert len(inbox) == 2
    first = inbox.take(timeout=1)
    assert first is not None
    inbox.add([first[0]])  # looked at just now: not again before the gap
    second = inbox.take(timeout=1)
    assert second is not None and second[0] != first[0]
    assert inbox.take(timeout=0.2) is None


def test_own_secret_is_by_this_installations_prefix() -> None:
    settings = _settings()
    assert own_secret(OURS, settings)
    assert own_secret("keyrotor/c/team-a/app", settings)
    assert not own_secret(OTHER_INSTALLATION, settings)
    assert not own_secret("keyrotor/c2/team-a/app", settings)
    assert not own_secret("x:secret:keyrotor/c/team-a/app", settings)


# -- settings ------------------------------------------------------------------------------------


def test_push_settings_from_flags_and_the_token_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYROTOR_EVENT_PUSH_TOKEN", TOKEN)
    monkeypatch.setenv("KEYROTOR_EVENT_PUSH_ROLE_ARN", f"arn:aws:iam::{ACCOUNT}:role/r")
    args = build_parser().parse_args(
        [
            "run",
            "--event-mode",
            "--event-delivery",
            "push",
            "--event-push-port",
            "8443",
            "--event-push-url",
            "https://keyrotor.example.com/events",
        ]
    )
    settings = settings_from_args(args)
    assert settings.event_push and settings.event_push_token == TOKEN
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"event_mode": False}, "--event-delivery push"),
        ({"event_push_port": 0}, "--event-push-port"),
        ({"event_push_url": "http://keyrotor.example.com/events"}, "--event-push-url"),
        ({"event_push_url": "https://user:pw@keyrotor.example.com/"}, "--event-push-url"),
        ({"event_push_role_arn": None}, "--event-push-role-arn"),
        ({"event_push_token": ""}, "KEYROTOR_EVENT_PUSH_TOKEN"),
        ({"event_push_token": "short"}, "KEYROTOR_EVENT_PUSH_TOKEN"),
        ({"event_push_token": "a b" * 20}, "KEYROTOR_EVENT_PUSH_TOKEN"),
        ({"event_delivery": "carrier-pigeon"}, "--event-delivery"),
    ],
)
def test_push_settings_are_checked_without_showing_the_token(
    changes: dict[str, Any], flag: str
) -> None:
    with pytest.raises(SettingsError, match=flag) as raised:
        _settings(**changes)
    assert TOKEN not in str(raised.value) and "a b" not in str(raised.value)


def test_plain_http_only_to_loopback() -> None:
    assert _settings(event_push_url="http://127.0.0.1:8443/events").event_push


# -- the AWS side ----------------------------------------------------------------------------------


def test_an_unchanged_token_writes_nothing_and_a_new_one_is_written() -> None:
    with mock_aws():
        events = boto3.client("events", region_name=REGION)
        push = api_destination.PushDestination(
            cluster_name="c",
            name="keyrotor-c-push",
            url="https://keyrotor.example.com/events",
            role_arn=f"arn:aws:iam::{ACCOUNT}:role/r",
        )
        writes: list[str] = []
        events.meta.events.register(
            "before-call.events.*", lambda model, **_: writes.append(model.name)
        )
        connection = api_destination.ensure_connection(events, push, TOKEN)
        destination = api_destination.ensure_destination(events, push, connection)
        described = events.describe_connection(Name=push.name)
        assert TOKEN not in json.dumps(described, default=str)
        assert api_destination.token_matches(described["Description"], TOKEN)
        writes.clear()
        assert api_destination.ensure_connection(events, push, TOKEN) == connection
        assert api_destination.ensure_destination(events, push, connection) == destination
        assert writes == ["DescribeConnection", "DescribeApiDestination"]  # reads only
        writes.clear()
        api_destination.ensure_connection(events, push, "n3w-" + "b" * 40)
        assert writes == ["DescribeConnection", "UpdateConnection"]
        assert not api_destination.token_matches(
            events.describe_connection(Name=push.name)["Description"], TOKEN
        )
        moved = api_destination.PushDestination(**{**push.__dict__, "url": "https://new.example/"})
        writes.clear()
        api_destination.ensure_destination(events, moved, connection)
        assert writes == ["DescribeApiDestination", "UpdateApiDestination"]


def test_the_fingerprint_is_salted_and_checked_in_full() -> None:
    one, two = (api_destination.token_fingerprint(TOKEN) for _ in range(2))
    assert one != two  # a new salt each time
    assert TOKEN not in one
    text = api_destination.description("c", one)
    assert api_destination.token_matches(text, TOKEN)
    assert not api_destination.token_matches(text, TOKEN[:-1])
    assert not api_destination.token_matches(text[:-1], TOKEN)
    assert not api_destination.token_matches("keyrotor c: push delivery; token x$y", TOKEN)
