"""Leader election on a real Lease in the real API server (keyrotor.k8s.leader_election), with
short timings: one holder at a time, takeover only after the lease expired, a race for an expired
lease won by exactly one candidate (the API server's optimistic concurrency), a leader that cannot
renew gives up, and a released lease is taken at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from keyrotor.k8s.leader_election import LeaderElector

pytestmark = pytest.mark.kube

TIMINGS = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.25}


def wait_for(probe: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def candidates(kube_admin_api: Any, namespace: str) -> Iterator[Callable[[str], LeaderElector]]:
    name = f"lease-{uuid.uuid4().hex[:6]}"
    made: list[LeaderElector] = []

    def make(identity: str) -> LeaderElector:
        elector = LeaderElector(
            kube_admin_api, namespace=namespace, name=name, identity=identity, **TIMINGS
        )
        made.append(elector)
        return elector

    yield make
    for elector in made:
        elector.stop()


def holder(elector: LeaderElector) -> str:
    lease = client.CoordinationV1Api(elector.api.api_client).read_namespaced_lease(
        elector.name, elector.namespace
    )
    return str(lease.spec.holder_identity or "")


def test_one_holder_and_takeover_after_expiry(
    candidates: Callable[[str], LeaderElector],
) -> None:
    first, second = candidates("first"), candidates("second")
    first.acquire()
    lease = client.CoordinationV1Api(first.api.api_client).read_namespaced_lease(
        first.name, first.namespace
    )
    assert (lease.spec.holder_identity, lease.spec.lease_duration_seconds) == ("first", 3)
    assert lease.spec.lease_transitions == 0
    lost = threading.Event()
    first.start_renewing(lost.set)

    # While the first renews, the second never gets it, however often it tries.
    renewed = lease.spec.renew_time
    wait_for(
        lambda: (
            client.CoordinationV1Api(first.api.api_client)
            .read_namespaced_lease(first.name, first.namespace)
            .spec.renew_time
            != renewed
        ),
        what="a renewal",
    )
    for _ in range(8):
        assert second.try_acquire_or_renew() is False
    assert holder(first) == "first"

    # The first stops renewing (as a SIGKILLed process does): the second takes over once the
    # lease has expired by its own clock.
    first.stop()
    acquired = threading.Thread(target=second.acquire, daemon=True)
    acquired.start()
    acquired.join(timeout=30)
    assert not acquired.is_alive()
    assert holder(second) == "second"
    lease = client.CoordinationV1Api(second.api.api_client).read_namespaced_lease(
        second.name, second.namespace
    )
    assert lease.spec.lease_transitions == 1
    assert not lost.is_set()


def test_a_race_for_an_expired_lease_has_one_winner(
    candidates: Callable[[str], LeaderElector],
) -> None:
    first = candidates("first")
    first.acquire()  # never renewed: it expires
    racers = [candidates(f"racer-{i}") for i in range(4)]
    for racer in racers:
        assert racer.try_acquire_or_renew() is False  # each observes the record first
    time.sleep(TIMINGS["lease_duration"] + 0.2)  # let the lease expire (waiting, not asserting)
    results: dict[str, bool] = {}
    barrier = threading.Barrier(len(racers))

    def race(racer: LeaderElector) -> None:
        barrier.wait()
        results[racer.identity] = racer.try_acquire_or_renew()

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [identity for identity, won in results.items() if won]
    assert len(winners) == 1, results
    assert holder(first) == winners[0]


def test_a_leader_that_cannot_renew_gives_up(
    candidates: Callable[[str], LeaderElector], kube_admin_api: Any
) -> None:
    leader = candidates("leader")
    leader.acquire()
    lost = threading.Event()
    leader.start_renewing(lost.set)
    # Someone else writes the Lease (as a partitioned leader would find on its return):
    # renewals are refused from then on, and after the renew deadline the leader gives up.
    coordination = client.CoordinationV1Api(kube_admin_api)
    lease = coordination.read_namespaced_lease(leader.name, leader.namespace)
    lease.spec.holder_identity = "usurper"
    coordination.replace_namespaced_lease(leader.name, leader.namespace, lease)
    assert lost.wait(timeout=30)
    assert holder(leader) == "usurper"


def test_a_released_lease_is_taken_at_once(candidates: Callable[[str], LeaderElector]) -> None:
    first, second = candidates("first"), candidates("second")
    first.acquire()
    assert second.try_acquire_or_renew() is False
    first.release()
    assert holder(first) == ""
    # No waiting for expiry: the very next attempt takes it.
    assert second.try_acquire_or_renew() is True
    assert holder(second) == "second"
