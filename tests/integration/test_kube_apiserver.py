"""The real kube-apiserver from keyrotor_sandbox.kube behaves as Kubernetes does.

Everything here goes over real HTTPS to a real kube-apiserver backed by a real etcd, through the
kubernetes Python client. The test CRD (tests/fixtures/test_crd.yaml, kind Widget) has a
structural schema, a CEL rule and the status subresource.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from keyrotor_sandbox import kube as sandbox_kube
from keyrotor_sandbox.kube import (
    ADMIN_USER,
    OPERATOR_GROUPS,
    OPERATOR_USER,
    KubeApiServer,
    KubeStartupError,
)

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "test.keyrotor.io", "v1", "widgets"


def widget(name: str, finalizers: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if finalizers:
        metadata["finalizers"] = finalizers
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": metadata,
        "spec": spec,
    }


def server_message(error: ApiException) -> str:
    return str(json.loads(error.body)["message"])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll until check() holds; the deadline only guards against hanging forever."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def widgets(kube_admin_api: Any) -> Any:
    return client.CustomObjectsApi(kube_admin_api)


# -- validation ------------------------------------------------------------------------------


def test_object_breaking_the_openapi_schema_is_refused_with_the_servers_message(
    widgets: Any, namespace: str
) -> None:
    with pytest.raises(ApiException) as refused:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("too-big", size=11, color="purple")
        )
    assert refused.value.status == 422
    message = server_message(refused.value)
    assert "spec.size in body should be less than or equal to 10" in message
    assert 'spec.color: Unsupported value: "purple"' in message

    with pytest.raises(ApiException) as missing:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("no-size", color="red")
        )
    assert missing.value.status == 422
    assert "spec.size: Required value" in server_message(missing.value)


def test_object_breaking_the_cel_rule_is_refused_with_the_rules_message(
    widgets: Any, namespace: str
) -> None:
    with pytest.raises(ApiException) as refused:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("w", size=1, minReplicas=3, maxReplicas=1)
        )
    assert refused.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in server_message(refused.value)

    ok = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("w", size=1, minReplicas=1, maxReplicas=3)
    )
    assert ok["spec"]["maxReplicas"] == 3


# -- status subresource and generation -------------------------------------------------------


def test_status_subresource_does_not_bump_generation_but_spec_changes_do(
    widgets: Any, namespace: str
) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("g", size=1)
    )
    assert created["metadata"]["generation"] == 1

    with_status = widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "g", {"status": {"phase": "Ready"}}
    )
    assert with_status["status"] == {"phase": "Ready"}
    assert with_status["metadata"]["generation"] == 1
    assert with_status["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]

    # Status sent to the main resource is dropped: only the subresource writes it.
    ignored = widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "g", {"status": {"phase": "Tampered"}}
    )
    assert ignored["status"] == {"phase": "Ready"}
    assert ignored["metadata"]["generation"] == 1

    changed = widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "g", {"spec": {"size": 2}}
    )
    assert changed["metadata"]["generation"] == 2
    assert changed["status"] == {"phase": "Ready"}


# -- finalizers ------------------------------------------------------------------------------


def test_object_with_a_finalizer_stays_until_the_finalizer_is_removed(
    widgets: Any, namespace: str
) -> None:
    hold = "test.keyrotor.io/hold"
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("f", finalizers=[hold], size=1)
    )
    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")

    held = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == [hold]

    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "f", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")
    assert gone.value.status == 404


# -- optimistic concurrency ------------------------------------------------------------------


def test_stale_update_gets_409_conflict(widgets: Any, namespace: str) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("c", size=1)
    )
    first = dict(created, spec={"size": 2})
    updated = widgets.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "c", first
    )
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]

    stale = dict(created, spec={"size": 3})  # still carries the first resourceVersion
    with pytest.raises(ApiException) as conflict:
        widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c", stale)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "Conflict"
    assert "the object has been modified" in server_message(conflict.value)
    current = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c")
    assert current["spec"] == {"size": 2}


# -- identities and RBAC ---------------------------------------------------------------------


def test_operator_identity_is_the_operators_service_account(kube_operator_api: Any) -> None:
    review = client.AuthenticationV1Api(kube_operator_api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert review.status.user_info.username == OPERATOR_USER
    assert set(OPERATOR_GROUPS) <= set(review.status.user_info.groups)


@pytest.mark.parametrize("identity", ["admin", "operator"])
def test_kubeconfigs_reach_the_server_as_their_identity(
    kube_apiserver: KubeApiServer, identity: str
) -> None:
    kubeconfig = getattr(kube_apiserver, f"{identity}_kubeconfig")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
    finally:
        api.close()
    expected = {"admin": ADMIN_USER, "operator": OPERATOR_USER}[identity]
    assert review.status.user_info.username == expected


def test_operator_identity_is_denied_what_rbac_does_not_grant(
    kube_apiserver: KubeApiServer, kube_operator_api: Any, namespace: str, tmp_path: Path
) -> None:
    # ConfigMaps: a resource the operator's own ClusterRole (deploy/base/rbac.yaml, which e2e
    # tests apply to this shared server) never grants, so the test holds in any order.
    core = client.CoreV1Api(kube_operator_api)
    with pytest.raises(ApiException) as denied:
        core.list_config_map_for_all_namespaces()
    assert denied.value.status == 403
    assert (
        f'User "{OPERATOR_USER}" cannot list resource "configmaps" in API group "" at the cluster '
        "scope" in server_message(denied.value)
    )

    # Grant list on configmaps in one namespace to ServiceAccount keyrotor-system/keyrotor.
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(
        """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-lister}
rules:
  - {apiGroups: [""], resources: [configmaps], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: keyrotor-configmap-lister}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-lister}
subjects:
  - {kind: ServiceAccount, name: keyrotor, namespace: keyrotor-system}
"""
    )
    applied = kube_apiserver.apply_yaml(rbac, namespace=namespace)
    assert [obj["kind"] for obj in applied] == ["Role", "RoleBinding"]

    def allowed() -> bool:
        try:
            core.list_namespaced_config_map(namespace)
        except ApiException as error:
            if error.status == 403:
                return False  # the authorizer's informer has not seen the binding yet
            raise
        return True

    wait_until(allowed, "the RoleBinding to take effect")
    # Only what was granted: not cluster-wide, not another verb.
    with pytest.raises(ApiException) as still_denied:
        core.list_config_map_for_all_namespaces()
    assert still_denied.value.status == 403
    with pytest.raises(ApiException) as no_create:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "s"}})
    assert no_create.value.status == 403


# -- garbage collection ----------------------------------------------------------------------


def test_owned_objects_are_deleted_in_cascade(
    kube_apiserver: KubeApiServer, kube_admin_api: Any, widgets: Any, namespace: str
) -> None:
    if not kube_apiserver.controller_manager_running:
        pytest.skip("no kube-controller-manager (KUBEBUILDER_ASSETS without one)")
    owner = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("owner", size=1)
    )
    core = client.CoreV1Api(kube_admin_api)
    reference = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owned", "ownerReferences": [reference]}}
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner")

    def owned_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(owned_gone, "the garbage collector to delete the owned ConfigMap")
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


# -- start-up errors -------------------------------------------------------------------------


@pytest.mark.parametrize("taken", ["port", "etcd_port"])
def test_port_taken_fails_with_one_readable_line(taken: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        kube = KubeApiServer(crds=[], controller_manager=False, **{taken: port})
        with pytest.raises(KubeStartupError) as failed:
            kube.start()
    message = str(failed.value)
    process = {"port": "kube-apiserver", "etcd_port": "etcd"}[taken]
    assert "\n" not in message
    assert message.startswith(f"{process} exited with code 1 during start-up:")
    assert f"127.0.0.1:{port}" in message
    assert "address already in use" in message
    # Everything stopped and the data removed; only the logs are kept, and named.
    log_path = failed.value.log_path
    assert log_path is not None and str(log_path) in message
    assert log_path.is_file()
    workdir = log_path.parent.parent
    assert sorted(p.name for p in workdir.iterdir()) == ["logs"]
    if taken == "port":
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", kube.etcd_port), 2):
            pass
    shutil.rmtree(workdir)


def test_missing_binary_in_kubebuilder_assets_fails_with_one_readable_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bogus = tmp_path / "no-binaries-here"
    bogus.mkdir()
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(bogus))
    with pytest.raises(KubeStartupError) as failed:
        KubeApiServer(crds=[]).start()
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"kube-apiserver not found in KUBEBUILDER_ASSETS={bogus}")


def test_versions_are_the_pinned_ones(kube_apiserver: KubeApiServer) -> None:
    k8s, etcd = sandbox_kube.pinned_versions()
    assert (k8s, etcd) == (sandbox_kube.FALLBACK_K8S_VERSION, sandbox_kube.FALLBACK_ETCD_VERSION)
    if (
        kube_apiserver.binaries is not None
        and kube_apiserver.binaries.source != "KUBEBUILDER_ASSETS"
    ):
        assert kube_apiserver.versions == {"kubernetes": f"v{k8s}", "etcd": etcd}
