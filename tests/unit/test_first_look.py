"""The wait for a rotation keyrotor started (issue 10, one DescribeSecret per wait): its first
look comes about when this installation's rotations finish, not 2 s after the request, since a
rotation on AWS takes seconds at the least (the Lambda's testSecret waits for the new key to
propagate) and the looks before then are wasted. When that is, the waits themselves say: the
first look came too early (the rotation was seen at a later look), or not."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from keyrotor import reconcile
from keyrotor.index import ObjectIndex
from keyrotor.mirroring import FIRST_LOOK_CAP, focus_look_due, next_first_look
from keyrotor.outcome import IndexUpdate
from keyrotor.runtime import Runtime
from keyrotor.sync import SyncLoop
from tests.unit.test_sync_workers import make_runtime

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("looks", "due_after"),
    [(0, 10.0), (1, 12.0), (2, 16.0), (3, 24.0), (4, 40.0), (5, 70.0), (6, 100.0)],
)
def test_the_looks_start_at_the_first_look_then_back_off(looks: int, due_after: float) -> None:
    at = NOW + timedelta(seconds=due_after)
    assert focus_look_due(NOW, looks, at, 2.0, first=10.0)
    assert not focus_look_due(NOW, looks, at - timedelta(seconds=0.1), 2.0, first=10.0)


def test_without_a_first_look_the_schedule_is_the_backoff_from_the_interval() -> None:
    for looks, due_after in enumerate((2.0, 4.0, 8.0, 16.0, 32.0, 62.0, 92.0)):
        at = NOW + timedelta(seconds=due_after)
        assert focus_look_due(NOW, looks, at, 2.0, first=None) == focus_look_due(
            NOW, looks, at, 2.0
        )
        assert focus_look_due(NOW, looks, at, 2.0, first=1.0)  # never before the interval
        assert not focus_look_due(NOW, looks, at - timedelta(seconds=0.1), 2.0, first=1.0)


def test_the_first_look_comes_later_after_a_wait_it_was_too_early_for() -> None:
    assert next_first_look(10.0, seen_at_first=False, interval=2.0) == 12.5
    assert next_first_look(10.0, seen_at_first=True, interval=2.0) == 9.0
    assert next_first_look(2.0, seen_at_first=True, interval=2.0) == 2.0  # never before it
    assert next_first_look(FIRST_LOOK_CAP, seen_at_first=False, interval=2.0) == FIRST_LOOK_CAP


def _settle(rotation: float, waits: int = 200) -> tuple[float, list[int]]:
    """Waits for rotations that take ``rotation`` seconds each: where the first look ends up,
    and how many looks each wait made (one, or two: the first was too early)."""
    first, looks = 2.0, []
    for _wait in range(waits):
        seen = first >= rotation
        looks.append(1 if seen else 2)
        first = next_first_look(first, seen_at_first=seen, interval=2.0)
    return first, looks


@pytest.mark.parametrize("rotation", [0.3, 7.0, 12.0, 25.0])
def test_it_settles_where_most_waits_end_at_their_first_look(rotation: float) -> None:
    """From the interval, the first look moves to just past the rotations' time (never before
    the interval) and stays near it: a wait costs one look, about one in three two (from the
    interval on: 3 to 5 looks for 7 to 25 s)."""
    first, looks = _settle(rotation)
    settled = looks[-100:]
    assert max(2.0, rotation * 0.9) <= first <= max(2.0, rotation * 1.25)
    assert sum(settled) / len(settled) <= 1.5


def test_it_never_comes_later_than_the_cap() -> None:
    first, _looks = _settle(FIRST_LOOK_CAP * 3)
    assert first == FIRST_LOOK_CAP


def test_the_index_learns_the_first_look_from_ended_waits() -> None:
    index = ObjectIndex()
    assert index.first_look(2.0) == 2.0  # nothing learnt: the interval
    index.note_wait_ended(seen_at_first=False, interval=2.0)
    index.note_wait_ended(seen_at_first=False, interval=2.0)
    assert index.first_look(2.0) == 2.0 * 1.25 * 1.25
    index.note_wait_ended(seen_at_first=True, interval=2.0)
    assert index.first_look(2.0) == 2.0 * 1.25 * 1.25 * 0.9


# --- The sync loop: looks at the secrets of objects in focus (moto in-process) ----------------


@pytest.fixture
def aws_in_process() -> Iterator[None]:
    with mock_aws():
        yield


def _waiting(rt: Runtime, name: str, since: datetime) -> str:
    """An object waiting since ``since`` for the first rotation of its new secret (running:
    its new version is AWSPENDING)."""
    sm = rt.aws.secretsmanager
    created = sm.create_secret(Name=f"keyrotor/c/ns/{name}", SecretString="{}")
    sm.put_secret_value(
        SecretId=created["ARN"], SecretString='{"k": 1}', VersionStages=["AWSPENDING"]
    )
    rt.index.apply(
        "ns",
        name,
        f"uid-{name}",
        IndexUpdate(
            active=True,
            iam_user=name,
            secret_arn=created["ARN"],
            mirrored_version=created["VersionId"],
            focus=True,
        ),
        now=since,
        recheck_after=None,
        reported_last_rotation=None,
    )
    return str(created["ARN"])


def _rotated(rt: Runtime, arn: str) -> None:
    """The rotation finished (finishSecret): AWSCURRENT moved to the pending version."""
    sm = rt.aws.secretsmanager
    stages = sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
    current = next(v for v, s in stages.items() if "AWSCURRENT" in s)
    pending = next(v for v, s in stages.items() if "AWSPENDING" in s)
    sm.update_secret_version_stage(
        SecretId=arn,
        VersionStage="AWSCURRENT",
        MoveToVersionId=pending,
        RemoveFromVersionId=current,
    )
    sm.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=pending
    )


def test_the_next_wait_looks_first_when_the_last_waits_ended(
    monkeypatch: pytest.MonkeyPatch, aws_in_process: None
) -> None:
    clock = [NOW]
    rt = make_runtime(4, clock)
    decided: list[str] = []

    def mirror(_rt: Runtime, namespace: str, name: str, **_: Any) -> None:
        """The decision: the new version mirrored (as converge would record it)."""
        decided.append(name)
        entry = rt.index.get(namespace, name)
        assert entry is not None and entry.state.secret_arn is not None
        sm = boto3.client("secretsmanager", region_name="us-east-1")  # not the operator's
        current = sm.describe_secret(SecretId=entry.state.secret_arn)
        version = next(v for v, s in current["VersionIdsToStages"].items() if "AWSCURRENT" in s)
        rt.index.apply(
            namespace,
            name,
            entry.uid,
            replace(entry.state, mirrored_version=version, focus=False),
            now=clock[0],
            recheck_after=None,
            reported_last_rotation=None,
        )

    monkeypatch.setattr(reconcile, "converge", mirror)
    described: list[str] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        described.append(params["SecretId"])

    loop = SyncLoop(rt)

    def tick(at: datetime) -> list[str]:
        clock[0] = at
        described.clear()
        loop.tick()
        return list(described)

    try:
        slow = [_waiting(rt, name, NOW) for name in ("a", "b")]
        later = NOW + timedelta(minutes=5)
        fast = _waiting(rt, "c", later)
        rt.aws.secretsmanager.meta.events.register(
            "before-parameter-build.secrets-manager.DescribeSecret", before
        )
        assert sorted(tick(NOW + timedelta(seconds=2))) == sorted(slow)  # the first look: early
        assert decided == []
        for arn in slow:
            _rotated(rt, arn)
        assert sorted(tick(NOW + timedelta(seconds=4))) == sorted(slow)  # the second: seen
        assert sorted(decided) == ["a", "b"]
        assert rt.index.first_look(2.0) == 2.0 * 1.25 * 1.25  # 3.125 s

        _rotated(rt, fast)
        assert fast not in tick(later + timedelta(seconds=2))  # not before the learnt 3.125 s
        assert fast in tick(later + timedelta(seconds=3.2))
        assert rt.index.first_look(2.0) == 2.0 * 1.25 * 1.25 * 0.9  # seen at the first look
    finally:
        loop.close()
