"""Metrics computed at scrape time from the statuses the operator watched, and AWS calls counted
by outcome through botocore's event hooks (against moto in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from prometheus_client import REGISTRY

from keyrotor import metrics


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def body(generation: int, observed: int, ready: str, reason: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"iamUser": "svc"},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": ""}],
            **status,
        },
    }


def sample(metric: str, /, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


@pytest.fixture
def statuses() -> Iterator[metrics.ObjectStatuses]:
    metrics.OBJECTS.clear()
    yield metrics.OBJECTS
    metrics.OBJECTS.clear()


def test_per_object_gauges_are_computed_when_scraped(statuses: metrics.ObjectStatuses) -> None:
    now = datetime.now(UTC)
    statuses.seen(
        "team-a",
        "app",
        body(
            2,
            2,
            "True",
            "Ready",
            lastRotationTime=iso(now - timedelta(days=3)),
            nextRotationTime=iso(now + timedelta(days=27)),
            lastSyncTime=iso(now - timedelta(hours=1)),
            versionId="v1",
            effective={"rotation": {"scheduleExpression": "rate(30 days)", "window": "2h"}},
        ),
    )
    statuses.seen("team-a", "stale", body(3, 2, "True", "Ready"))
    statuses.seen("team-b", "refused", body(1, 1, "False", "NotAuthorized"))
    key = {"namespace": "team-a", "name": "app"}
    age = sample("keyrotor_access_key_age_seconds", **key)
    assert age is not None and 3 * 86400 - 5 <= age <= 3 * 86400 + 60
    assert sample("keyrotor_access_key_max_age_seconds", **key) == 30 * 86400 + 2 * 3600
    upcoming = sample("keyrotor_next_rotation_seconds", **key)
    assert upcoming is not None and 27 * 86400 - 60 <= upcoming <= 27 * 86400 + 5
    assert sample("keyrotor_last_sync_timestamp_seconds", **key) == pytest.approx(
        (now - timedelta(hours=1)).replace(microsecond=0).timestamp()
    )
    assert sample("keyrotor_object_ready", reason="Ready", **key) == 1
    assert (
        sample("keyrotor_object_ready", namespace="team-a", name="stale", reason="NotObserved") == 0
    )
    assert sample("keyrotor_objects", ready="True", reason="Ready") == 1
    assert sample("keyrotor_objects", ready="False", reason="NotAuthorized") == 1
    assert sample("keyrotor_object_info", iam_user="svc", **key) == 1

    before = sample("keyrotor_rotations_total", outcome="succeeded") or 0
    statuses.seen("team-a", "app", body(2, 2, "True", "Ready", versionId="v2"))
    assert sample("keyrotor_rotations_total", outcome="succeeded") == before + 1
    # The first key of an object watched since before it had one counts too; an object first
    # seen with its key (a restart, a takeover) does not.
    statuses.seen("team-c", "new", body(1, 1, "False", "RotationPending"))
    statuses.seen("team-c", "new", body(1, 1, "True", "Ready", versionId="v1"))
    statuses.seen("team-c", "old", body(1, 1, "True", "Ready", versionId="v9"))
    assert sample("keyrotor_rotations_total", outcome="succeeded") == before + 2

    statuses.gone("team-a", "app")
    assert sample("keyrotor_object_ready", reason="Ready", **key) is None


def test_rotation_events_count_outcomes() -> None:
    started = sample("keyrotor_rotations_total", outcome="started") or 0
    failed = sample("keyrotor_rotations_total", outcome="failed") or 0
    for reason in ("RotationRequested", "Synced", "RotationStuck", "SecretRepaired"):
        metrics.count_event(reason)
    assert sample("keyrotor_rotations_total", outcome="started") == started + 1
    assert sample("keyrotor_rotations_total", outcome="failed") == failed + 1


def test_aws_calls_are_counted_by_operation_and_outcome() -> None:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        metrics.count_aws_calls(client)
        labels = {"service": "secretsmanager", "operation": "ListSecrets", "outcome": "success"}
        before = sample("keyrotor_aws_api_calls_total", **labels) or 0
        client.list_secrets()
        assert sample("keyrotor_aws_api_calls_total", **labels) == before + 1
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.describe_secret(SecretId="missing")
        failed = {
            "service": "secretsmanager",
            "operation": "DescribeSecret",
            "outcome": "ResourceNotFoundException",
        }
        assert sample("keyrotor_aws_api_calls_total", **failed) == 1
