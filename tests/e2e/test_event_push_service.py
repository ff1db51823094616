"""Event push reaches the active replica at once: with ``--event-push-service keyrotor-events``
the active replica points the Service's EndpointSlice at itself (its ``POD_IP``, the listener's
port), so a standby is never behind the Service (keyrotor.k8s.endpoint_slices).

The operators run as in production against the real API server and the AWS emulator, under the
operator's RBAC identity plus deploy/base/event-push-rbac.yaml (the Role the chart renders). Each
"pod" binds its listener to a loopback address of its own (127.0.0.2, 127.0.0.3: the same port,
as two pods would), while its ``POD_IP`` is a documentation address (the API server refuses
loopback endpoints); the test stands in for kube-proxy with that map.

- the leader writes the slice; a restart of the same leader writes nothing;
- failover: the standby answers 503 and is not in the slice; the leader is SIGKILLed and the
  slice then names the new leader, which answers; every request the operators made to the slice
  was allowed and the Role's every rule was used (the audit log);
- a slice of that name managed by something else is refused at start, and left as it was;
- the Service owns the slice: deleting the Service deletes it (the garbage collector), and no
  slice is written while the Service is missing; once it is back, so is the slice.

Each test starts with the Service as the chart renders it (no selector).
"""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor.aws import api_destination
from keyrotor.k8s.endpoint_slices import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import OPERATOR_USER, KubeApiServer
from keyrotor_sandbox.operator import OperatorProcess
from tests.e2e.test_rbac_audit import audit_events, log_size
from tests.fixtures.operator import Harness, event_push_role, free_port, push_flags

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

REPO = Path(__file__).resolve().parents[2]
PUSH_RBAC = REPO / "deploy" / "base" / "event-push-rbac.yaml"
NAMESPACE = "keyrotor-system"  # the operator's, where the Service and its Role are
SERVICE = "keyrotor-events"
TOKEN = uuid.uuid4().hex + uuid.uuid4().hex
# Each pod: its POD_IP (what the slice names) and the loopback address its listener binds.
PODS = {
    "keyrotor-a": ("192.0.2.10", "127.0.0.2"),
    "keyrotor-b": ("192.0.2.11", "127.0.0.3"),
}
LEASE_ARGS = (
    "--leader-elect",
    "--leader-election-namespace",
    NAMESPACE,
    "--leader-election-lease-duration",
    "6s",
    "--leader-election-renew-deadline",
    "4s",
    "--leader-election-retry-period",
    "0.5",
)


@pytest.fixture(scope="module")
def push_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def push_rbac(operator_rbac: KubeApiServer) -> KubeApiServer:
    core = client.CoreV1Api(operator_rbac.admin_client())
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    operator_rbac.apply_yaml(PUSH_RBAC)
    return operator_rbac


@pytest.fixture
def keyrotor(
    aws_emulator: AwsEmulator,
    push_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    push_port: int,
) -> Iterator[Harness]:
    """One installation per test (its own Lease), in push mode; no slice left from before."""
    harness = Harness(aws_emulator, push_rbac, tmp_path_factory.mktemp("operator"))
    role = event_push_role(harness)
    harness.extra_args = (
        *push_flags(push_port, role),
        "--event-push-service",
        SERVICE,
        *LEASE_ARGS,
    )
    delete_service(harness)
    delete_slice(harness)
    create_service(harness, push_port)
    try:
        yield harness
    finally:
        harness.stop()
        delete_service(harness)
        delete_slice(harness)
    assert TOKEN not in harness.all_logs()


def discovery(keyrotor: Harness) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(keyrotor.api)


def delete_slice(keyrotor: Harness) -> None:
    try:
        discovery(keyrotor).delete_namespaced_endpoint_slice(SERVICE, NAMESPACE)
    except ApiException as exc:
        if exc.status != 404:
            raise


def create_service(keyrotor: Harness, port: int) -> client.V1Service:
    """The push Service as the chart renders it: no selector."""
    return keyrotor.core.create_namespaced_service(
        NAMESPACE,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=SERVICE),
            spec=client.V1ServiceSpec(
                ports=[client.V1ServicePort(name="push", port=port, protocol="TCP")]
            ),
        ),
    )


def delete_service(keyrotor: Harness) -> None:
    try:
        keyrotor.core.delete_namespaced_service(SERVICE, NAMESPACE)
    except ApiException as exc:
        if exc.status != 404:
            raise


def read_slice(keyrotor: Harness) -> client.V1EndpointSlice | None:
    try:
        return discovery(keyrotor).read_namespaced_endpoint_slice(SERVICE, NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def start_pod(keyrotor: Harness, pod: str, identity: str) -> OperatorProcess:
    pod_ip, bind = PODS[pod]
    keyrotor.env = {
        "KEYROTOR_EVENT_PUSH_TOKEN": TOKEN,
        "POD_IP": pod_ip,
        "POD_NAME": pod,
        "POD_NAMESPACE": NAMESPACE,
    }
    return keyrotor.start_operator("--bind-address", bind, "--leader-election-id", identity)


def slice_names(keyrotor: Harness, pod: str, port: int) -> client.V1EndpointSlice:
    """Waits until the slice sends the Service's traffic to ``pod`` alone."""

    def probe() -> client.V1EndpointSlice | None:
        found = read_slice(keyrotor)
        if found is None or len(found.endpoints or []) != 1:
            return None
        (endpoint,) = found.endpoints
        ref = endpoint.target_ref
        matches = (
            endpoint.addresses == [PODS[pod][0]]
            and endpoint.conditions.ready is True
            and ref is not None
            and (ref.kind, ref.name, ref.namespace) == ("Pod", pod, NAMESPACE)
            and [(p.name, p.port, p.protocol) for p in found.ports or []] == [("push", port, "TCP")]
        )
        return found if matches else None

    return keyrotor.wait(probe, 90, f"the slice naming {pod}")


def post_via_slice(keyrotor: Harness, port: int) -> int:
    """An authorized POST where kube-proxy would send it: to the slice's endpoint (through the
    test's map from POD_IP to the pod's loopback address). A 200 (an event naming nothing of
    ours) means the active operator answered; a standby would answer 503."""
    found = read_slice(keyrotor)
    assert found is not None
    (address,) = found.endpoints[0].addresses
    bind = next(b for ip, b in PODS.values() if ip == address)
    return post(bind, port)


def post(address: str, port: int) -> int:
    connection = http.client.HTTPConnection(address, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", api_destination.TOKEN_HEADER: TOKEN}
        connection.request("POST", "/events", body=b"{}", headers=headers)
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def slice_requests(
    keyrotor: Harness, start: int, resource: str = "endpointslices"
) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_events(keyrotor.kube, start, OPERATOR_USER)
        if e["objectRef"].get("resource") == resource
    ]


def test_the_leader_points_the_service_at_itself_and_a_restart_writes_nothing(
    keyrotor: Harness, push_port: int
) -> None:
    first = start_pod(keyrotor, "keyrotor-a", "a")
    assert first.wait_for_log("is the leader"), first.logs()[-3000:]
    written = slice_names(keyrotor, "keyrotor-a", push_port)
    assert written.address_type == "IPv4"
    assert written.metadata.labels == {SERVICE_NAME_LABEL: SERVICE, MANAGED_BY_LABEL: MANAGED_BY}
    keyrotor.wait(lambda: post_via_slice(keyrotor, push_port) == 200, what="the leader answering")
    version = written.metadata.resource_version

    # The same pod's container restarts (SIGTERM: the Lease is released; the same POD_IP).
    assert first.stop() == 0
    start = log_size(keyrotor.kube)
    again = start_pod(keyrotor, "keyrotor-a", "a")
    assert again.wait_for_log("is the leader"), again.logs()[-3000:]
    # Its check at start (before the election) and its check as the leader: reads only.
    keyrotor.wait(
        lambda: len([e for e in slice_requests(keyrotor, start) if e["verb"] == "get"]) >= 2,
        what="the restarted leader's look at the slice",
    )
    requests = slice_requests(keyrotor, start)
    assert {e["verb"] for e in requests} == {"get"}, requests
    after = read_slice(keyrotor)
    assert after is not None and after.metadata.resource_version == version
    keyrotor.wait(lambda: post_via_slice(keyrotor, push_port) == 200, what="the leader answering")


def test_failover_moves_the_slice_to_the_new_leader(keyrotor: Harness, push_port: int) -> None:
    start = log_size(keyrotor.kube)
    leader = start_pod(keyrotor, "keyrotor-a", "a")
    assert leader.wait_for_log("is the leader"), leader.logs()[-3000:]
    standby = start_pod(keyrotor, "keyrotor-b", "b")
    assert standby.wait_for_log("waiting for Lease"), standby.logs()[-3000:]
    slice_names(keyrotor, "keyrotor-a", push_port)
    keyrotor.wait(lambda: post_via_slice(keyrotor, push_port) == 200, what="the leader answering")
    assert post(PODS["keyrotor-b"][1], push_port) == 503  # the standby: never in the slice

    leader.kill()  # a crashed pod: no clean-up, the Lease expires
    moved = slice_names(keyrotor, "keyrotor-b", push_port)
    assert standby.wait_for_log("is the leader")
    assert moved.metadata.labels[MANAGED_BY_LABEL] == MANAGED_BY
    keyrotor.wait(
        lambda: post_via_slice(keyrotor, push_port) == 200, what="the new leader answering"
    )

    # Everything asked of the API server about the slice was allowed, and the Role's every
    # rule was used (create by the first leader, get by both, update by the new leader).
    requests = slice_requests(keyrotor, start)
    assert [e for e in requests if e["responseStatus"]["code"] >= 400 and e["verb"] != "get"] == []
    assert not [e for e in requests if e["responseStatus"]["code"] == 403]
    assert {e["objectRef"].get("namespace") for e in requests} == {NAMESPACE}
    assert {e["objectRef"].get("name") for e in requests} == {SERVICE}
    assert {e["verb"] for e in requests} == {"get", "create", "update"}
    services = slice_requests(keyrotor, start, "services")  # the owner's uid
    assert services and {(e["verb"], e["objectRef"].get("name")) for e in services} == {
        ("get", SERVICE)
    }
    assert {e["responseStatus"]["code"] for e in services} == {200}


def test_a_foreign_slice_of_that_name_is_refused_and_left_alone(
    keyrotor: Harness, push_port: int
) -> None:
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE,
            "labels": {
                SERVICE_NAME_LABEL: SERVICE,
                MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.99"], "conditions": {"ready": True}}],
        "ports": [{"name": "push", "port": 9999, "protocol": "TCP"}],
    }
    foreign = discovery(keyrotor).create_namespaced_endpoint_slice(NAMESPACE, body)
    start = log_size(keyrotor.kube)
    refused = start_pod(keyrotor, "keyrotor-a", "a")
    keyrotor.wait(lambda: not refused.running(), what="the operator to refuse and exit")
    assert refused.stop() == 1
    lines = [line for line in refused.logs().splitlines() if line.startswith("keyrotor: ")]
    assert len(lines) == 1, refused.logs()[-3000:]
    assert "endpointslicemirroring-controller.k8s.io" in lines[0]
    assert f"{NAMESPACE}/{SERVICE}" in lines[0]
    assert "is the leader" not in refused.logs()  # refused before taking the Lease
    after = read_slice(keyrotor)
    assert after is not None
    assert after.metadata.resource_version == foreign.metadata.resource_version
    assert after.endpoints[0].addresses == ["192.0.2.99"]
    assert {e["verb"] for e in slice_requests(keyrotor, start)} == {"get"}


def test_the_slice_goes_with_its_service_and_comes_back_with_it(
    keyrotor: Harness, push_port: int
) -> None:
    service = keyrotor.core.read_namespaced_service(SERVICE, NAMESPACE)
    leader = start_pod(keyrotor, "keyrotor-a", "a")
    assert leader.wait_for_log("is the leader"), leader.logs()[-3000:]
    owned = slice_names(keyrotor, "keyrotor-a", push_port)
    owners = [(o.kind, o.name, o.uid) for o in owned.metadata.owner_references or []]
    assert owners == [("Service", SERVICE, service.metadata.uid)]

    # The Service goes (helm uninstall): the garbage collector takes its slice with it, and the
    # leader's next check writes none (it would outlive the uninstall).
    delete_service(keyrotor)
    keyrotor.wait(lambda: read_slice(keyrotor) is None, what="the slice deleted with its Service")
    assert leader.wait_for_log(f"Service {NAMESPACE}/{SERVICE} not found", timeout=90)
    assert read_slice(keyrotor) is None

    # The Service is back: so is the slice, owned by the new Service.
    again = create_service(keyrotor, push_port)
    back = slice_names(keyrotor, "keyrotor-a", push_port)
    assert [o.uid for o in back.metadata.owner_references or []] == [again.metadata.uid]
