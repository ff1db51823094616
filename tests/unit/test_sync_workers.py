"""The sync loop works on many objects at once, never more than ``--sync-workers``, each object
once a round, and one object's failure stays with it.

Concurrency is shown by counting, never by timing: each object's work waits at a barrier of
exactly N parties, so a round of many objects completes only if N of them run at once, and a
counter records the most that ever ran together. (The barrier's timeout only turns a hang into
a failure.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from moto import mock_aws

from keyrotor import reconcile
from keyrotor.aws.clients import AwsClients
from keyrotor.installation import Installation, Target
from keyrotor.k8s.client import KubeApis
from keyrotor.outcome import IndexUpdate
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.sync import SyncLoop

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HANG_GUARD = 60.0  # seconds; a barrier that never fills fails the test instead of hanging it


class InFlight:
    """Counts the works running now and the most at once; each waits for ``parties`` others."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=HANG_GUARD)
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done: list[str] = []

    def run(self, name: str, fail: bool = False) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self.barrier.wait()
            if fail:
                raise RuntimeError(f"{name} broke")
        finally:
            with self.lock:
                self.now -= 1
                self.done.append(name)


def make_runtime(workers: int, clock: list[datetime]) -> Runtime:
    settings = Settings(cluster_name="c", sync_workers=workers)
    aws = AwsClients.create("us-east-1")
    api = client.ApiClient()  # never called here: the objects' work is the test's own
    kube = KubeApis(
        core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api), apps=client.AppsV1Api(api)
    )
    return Runtime(
        settings=settings,
        aws=aws,
        kube=kube,
        installation=Installation(settings, aws, Target("123456789012", "aws")),
        emit=lambda *_a, **_k: None,
        clock=lambda: clock[0],
    )


def add_objects(rt: Runtime, count: int, **state: Any) -> list[str]:
    names = [f"app-{i:03d}" for i in range(count)]
    for name in names:
        rt.index.apply(
            "ns",
            name,
            f"uid-{name}",
            IndexUpdate(active=True, iam_user=name, **state),
            now=T0,
            recheck_after=60,  # due for a new decision at T0 + 60 s
            reported_last_rotation=None,
        )
    return names


@pytest.fixture
def aws_in_process() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_due_decisions_run_n_at_once_and_each_object_once(
    workers: int, monkeypatch: pytest.MonkeyPatch, aws_in_process: None
) -> None:
    clock = [T0]
    rt = make_runtime(workers, clock)
    names = add_objects(rt, workers * 6)
    probe = InFlight(workers)
    monkeypatch.setattr(reconcile, "converge", lambda _rt, _ns, name, **_: probe.run(name))
    loop = SyncLoop(rt)
    try:
        clock[0] = T0 + timedelta(seconds=61)
        loop.tick()
    finally:
        loop.close()
    assert probe.peak == workers  # N at once (the barrier needs N), never more
    assert sorted(probe.done) == names  # every due object, once
    assert all(entry.failures == 0 for entry in rt.index.entries())


def test_one_failing_object_backs_off_alone(
    monkeypatch: pytest.MonkeyPatch, aws_in_process: None
) -> None:
    clock = [T0]
    rt = make_runtime(4, clock)
    names = add_objects(rt, 16)
    probe = InFlight(4)
    monkeypatch.setattr(
        reconcile, "converge", lambda _rt, _ns, name, **_: probe.run(name, fail=name == "app-005")
    )
    loop = SyncLoop(rt)
    try:
        clock[0] = T0 + timedelta(seconds=61)
        loop.tick()
    finally:
        loop.close()
    assert sorted(probe.done) == names
    failed = {e.name: e for e in rt.index.entries() if e.failures}
    assert list(failed) == ["app-005"]
    next_check = failed["app-005"].next_check
    assert next_check is not None and next_check > clock[0]  # its own backoff


def test_focus_looks_describe_n_secrets_at_once(aws_in_process: None) -> None:
    """Objects in focus: one DescribeSecret each (moto in-process), N at once, counted by
    botocore's own events around each call."""
    workers = 5
    clock = [T0]
    rt = make_runtime(workers, clock)
    sm = rt.aws.secretsmanager
    names = [f"app-{i:03d}" for i in range(workers * 4)]
    for name in names:
        created = sm.create_secret(Name=f"keyrotor/c/ns/{name}", SecretString="{}")
        rt.index.apply(
            "ns",
            name,
            f"uid-{name}",
            IndexUpdate(
                active=True,
                iam_user=name,
                secret_arn=created["ARN"],
                mirrored_version=created["VersionId"],  # nothing to mirror: look, no decision
                focus=True,
            ),
            now=T0,
            recheck_after=None,
            reported_last_rotation=None,
        )
    probe = InFlight(workers)
    described: list[str] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        described.append(params["SecretId"])
        probe.run(params["SecretId"])

    sm.meta.events.register("before-parameter-build.secrets-manager.DescribeSecret", before)
    loop = SyncLoop(rt)
    try:
        clock[0] = T0 + timedelta(seconds=2)
        loop.tick()
    finally:
        loop.close()
    assert probe.peak == workers
    assert len(described) == len(names) == len(set(described))
