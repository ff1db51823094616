"""keyrotor's claims map against the real API server (keyrotor.claims): kopf runs no handler
before keyrotor's start-up handler has filled it, the start-up handler fills it with every object
kopf will watch, and an object deleted before kopf's own list leaves it again."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.config import kube_config

from keyrotor import claims, handlers
from keyrotor.claims import ClaimsMap
from keyrotor.installation import Installation, Target
from keyrotor.k8s import objects
from keyrotor.k8s.client import KubeApis
from keyrotor.model import GROUP, KIND, PLURAL, VERSION
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.shards import Shard
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.aws import emulator_clients

pytestmark = pytest.mark.kube

WAIT = 60.0


@pytest.fixture
def kubeconfig(kube_apiserver: KubeApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The admin's kubeconfig, found as kopf finds it (see test_kopf_session.py)."""
    monkeypatch.setattr(
        kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_apiserver.admin_kubeconfig)
    )
    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


@pytest.fixture
def kube(operator_rbac: Any, kube_operator_api: Any) -> KubeApis:
    """The operator's RBAC identity."""
    return KubeApis(
        core=client.CoreV1Api(kube_operator_api),
        custom=client.CustomObjectsApi(kube_operator_api),
        apps=client.AppsV1Api(kube_operator_api),
    )


@pytest.fixture
def admin(kube_admin_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_admin_api)


def _create(admin: client.CustomObjectsApi, namespace: str, name: str, user: str) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"iamUser": user},
    }
    created = admin.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return str(created["metadata"]["uid"])


def _listed(admin: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return list(admin.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"])


def test_kopf_starts_no_watcher_before_the_start_up_handler_returned(
    kubeconfig: None, namespace: str, admin: client.CustomObjectsApi
) -> None:
    """What keyrotor's claims map relies on, pinned against the installed kopf: no event of an
    object that exists at the start reaches a handler before the start-up handler is done."""
    for name in ("a", "b"):
        _create(admin, namespace, name, f"user-{name}")
    registry = kopf.OperatorRegistry()
    seen: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(**_: Any) -> None:
        seen.append("start")
        await asyncio.sleep(2)  # room for a watcher that would not wait
        seen.append("started")

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def event(body: kopf.Body, **_: Any) -> None:
        seen.append(f"event {body['metadata']['name']}")

    async def run() -> None:
        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry, namespaces=[namespace], standalone=True, stop_flag=stop
            )
        )
        deadline = time.monotonic() + WAIT
        while not {"event a", "event b"} <= set(seen):
            assert time.monotonic() < deadline, seen
            if operator.done():
                operator.result()
            await asyncio.sleep(0.1)
        stop.set()
        await operator

    asyncio.run(run())
    assert seen[:2] == ["start", "started"], seen


def test_the_start_up_handler_fills_the_map_before_it_returns(
    kube: KubeApis, aws: Any, namespace: str, admin: client.CustomObjectsApi
) -> None:
    holder = _create(admin, namespace, "holder", "Svc")
    other = _create(admin, namespace, "other", "another")
    settings = Settings(cluster_name=f"c{uuid.uuid4().hex[:8]}", namespaces=(namespace,))
    clients = emulator_clients(aws)
    runtime = Runtime(
        settings=settings,
        aws=clients,
        kube=kube,
        installation=Installation(settings, clients, Target(aws.account_id, "aws")),
        emit=lambda *_, **__: None,
    )
    memo = kopf.Memo(make_runtime=lambda: runtime, shard=settings.shard)

    async def start_and_stop() -> dict[str, set[str]]:
        await handlers.start(settings=kopf.OperatorSettings(), memo=memo)
        try:  # what any decision sees from now on, before kopf has reported a single event
            return {user: {c.uid for c in runtime.claims_for(user)} for user in ("svc", "x")}
        finally:
            await handlers.stop(memo=memo)

    assert asyncio.run(start_and_stop()) == {"svc": {holder}, "x": set()}
    assert {c.uid for c in runtime.claims_for("ANOTHER")} == {other}


def test_lists_exactly_the_namespaces_kopf_watches(
    kube: KubeApis, kube_admin_api: Any, admin: client.CustomObjectsApi
) -> None:
    """kopf's patterns, resolved as kopf resolves them: globs and exclusions against the
    namespaces when it may list them (an admin here), else the exact names only (keyrotor's
    cluster-wide RBAC grants no namespace list: kopf then watches no glob, and nor does this)."""
    may_list = KubeApis(
        core=client.CoreV1Api(kube_admin_api),
        custom=client.CustomObjectsApi(kube_admin_api),
        apps=client.AppsV1Api(kube_admin_api),
    )
    core = client.CoreV1Api(kube_admin_api)
    prefix = f"kc{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-a", f"{prefix}-b", f"{prefix}-skip"]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        uids = {name: _create(admin, name, "app", "svc") for name in names}
        shard = Shard()

        def listed(apis: KubeApis, *patterns: str) -> tuple[set[str], list[str] | None]:
            found, namespaces = claims.list_claims(apis, patterns, shard)
            return set(found) & set(uids.values()), namespaces

        every = (set(uids.values()), None)  # every namespace: one cluster-wide list
        assert listed(kube, *()) == listed(may_list, *()) == every
        assert listed(kube, names[0]) == ({uids[names[0]]}, [names[0]])
        got, namespaces = listed(may_list, f"{prefix}-*", f"!{prefix}-skip")
        assert got == {uids[names[0]], uids[names[1]]}
        assert sorted(namespaces or []) == names[:2]
        assert listed(kube, f"{prefix}-*", names[2]) == ({uids[names[2]]}, [names[2]])
    finally:
        for name in names:
            core.delete_namespace(name)


def test_the_list_goes_page_by_page_to_the_last(
    kube: KubeApis, namespace: str, admin: client.CustomObjectsApi, monkeypatch: Any
) -> None:
    """Pages are small (a page's decoding stays resident in the allocator); every page is read."""
    monkeypatch.setattr(objects, "LIST_PAGE_SIZE", 2)
    uids = {_create(admin, namespace, f"app-{i}", f"svc-{i}") for i in range(5)}
    found, namespaces = claims.list_claims(kube, (namespace,), Shard())
    assert set(found) == uids and namespaces == [namespace]


def test_an_object_deleted_before_kopfs_first_list_leaves_the_map(
    kube: KubeApis, namespace: str, admin: client.CustomObjectsApi
) -> None:
    gone = _create(admin, namespace, "gone", "svc")
    alive = _create(admin, namespace, "alive", "svc")
    claims_map = ClaimsMap()
    claims.resync(kube, claims_map, (namespace,))  # the start-up list
    admin.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    admin.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "alive")
    late = _create(admin, namespace, "alive", "svc")  # the same name, another object
    for body in _listed(admin, namespace):  # kopf's own list, taken after
        claims_map.observe(body, deleted=False)
    assert {c.uid for c in claims_map.claims_for("svc")} == {gone, alive, late}

    async def keep_until_gone() -> set[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            claims.keep_current(kube, claims_map, (namespace,), stop, check_every=0.2)
        )
        try:
            for _ in range(int(WAIT / 0.1)):
                if len(claims_map.claims_for("svc")) == 1:
                    break
                await asyncio.sleep(0.1)
            return {c.uid for c in claims_map.claims_for("svc")}
        finally:
            stop.set()
            await task

    logging.getLogger("keyrotor.claims").setLevel(logging.INFO)
    assert asyncio.run(keep_until_gone()) == {late}
