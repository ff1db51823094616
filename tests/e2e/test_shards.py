"""Two shards over disjoint objects (issue 10): two ``keyrotor run`` processes of one
installation, each with its own ``--shard`` and ``--selector``, on one API server and one AWS
account. Each object is served by its own shard only: its claim, its finalizer, its Events and
its metrics say which; the other shard touches nothing of it. An object whose labels move it to
the other shard is taken over there, with its claim, secret and key unchanged."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

CLAIM = "keyrotor.io/claimed-by"
LABEL = "keyrotor.io/shard"
SHARDS = ("a", "b")
LEASE_NAMESPACE = "keyrotor-system"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {shard: free_port() for shard in SHARDS}


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
) -> Iterator[Harness]:
    """One installation (one cluster name), two shards: a serves shard=a, b serves shard=b."""
    harness = Harness(aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"))
    try:  # the operator's namespace, where each shard's Lease lives (it may exist already)
        harness.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=LEASE_NAMESPACE))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    for shard in SHARDS:
        harness.start_operator(*_shard_args(shard, ports))
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()


def _shard_args(shard: str, ports: dict[str, int]) -> tuple[str, ...]:
    return (
        *("--shard", shard, "--selector", f"{LABEL}={shard}"),
        *("--metrics-port", str(ports[shard])),
        *("--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE),
        *("--leader-election-id", f"shard-{shard}"),
    )


def _create(keyrotor: Harness, ns: str, name: str, user: str, shard: str | None) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessKeyRotation",
        "metadata": {"name": name, "labels": {LABEL: shard} if shard else {}},
        "spec": {"iamUser": user},
    }
    created = keyrotor.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    return str(created["metadata"]["uid"])


def _claim(keyrotor: Harness, user: str) -> str | None:
    tags = keyrotor.aws.client("iam").list_user_tags(UserName=user)["Tags"]
    return {t["Key"]: t["Value"] for t in tags}.get(CLAIM)


def _reporters(keyrotor: Harness, ns: str, name: str) -> dict[str, set[str]]:
    """Event reason -> the operators (reportingInstance) that posted it."""
    found: dict[str, set[str]] = {}
    for event in keyrotor.events(ns, name):
        found.setdefault(event.reason, set()).add(event.reporting_instance)
    return found


def _samples(port: int) -> list[Any]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _served_on_metrics(port: int, ns: str) -> set[str]:
    """The objects of ``ns`` a shard reports per-object metrics for."""
    return {
        sample.labels["name"]
        for sample in _samples(port)
        if sample.labels.get("namespace") == ns and "name" in sample.labels
    }


def _logs_of(keyrotor: Harness, shard: str) -> str:
    return keyrotor.operators[SHARDS.index(shard)].logs()


def test_two_shards_each_serve_only_their_own_objects(
    keyrotor: Harness, ports: dict[str, int]
) -> None:
    ns = keyrotor.namespace()
    users = {shard: keyrotor.iam_user(namespaces=ns) for shard in (*SHARDS, "none")}
    uids = {shard: _create(keyrotor, ns, f"app-{shard}", users[shard], shard) for shard in SHARDS}
    _create(keyrotor, ns, "app-none", users["none"], None)  # no shard's: nobody serves it
    status = {shard: keyrotor.wait_ready(ns, f"app-{shard}")["status"] for shard in SHARDS}

    for shard, other in zip(SHARDS, reversed(SHARDS), strict=True):
        name = f"app-{shard}"
        # The claim carries this shard's identity: the other shard never takes it as stale.
        assert _claim(keyrotor, users[shard]) == f"{keyrotor.installation_id}:{shard}/{uids[shard]}"
        obj = keyrotor.get(ns, name) or {}
        assert obj["metadata"]["finalizers"] == [f"keyrotor.io/finalizer-{shard}"]
        # Converged once, by its own shard: one key, one first rotation, every Event its own.
        assert keyrotor.user_keys(users[shard]) == {status[shard]["accessKeyId"]: "Active"}
        reasons = [e.reason for e in keyrotor.events(ns, name)]
        assert reasons.count("RotationRequested") <= 1
        assert set().union(*_reporters(keyrotor, ns, name).values()) == {f"keyrotor-{shard}"}
        data = keyrotor.secret_data(keyrotor.secret(ns, name))
        assert data["AWS_ACCESS_KEY_ID"] == status[shard]["accessKeyId"]
        # The other shard's log never names it; its metrics show only its own objects.
        assert f"{ns}/{name}" not in _logs_of(keyrotor, other)
        assert f"{ns}/{name}" in _logs_of(keyrotor, shard)
    for shard in SHARDS:
        keyrotor.wait(
            lambda shard=shard: _served_on_metrics(ports[shard], ns) == {f"app-{shard}"},  # type: ignore[misc]
            what=f"shard {shard}'s per-object metrics: only its own object",
        )
        info = [s.labels for s in _samples(ports[shard]) if s.name == "keyrotor_shard_info"]
        assert info == [{"shard": shard}]  # what the KeyrotorOperatorDown alert groups by

    # One Lease per shard, each held by that shard's process; none for an unsharded operator.
    leases = client.CoordinationV1Api(keyrotor.api)
    for shard in SHARDS:
        lease = leases.read_namespaced_lease(
            f"keyrotor-{keyrotor.cluster_name}.{shard}", LEASE_NAMESPACE
        )
        assert (lease.spec.holder_identity or "").startswith(f"shard-{shard}")
    names = [item.metadata.name for item in leases.list_namespaced_lease(LEASE_NAMESPACE).items]
    assert f"keyrotor-{keyrotor.cluster_name}" not in names

    # The object no shard's selector matches was left alone entirely.
    none = keyrotor.get(ns, "app-none") or {}
    assert not none.get("status") and not none["metadata"].get("finalizers")
    assert _claim(keyrotor, users["none"]) is None and keyrotor.user_keys(users["none"]) == {}
    assert keyrotor.secret(ns, "app-none") is None

    # A mirrored Secret deleted by someone is put back by its own shard only.
    keyrotor.core.delete_namespaced_secret("app-b", ns)
    keyrotor.wait(lambda: keyrotor.secret(ns, "app-b"), what="app-b's Secret put back")
    repaired_by = keyrotor.wait(
        lambda: _reporters(keyrotor, ns, "app-b").get("SecretRepaired"),
        what="the SecretRepaired Event",  # posted after the Secret and status are written
    )
    assert repaired_by == {"keyrotor-b"}
    assert keyrotor.user_keys(users["b"]) == {status["b"]["accessKeyId"]: "Active"}


def test_object_relabelled_to_the_other_shard_is_taken_over_there(keyrotor: Harness) -> None:
    """Decided behaviour: the new shard takes the object over (its claim names this very
    object, under the old shard's identity); secret, key and schedule stay as they are. The old
    shard drops it (its finalizer comes off, it acts on it no more)."""
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    uid = _create(keyrotor, ns, "mover", user, "a")
    before = keyrotor.wait_ready(ns, "mover")["status"]
    assert _claim(keyrotor, user) == f"{keyrotor.installation_id}:a/{uid}"
    seen = {e.metadata.name for e in keyrotor.events(ns, "mover")}

    keyrotor.patch(ns, "mover", {"metadata": {"labels": {LABEL: "b"}}})
    keyrotor.wait(
        lambda: _claim(keyrotor, user) == f"{keyrotor.installation_id}:b/{uid}",
        what="shard b's claim on the user",
    )

    def finalizers() -> list[str] | None:
        found = (keyrotor.get(ns, "mover") or {})["metadata"].get("finalizers")
        return found if found == ["keyrotor.io/finalizer-b"] else None

    keyrotor.wait(finalizers, what="shard b's finalizer only")
    keyrotor.wait(
        lambda: f"{ns}/mover left shard a" in _logs_of(keyrotor, "a"),
        what="shard a dropping the object from its index",
    )
    shard_changed = keyrotor.wait(
        lambda: _reporters(keyrotor, ns, "mover").get("ShardChanged"), what="a ShardChanged Event"
    )
    assert shard_changed == {"keyrotor-b"}
    after = keyrotor.wait_ready(ns, "mover")["status"]
    assert (after["secretArn"], after["accessKeyId"]) == (
        before["secretArn"],
        before["accessKeyId"],
    )
    assert keyrotor.user_keys(user) == {before["accessKeyId"]: "Active"}  # nothing rotated

    # Shard b does the work now: a rotate-now is carried out, and announced, by b.
    keyrotor.annotate(ns, "mover", {"keyrotor.io/rotate-now": "after-the-move"})

    def rotated() -> dict[str, Any] | None:
        obj = keyrotor.get(ns, "mover") or {}
        key = (obj.get("status") or {}).get("accessKeyId")
        return obj if key and key != before["accessKeyId"] else None

    rotated_obj = keyrotor.wait(rotated, timeout=90, what="the rotate-now mirrored")
    new_key = rotated_obj["status"]["accessKeyId"]
    keyrotor.wait(
        lambda: keyrotor.secret_data(keyrotor.secret(ns, "mover"))["AWS_ACCESS_KEY_ID"] == new_key,
        what="the new key in the Secret",
    )
    # Everything since the move was posted by shard b, nothing by shard a.
    since = [e for e in keyrotor.events(ns, "mover") if e.metadata.name not in seen]
    assert "RotationRequested" in {e.reason for e in since}
    assert {e.reporting_instance for e in since} == {"keyrotor-b"}
    assert _claim(keyrotor, user) == f"{keyrotor.installation_id}:b/{uid}"

    # Deleted, it is finalized by shard b: the claim is released.
    keyrotor.delete(ns, "mover")
    keyrotor.wait(lambda: keyrotor.get(ns, "mover") is None, what="finalized by shard b")
    assert _claim(keyrotor, user) is None


def test_object_of_the_unsharded_operator_is_taken_over_by_a_shard(keyrotor: Harness) -> None:
    """From one operator to shards: an object made Ready by an unsharded operator (claim
    ``<installation>/<uid>``, finalizer keyrotor.io/finalizer) is taken over by the shard its
    label names once that operator is gone, and finalized by it, both finalizers included."""
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    unsharded = keyrotor.start_operator("--namespace", ns)  # serves only ns: no overlap here
    uid = _create(keyrotor, ns, "legacy", user, None)
    before = keyrotor.wait_ready(ns, "legacy")["status"]
    assert _claim(keyrotor, user) == f"{keyrotor.installation_id}/{uid}"
    assert (keyrotor.get(ns, "legacy") or {})["metadata"]["finalizers"] == ["keyrotor.io/finalizer"]
    unsharded.stop()
    keyrotor.operators.remove(unsharded)

    keyrotor.patch(ns, "legacy", {"metadata": {"labels": {LABEL: "a"}}})
    keyrotor.wait(
        lambda: _claim(keyrotor, user) == f"{keyrotor.installation_id}:a/{uid}",
        what="shard a's claim on the user",
    )
    after = keyrotor.wait_ready(ns, "legacy")["status"]
    assert (after["secretArn"], after["accessKeyId"]) == (
        before["secretArn"],
        before["accessKeyId"],
    )
    assert keyrotor.user_keys(user) == {before["accessKeyId"]: "Active"}
    finalizers = keyrotor.wait(
        lambda: (
            (keyrotor.get(ns, "legacy") or {})["metadata"].get("finalizers", [])
            if "keyrotor.io/finalizer-a"
            in (keyrotor.get(ns, "legacy") or {})["metadata"].get("finalizers", [])
            else None
        ),
        what="shard a's finalizer",
    )
    assert set(finalizers) == {"keyrotor.io/finalizer", "keyrotor.io/finalizer-a"}

    keyrotor.delete(ns, "legacy")
    keyrotor.wait(lambda: keyrotor.get(ns, "legacy") is None, what="finalized by shard a")
    assert _claim(keyrotor, user) is None
    assert _reporters(keyrotor, ns, "legacy").get("SecretRetained") == {"keyrotor-a"}


def test_object_moved_from_a_stopped_shard_waits_until_that_shard_lets_go(
    keyrotor: Harness, ports: dict[str, int]
) -> None:
    """The new shard takes over only once the old one let go (its finalizer is off): while
    shard a is down, shard b refuses to take the claim and says why; the key keeps working.
    Shard a, back, sees the new labels, lets go, and b takes over."""
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    uid = _create(keyrotor, ns, "waiter", user, "a")
    before = keyrotor.wait_ready(ns, "waiter")["status"]
    keyrotor.operators[SHARDS.index("a")].stop()

    keyrotor.patch(ns, "waiter", {"metadata": {"labels": {LABEL: "b"}}})
    obj = keyrotor.wait_condition(ns, "waiter", "Ready", "False", "Conflict")
    assert "keyrotor.io/finalizer-a" in (keyrotor.condition(obj, "Ready") or {})["message"]
    assert _claim(keyrotor, user) == f"{keyrotor.installation_id}:a/{uid}"  # not taken
    assert keyrotor.user_keys(user) == {before["accessKeyId"]: "Active"}
    data = keyrotor.secret_data(keyrotor.secret(ns, "waiter"))
    assert data["AWS_ACCESS_KEY_ID"] == before["accessKeyId"]

    keyrotor.start_operator(*_shard_args("a", ports))  # back: it sees the new labels, lets go
    keyrotor.wait(
        lambda: _claim(keyrotor, user) == f"{keyrotor.installation_id}:b/{uid}",
        what="shard b's claim once shard a let go",
    )
    after = keyrotor.wait_ready(ns, "waiter")["status"]
    assert (after["secretArn"], after["accessKeyId"]) == (
        before["secretArn"],
        before["accessKeyId"],
    )
    assert (keyrotor.get(ns, "waiter") or {})["metadata"]["finalizers"] == [
        "keyrotor.io/finalizer-b"
    ]
