"""What a tenant can do with the aggregated edit role (deploy/base/user-roles.yaml aggregates
AccessKeyRotation into the built-in admin/edit/view roles), on the real API server: manage its
objects in its own namespace, but never write any object's status (status is the operator's),
never touch a mirrored Secret of another namespace, and nothing in the operator's namespace."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor_sandbox.kube import KubeApiServer

pytestmark = [pytest.mark.kube]

REPO = Path(__file__).resolve().parents[2]
USER_ROLES = REPO / "deploy" / "base" / "user-roles.yaml"
OPERATOR_NAMESPACE = "keyrotor-system"


def _namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="module")
def setup(kube_apiserver: KubeApiServer) -> Iterator[dict[str, Any]]:
    admin = kube_apiserver.admin_client()
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    kube_apiserver.apply_yaml(USER_ROLES)
    deadline = time.monotonic() + 60
    while not any(
        GROUP in (rule.api_groups or []) for rule in rbac.read_cluster_role("edit").rules or []
    ):  # the aggregation controller copies keyrotor-edit's rules into edit
        assert time.monotonic() < deadline, "edit never aggregated keyrotor-edit"
        time.sleep(0.2)
    team_a, team_b = _namespace(core, "tenant-a"), _namespace(core, "tenant-b")
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    rbac.create_namespaced_role_binding(
        team_a,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="tenant-edit"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="edit"
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="User", name=tenant, api_group="rbac.authorization.k8s.io"
                )
            ],
        ),
    )
    custom = client.CustomObjectsApi(admin)
    for ns in (team_a, team_b):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AccessKeyRotation",
                "metadata": {"name": "app"},
                "spec": {"iamUser": "svc"},
            },
        )
        core.create_namespaced_secret(
            ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(
                    name="app", labels={"app.kubernetes.io/managed-by": "keyrotor"}
                ),
                string_data={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
            ),
        )
    as_tenant = kube_apiserver.admin_client()
    as_tenant.set_default_header("Impersonate-User", tenant)
    yield {"api": as_tenant, "a": team_a, "b": team_b}
    as_tenant.close()
    for ns in (team_a, team_b):
        core.delete_namespace(ns)
    admin.close()


def _refused(call: Any) -> int:
    with pytest.raises(ApiException) as caught:
        call()
    return int(caught.value.status)


def test_the_edit_role_lets_a_tenant_manage_its_own_objects(setup: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(setup["api"])
    a = setup["a"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, a, PLURAL, "app", {"spec": {"suspend": True}}
    )
    assert custom.get_namespaced_custom_object(GROUP, VERSION, a, PLURAL, "app")["spec"]["suspend"]


def test_a_tenant_cannot_change_any_objects_status(setup: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(setup["api"])
    status = {"status": {"accessKeyId": "AKIAFORGED", "conditions": []}}
    for ns in (setup["a"], setup["b"]):
        assert (
            _refused(
                lambda ns=ns: custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ns, PLURAL, "app", status
                )
            )
            == 403
        )
    # The main resource ignores status (the status subresource is on): a tenant's patch that
    # carries a status changes nothing of it.
    custom.patch_namespaced_custom_object(GROUP, VERSION, setup["a"], PLURAL, "app", status)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, setup["a"], PLURAL, "app")
    assert (stored.get("status") or {}).get("accessKeyId") != "AKIAFORGED"


def test_a_tenant_cannot_touch_another_namespaces_mirrored_secret(setup: dict[str, Any]) -> None:
    core = client.CoreV1Api(setup["api"])
    b = setup["b"]
    assert _refused(lambda: core.read_namespaced_secret("app", b)) == 403
    assert _refused(lambda: core.patch_namespaced_secret("app", b, {"data": {}})) == 403
    assert _refused(lambda: core.delete_namespaced_secret("app", b)) == 403
    assert _refused(lambda: core.list_secret_for_all_namespaces()) == 403
    custom = client.CustomObjectsApi(setup["api"])
    assert (
        _refused(
            lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, b, PLURAL, "app", {"spec": {"suspend": True}}
            )
        )
        == 403
    )


def test_a_tenant_cannot_touch_the_operators_namespace(setup: dict[str, Any]) -> None:
    core = client.CoreV1Api(setup["api"])
    apps = client.AppsV1Api(setup["api"])
    rbac = client.RbacAuthorizationV1Api(setup["api"])
    ns = OPERATOR_NAMESPACE
    assert _refused(lambda: core.list_namespaced_secret(ns)) == 403
    assert _refused(lambda: core.list_namespaced_pod(ns)) == 403
    assert (
        _refused(
            lambda: apps.patch_namespaced_deployment("keyrotor", ns, {"spec": {"replicas": 0}})
        )
        == 403
    )
    assert (
        _refused(
            lambda: core.create_namespaced_config_map(
                ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
            )
        )
        == 403
    )
    assert (
        _refused(
            lambda: rbac.create_namespaced_role_binding(
                ns,
                client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name="x"),
                    role_ref=client.V1RoleRef(
                        api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="edit"
                    ),
                    subjects=[
                        client.RbacV1Subject(
                            kind="User", name="x", api_group="rbac.authorization.k8s.io"
                        )
                    ],
                ),
            )
        )
        == 403
    )
    assert _refused(lambda: core.patch_namespace(ns, {"metadata": {"labels": {"x": "y"}}})) == 403
