"""Metrics and health listen only on the address they are given (--bind-address), never on
every interface unless told: an operator bound to 127.0.0.2 does not answer on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]
BIND = "127.0.0.2"  # loopback, but not 127.0.0.1


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
        "--bind-address",
        BIND,
    )
    try:
        yield harness
    finally:
        harness.stop()


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (loopback only)
        return int(response.status)


def test_endpoints_listen_on_the_bind_address_only(
    keyrotor: Harness, ports: dict[str, int]
) -> None:
    health = f"http://{BIND}:{ports['health']}/healthz"
    keyrotor.wait(lambda: _answers(health), timeout=60, what=f"{health} to answer")
    assert _status(f"http://{BIND}:{ports['metrics']}/metrics") == 200
    for port in ports.values():
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def _answers(url: str) -> bool:
    try:
        return _status(url) == 200
    except OSError:
        return False
