"""The operator's own endpoints and logs: Prometheus metrics, liveness, JSON logs."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"metrics": free_port(), "health": free_port()}


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

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, metrics = _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert status == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }

    age_key = (
        "keyrotor_access_key_age_seconds",
        frozenset({"namespace": ns, "name": "app"}.items()),
    )
    # The key's age needs status.lastRotationTime, which can follow Ready by a sync round.
    samples = keyrotor.wait(
        lambda: (lambda found: found if age_key in found else None)(scrape()),
        what="the key age of the object on /metrics",
    )

    def value(metric: str, /, **labels: str) -> float:
        return samples.get((metric, frozenset(labels.items())), 0.0)

    assert value("keyrotor_secret_syncs_total", cause="initial") >= 1
    assert value("keyrotor_rotations_requested_total", cause="first-key") >= 1
    assert value("keyrotor_rotations_total", outcome="started") >= 1
    assert value("keyrotor_rotations_total", outcome="succeeded") >= 1  # the first key
    assert (
        value(
            "keyrotor_aws_api_calls_total",
            service="secretsmanager",
            operation="CreateSecret",
            outcome="success",
        )
        >= 1
    )
    # Computed at scrape time from the object's status; this process is the only one: active.
    assert value("keyrotor_leader") == 1
    assert value("keyrotor_object_ready", namespace=ns, name="app", reason="Ready") == 1
    assert value("keyrotor_objects", ready="True", reason="Ready") >= 1
    assert value("keyrotor_access_key_age_seconds", namespace=ns, name="app") >= 0
    assert value("keyrotor_access_key_max_age_seconds", namespace=ns, name="app") == 90 * 86400
    assert value("keyrotor_next_rotation_seconds", namespace=ns, name="app") > 80 * 86400
    assert value("keyrotor_sync_sweep_duration_seconds_count") >= 1

    lines = [line for line in keyrotor.operator.logs().splitlines() if line.strip()]
    assert lines, "the operator logged nothing"
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) >= len(lines) * 0.9, "log lines are not JSON"
    assert any("message" in record for record in parsed)
