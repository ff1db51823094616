"""The operator's own endpoints and logs: Prometheus metrics, liveness, JSON logs."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"metrics": _free_port(), "health": _free_port()}


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
) -> Iterator[Harness]:
    harness = Harness(aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"))
    harness.start_operator(
        "--metrics-port",
        str(ports["metrics"]),
        "--health-port",
        str(ports["health"]),
        "--log-format",
        "json",
    )
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (loopback only)
        return response.status, response.read().decode()


def test_metrics_liveness_and_json_logs(keyrotor: Harness, ports: dict[str, int]) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.wait_ready(ns, "app")

    status, _ = _get(f"http://127.0.0.1:{ports['health']}/healthz")
    assert status == 200

    status, metrics = _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert status == 200
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("keyrotor_")
    }
    assert samples['keyrotor_secret_syncs_total{cause="initial"}'] >= 1
    assert samples['keyrotor_rotations_requested_total{cause="first-key"}'] >= 1
    assert (
        samples['keyrotor_aws_api_calls_total{operation="CreateSecret",service="secretsmanager"}']
        >= 1
    )

    lines = [line for line in keyrotor.operator.logs().splitlines() if line.strip()]
    assert lines, "the operator logged nothing"
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) >= len(lines) * 0.9, "log lines are not JSON"
    assert any("message" in record for record in parsed)
