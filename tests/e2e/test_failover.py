"""High availability: two operator processes with leader election on a Lease; exactly one acts.
The active one is SIGKILLed in the middle of a batch of creations and rotate-nows; the standby
takes the Lease over and every object converges: one secret each, one rotation per request,
every mirrored key working, no Event posted twice.

The failover time (SIGKILL to the standby holding the Lease) is measured and printed, and
recorded as the test's ``failover_seconds`` property; it is not asserted (speed is for
benchmarks). It is bounded by the lease duration (6s here) plus one retry period.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from keyrotor_sandbox.aws import Rotation
from keyrotor_sandbox.operator import OperatorProcess
from tests.fixtures.operator import Harness, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

LEASE_NAMESPACE = "keyrotor-system"
# Short timings for the test; production uses 15s, 10s, 2s. Renewals must survive a machine
# that is busy with other tests, so the deadline is several retry periods.
LEASE_ARGS = (
    "--leader-elect",
    "--leader-election-namespace",
    LEASE_NAMESPACE,
    "--leader-election-lease-duration",
    "6s",
    "--leader-election-renew-deadline",
    "4s",
    "--leader-election-retry-period",
    "0.5",
)
KEYROTOR_ARGS = (*LEASE_ARGS, "--leader-election-id", "first", "--stuck-after", "120")
BATCH = 6
CONVERGE_TIMEOUT = 240


@pytest.fixture(scope="module", autouse=True)
def lease_namespace(kube_admin_api: Any) -> str:
    """The operator's namespace, where its Lease lives (it may exist already)."""
    core = client.CoreV1Api(kube_admin_api)
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=LEASE_NAMESPACE))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    return LEASE_NAMESPACE


def lease(keyrotor: Harness) -> client.V1Lease | None:
    try:
        return client.CoordinationV1Api(keyrotor.api).read_namespaced_lease(
            f"keyrotor-{keyrotor.cluster_name}", LEASE_NAMESPACE
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def holder(keyrotor: Harness) -> str:
    found = lease(keyrotor)
    return (found.spec.holder_identity or "") if found is not None else ""


def rotations(keyrotor: Harness, ns: str) -> list[Rotation]:
    marker = f":secret:keyrotor/{keyrotor.cluster_name}/{ns}/"
    return [r for r in list(keyrotor.aws.rotations) if marker in r.secret_arn]


def wait_all(
    keyrotor: Harness, ns: str, names: list[str], done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, dict[str, Any]]:
    def probe() -> dict[str, dict[str, Any]] | None:
        objects = {name: keyrotor.get(ns, name) or {} for name in names}
        return objects if all(done(obj) for obj in objects.values()) else None

    return keyrotor.wait(probe, CONVERGE_TIMEOUT, what)


def is_ready(obj: dict[str, Any]) -> bool:
    return (Harness.condition(obj, "Ready") or {}).get("status") == "True"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  (loopback)
            return response.status, response.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def start_standby(keyrotor: Harness) -> OperatorProcess:
    return keyrotor.start_operator("--leader-election-id", "second")


def test_standby_takes_over_when_the_active_operator_dies(
    keyrotor: Harness, record_property: Callable[[str, object], None]
) -> None:
    first = keyrotor.operator
    assert first.wait_for_log("is the leader"), first.logs()[-3000:]
    assert holder(keyrotor).startswith("first_")
    second = start_standby(keyrotor)
    # keyrotor.operator is now the standby; wait() checks that it keeps running.
    assert second.wait_for_log("waiting for Lease"), second.logs()[-3000:]

    # Objects that exist and are Ready before the failover (handled by the first operator).
    ns = keyrotor.namespace("ha")
    old = {f"old-{i}": keyrotor.iam_user(namespaces=ns) for i in range(BATCH)}
    for name, user in old.items():
        keyrotor.create(ns, name, {"iamUser": user})
    before = wait_all(keyrotor, ns, list(old), is_ready, "the first batch Ready")
    keyrotor.aws.wait_for_rotations()
    assert "is the leader" not in second.logs()  # the standby has done nothing
    started_before = len(rotations(keyrotor, ns))

    # The batch: rotate-now on every old object, and new objects, at once.
    new = {f"new-{i}": keyrotor.iam_user(namespaces=ns) for i in range(BATCH)}
    for (old_name, _), (new_name, user) in zip(old.items(), new.items(), strict=True):
        keyrotor.annotate(ns, old_name, {"keyrotor.io/rotate-now": "failover"})
        keyrotor.create(ns, new_name, {"iamUser": user})
    keyrotor.wait(
        lambda: len(rotations(keyrotor, ns)) >= started_before + 2, what="rotations under way"
    )
    first.kill()
    killed_at = time.monotonic()
    keyrotor.wait(lambda: holder(keyrotor).startswith("second_"), 60, "the standby's takeover")
    failover = time.monotonic() - killed_at
    record_property("failover_seconds", round(failover, 2))
    print(f"\nfailover: the standby held the Lease {failover:.2f}s after SIGKILL")
    assert second.wait_for_log("is the leader")
    transitions = lease(keyrotor).spec.lease_transitions  # type: ignore[union-attr]
    assert transitions == 1

    def rotated(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        name = obj["metadata"]["name"]
        return (
            is_ready(obj)
            and status.get("rotateNowHandled") == "failover"
            and status.get("accessKeyId") not in (None, before[name]["status"]["accessKeyId"])
        )

    after_old = wait_all(keyrotor, ns, list(old), rotated, "every rotate-now done")
    after_new = wait_all(keyrotor, ns, list(new), is_ready, "every new object Ready")
    keyrotor.aws.wait_for_rotations()
    objects = {**after_old, **after_new}

    # One Secrets Manager secret per object, in this namespace.
    sm = keyrotor.aws.client("secretsmanager")
    tags = []
    for page in sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "tag-key", "Values": ["keyrotor.io/cluster"]}]
    ):
        tags += [{t["Key"]: t["Value"] for t in s.get("Tags", [])} for s in page["SecretList"]]
    in_ns = [
        t["keyrotor.io/uid"]
        for t in tags
        if t.get("keyrotor.io/cluster") == keyrotor.cluster_name
        and t.get("keyrotor.io/namespace") == ns
    ]
    assert sorted(in_ns) == sorted(o["metadata"]["uid"] for o in objects.values())

    for name, user in {**old, **new}.items():
        status = objects[name]["status"]
        # One rotation per request: the first key, plus the rotate-now for the old objects.
        expected = [True, True] if name in old else [True]
        assert [r.succeeded for r in keyrotor.aws.rotations_of(status["secretArn"])] == expected
        if name in old:
            assert set(keyrotor.user_keys(user)) == {
                before[name]["status"]["accessKeyId"],
                status["accessKeyId"],
            }
        else:
            assert list(keyrotor.user_keys(user)) == [status["accessKeyId"]]
        data = keyrotor.secret_data(keyrotor.secret(ns, name))  # type: ignore[arg-type]
        assert data["AWS_ACCESS_KEY_ID"] == status["accessKeyId"]
        arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
        assert arn.endswith(f":user/{user}")
        # No Event twice: the standby did not repeat what the first operator had reported.
        events = Counter((e.reason, e.message) for e in keyrotor.events(ns, name))
        assert [e for e, n in events.items() if n > 1] == [], (name, events)


def test_a_clean_shutdown_hands_the_lease_over_at_once(
    keyrotor: Harness, record_property: Callable[[str, object], None]
) -> None:
    """SIGTERM: the leader stops the operator, then releases the Lease; a standby takes it
    without waiting for the lease to expire."""
    active = keyrotor.operator
    if not active.wait_for_log("is the leader", timeout=60):
        pytest.fail(f"no active operator: {active.logs()[-2000:]}")
    health_port, metrics_port = free_port(), free_port()
    standby = keyrotor.start_operator(
        "--leader-election-id",
        "third",
        "--health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
    )
    assert standby.wait_for_log("waiting for Lease")
    # A standby is alive for its liveness probe (kopf's endpoint starts only with the operator),
    # and its metrics say it is not the active one and know no objects.
    assert http_get(f"http://127.0.0.1:{health_port}/healthz") == (200, "standby\n")
    metrics = scrape(metrics_port)
    assert metrics[("keyrotor_leader", frozenset())] == 0
    assert not [k for k in metrics if k[0] == "keyrotor_object_ready"]
    stopping = time.monotonic()
    assert active.stop() == 0
    assert "released Lease" in active.logs()
    keyrotor.wait(lambda: holder(keyrotor).startswith("third_"), 60, "the takeover")
    handover = time.monotonic() - stopping
    record_property("clean_handover_seconds", round(handover, 2))
    print(f"\nclean handover: the standby held the Lease {handover:.2f}s after SIGTERM")
    assert standby.wait_for_log("is the leader")
    # The port passed from the standby's endpoint to kopf's liveness endpoint.
    keyrotor.wait(
        lambda: (
            http_get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200
            and http_get(f"http://127.0.0.1:{health_port}/healthz")[1] != "standby\n"
        ),
        what="kopf's liveness endpoint",
    )
    # The new leader works: an object created now becomes Ready.
    ns = keyrotor.namespace("ha")
    keyrotor.create(ns, "after", {"iamUser": keyrotor.iam_user(namespaces=ns)})
    keyrotor.wait_ready(ns, "after")
    ready = (
        "keyrotor_object_ready",
        frozenset({"namespace": ns, "name": "after", "reason": "Ready"}.items()),
    )
    metrics = keyrotor.wait(
        lambda: (lambda found: found if ready in found else None)(scrape(metrics_port)),
        what="the new leader's per-object metrics",
    )
    assert metrics[("keyrotor_leader", frozenset())] == 1
    assert metrics[ready] == 1


def test_a_leader_that_loses_its_lease_exits(keyrotor: Harness) -> None:
    """Another holder in the Lease (as after a partition in which a standby took over): the
    leader's renewals fail, and once the renew deadline has passed the process exits, as
    controller-runtime's manager does, so that two operators never act at once."""
    leader = keyrotor.operator
    if not leader.wait_for_log("is the leader", timeout=60):
        pytest.fail(f"no active operator: {leader.logs()[-2000:]}")
    coordination = client.CoordinationV1Api(keyrotor.api)
    found = lease(keyrotor)
    assert found is not None
    found.spec.holder_identity = "usurper"
    coordination.replace_namespaced_lease(found.metadata.name, LEASE_NAMESPACE, found)
    deadline = time.monotonic() + 60
    while leader.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leader.running(), "the leader kept running without its Lease"
    assert leader.stop() == 1
    assert "leader election lost" in leader.logs()
    assert holder(keyrotor) == "usurper"  # it did not take the Lease back on its way out
