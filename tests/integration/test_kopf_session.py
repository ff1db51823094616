"""kopf's connection to the API server goes through keyrotor's login handler: the credentials
kopf would find itself, on one session with at most ``KOPF_CONNECTIONS`` connections (kopf's own
session opens a connection for every concurrent request; see keyrotor.k8s.client).

Over real HTTPS to the real kube-apiserver, with a kubeconfig found as the operator finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.config import kube_config

from keyrotor import handlers
from keyrotor.k8s.client import KOPF_CONNECTIONS
from keyrotor_sandbox.kube import KubeApiServer

pytestmark = pytest.mark.kube


@pytest.fixture
def kubeconfig(kube_apiserver: KubeApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A kubeconfig (the admin's), found as kopf finds it; the client library's global default
    configuration (which kopf's login loads) is put back afterwards."""
    # $KUBECONFIG, as the operator's process has it (the client library reads it at import).
    monkeypatch.setattr(
        kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_apiserver.admin_kubeconfig)
    )
    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


async def _watch_many(session: kopf.AiohttpSession, namespace: str, count: int) -> dict[str, Any]:
    """``count`` watches at once, each held open by the server for a second: how many were open
    at the same time, over which connections, and what they said."""
    url = (
        f"{session.server}/api/v1/namespaces?watch=1&timeoutSeconds=1"
        f"&fieldSelector=metadata.name%3D{namespace}"
    )
    open_now, most_open, ports, events = 0, 0, set(), []

    async def watch() -> None:
        nonlocal open_now, most_open
        async with session.aiohttp_session.get(url) as response:
            assert response.status == 200
            assert response.connection is not None  # streaming: the connection is still ours
            ports.add(response.connection.transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]
            open_now += 1
            most_open = max(most_open, open_now)
            events.extend(json.loads(line) for line in (await response.text()).splitlines())
            open_now -= 1

    try:
        await asyncio.gather(*(watch() for _ in range(count)))
    finally:
        await session.aiohttp_session.close()
    return {"most_open": most_open, "ports": ports, "events": events}


def test_login_gives_kopf_a_session_with_bounded_connections(
    kubeconfig: None, namespace: str
) -> None:
    async def run() -> dict[str, Any]:
        session = await handlers.login(
            logger=logging.getLogger("kopf.test"), settings=kopf.OperatorSettings()
        )
        assert isinstance(session, kopf.AiohttpSession)
        assert session.server.startswith("https://127.0.0.1:")
        return await _watch_many(session, namespace, 3 * KOPF_CONNECTIONS)

    seen = asyncio.run(run())

    # Authenticated (the kubeconfig's token and CA): every watch answered, with the namespace.
    assert len(seen["events"]) == 3 * KOPF_CONNECTIONS
    assert {(e["type"], e["object"]["metadata"]["name"]) for e in seen["events"]} == {
        ("ADDED", namespace)
    }
    # Never more than the limit at once: the watches beyond it waited for a connection, and then
    # reused one (kopf's own session would have opened one for each).
    assert 1 <= seen["most_open"] <= KOPF_CONNECTIONS
    assert 1 <= len(seen["ports"]) <= KOPF_CONNECTIONS
