"""The sweep's ListSecrets, page by page (keyrotor.aws.secrets.list_managed), against in-process
moto: a page is read only when the one before it has been used, only this installation's secrets
come out, and AWS times come out in UTC (one shared tzinfo, not botocore's tzlocal per time)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from dateutil import tz
from moto import mock_aws

from keyrotor.aws import secrets

REGION = "us-east-1"
TAG = "keyrotor.io/cluster"


@pytest.fixture
def sm() -> Iterator[tuple[Any, list[str]]]:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        calls: list[str] = []
        client.meta.events.register(
            "before-call.secretsmanager.*", lambda model, **_: calls.append(model.name)
        )
        yield client, calls


def test_pages_are_read_as_they_are_used(sm: tuple[Any, list[str]]) -> None:
    client, calls = sm
    for i in range(150):
        client.create_secret(
            Name=f"keyrotor/c/ns/app-{i}", SecretString="{}", Tags=[{"Key": TAG, "Value": "c"}]
        )
    client.create_secret(Name="other/x", SecretString="{}", Tags=[{"Key": TAG, "Value": "d"}])
    client.create_secret(Name="other/y", SecretString="{}", Tags=[{"Key": "x", "Value": "c"}])
    calls.clear()

    listed = secrets.list_managed(client, tag_key=TAG, tag_value="c")
    assert calls == []  # nothing is read before the sweep asks
    first = [next(listed) for _ in range(100)]
    assert calls == ["ListSecrets"]  # one page so far
    rest = list(listed)
    assert calls == ["ListSecrets", "ListSecrets"]
    names = {o.arn.rsplit(":", 1)[-1].rsplit("-", 1)[0] for o in [*first, *rest]}
    assert len(first) + len(rest) == 150 and len(names) == 150
    assert all(o.tags[TAG] == "c" for o in [*first, *rest])


def test_aws_times_are_utc() -> None:
    local = datetime(2026, 11, 29, 17, 0, tzinfo=tz.tzlocal())
    observed = secrets.observed_from_description(
        {"ARN": "arn:x", "LastRotatedDate": local, "NextRotationDate": None}
    )
    assert observed.last_rotated == local and observed.last_rotated is not None
    assert observed.last_rotated.tzinfo is UTC
    assert observed.next_rotation is None
