"""Every RBAC rule shipped is used, and nothing the operator does is refused: the test API
server's audit log (tests/fixtures/audit-policy.yaml) records the operator identity's requests
while it goes through everything it does (create, first key, rotate-now with a workload restart,
a mirrored Secret edited and deleted, leader election, deletion), in both install modes:

- cluster-wide: deploy/base/rbac.yaml (ClusterRole keyrotor, and keyrotor-restart-workloads
  bound in the namespace); the Helm chart ships the same rules (test_crd, test_helm_rbac_modes);
- namespaced: deploy/overlays/namespaced (a Role in the served namespace, list/watch of CRDs,
  the Lease Role), as its own ServiceAccount with no other binding.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor.k8s.objects import LIST_PAGE_SIZE
from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import OPERATOR_USER, KubeApiServer
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

REPO = Path(__file__).resolve().parents[2]
BASE_RBAC = REPO / "deploy" / "base" / "rbac.yaml"
OVERLAY_RBAC = REPO / "deploy" / "overlays" / "namespaced" / "namespaced-rbac.yaml"
OPERATOR_NAMESPACE = "keyrotor-system"
NAMESPACED_SA = "keyrotor-namespaced"
# Rules that no request shows, with the reason. accesskeyrotations/finalizers update: the
# OwnerReferencesPermissionEnforcement admission plugin asks the authorizer whether the operator
# may set blockOwnerDeletion on the mirrored Secret's ownerReference; that check is not a request.
NOT_A_REQUEST = {("keyrotor.io", "accesskeyrotations/finalizers", "update")}

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def rules_of(documents: list[dict[str, Any]]) -> set[Rule]:
    return {
        (group, resource, verb)
        for doc in documents
        for rule in doc.get("rules") or []
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def audit_events(kube: KubeApiServer, offset: int, user: str) -> list[dict[str, Any]]:
    log: Path = kube.audit_log  # type: ignore[attr-defined]
    with log.open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if e["user"]["username"] == user and e.get("objectRef")]


def used(events: list[dict[str, Any]]) -> set[Rule]:
    found = set()
    for event in events:
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return found


def refused(events: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('apiGroup', '')}/{e['objectRef']['resource']} "
        f"in {e['objectRef'].get('namespace', '-')}: {e['responseStatus']['code']}"
        for e in events
        if e.get("responseStatus", {}).get("code") == 403
    ]


def log_size(kube: KubeApiServer) -> int:
    log: Path = kube.audit_log  # type: ignore[attr-defined]
    return log.stat().st_size if log.exists() else 0


def ensure_namespace(core: client.CoreV1Api, name: str) -> None:
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise


def everything_the_operator_does(keyrotor: Harness, ns: str) -> None:
    """Create (first key), rotate-now with a restart, a Secret edited and deleted, deletion."""
    user = keyrotor.iam_user(namespaces=ns)
    selector = client.V1LabelSelector(match_labels={"app": "app"})
    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": "app"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
    )
    meta = client.V1ObjectMeta(name="app")
    keyrotor.apps.create_namespaced_deployment(
        ns,
        client.V1Deployment(
            metadata=meta, spec=client.V1DeploymentSpec(selector=selector, template=template)
        ),
    )
    keyrotor.apps.create_namespaced_stateful_set(
        ns,
        client.V1StatefulSet(
            metadata=meta,
            spec=client.V1StatefulSetSpec(selector=selector, template=template, service_name="app"),
        ),
    )
    keyrotor.apps.create_namespaced_daemon_set(
        ns,
        client.V1DaemonSet(
            metadata=meta, spec=client.V1DaemonSetSpec(selector=selector, template=template)
        ),
    )
    keyrotor.create(
        ns,
        "app",
        {
            "iamUser": user,
            "restartOnRotation": [
                {"kind": kind, "name": "app"} for kind in ("Deployment", "StatefulSet", "DaemonSet")
            ],
            "previousKey": {"action": "Delete", "after": "1s"},
        },
    )
    keyrotor.wait_ready(ns, "app")
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "1"})

    def restarted() -> bool:
        workloads = (
            keyrotor.apps.read_namespaced_deployment("app", ns),
            keyrotor.apps.read_namespaced_stateful_set("app", ns),
            keyrotor.apps.read_namespaced_daemon_set("app", ns),
        )
        return all(
            (w.spec.template.metadata.annotations or {}).get("keyrotor.io/restarted-for-version")
            for w in workloads
        )

    keyrotor.wait(restarted, what="the workloads restarted")
    keyrotor.wait(
        lambda: (
            ((keyrotor.get(ns, "app") or {}).get("status", {}).get("previousKey") or {}).get(
                "state"
            )
            == "Deleted"
        ),
        what="the previous key deleted",
    )
    secret = keyrotor.secret(ns, "app")
    assert secret is not None
    version = secret.metadata.annotations["keyrotor.io/version-id"]
    keyrotor.core.patch_namespaced_secret(
        "app", ns, {"data": {"AWS_SECRET_ACCESS_KEY": base64.b64encode(b"edited").decode()}}
    )
    keyrotor.wait(
        lambda: (
            keyrotor.secret_data(keyrotor.secret(ns, "app"))["AWS_SECRET_ACCESS_KEY"]  # type: ignore[arg-type]
            != "edited"
        ),
        what="the edited Secret put back",
    )
    keyrotor.core.delete_namespaced_secret("app", ns)
    keyrotor.wait(
        lambda: (
            (s := keyrotor.secret(ns, "app")) is not None
            and s.metadata.annotations["keyrotor.io/version-id"] == version
        ),
        what="the deleted Secret put back",
    )
    keyrotor.delete(ns, "app")
    keyrotor.wait(lambda: keyrotor.get(ns, "app") is None, what="the object deleted")


@pytest.fixture
def harness(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:
    """One installation per test: each has its own Lease to create."""
    harness = Harness(aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"))
    ensure_namespace(harness.core, OPERATOR_NAMESPACE)
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()


def stop_operators(keyrotor: Harness) -> None:
    for process in keyrotor.operators:
        process.stop()


def test_cluster_wide_rbac_is_used_and_enough(harness: Harness) -> None:
    kube = harness.kube
    ns = harness.namespace("audit")
    start = log_size(kube)
    harness.start_operator("--leader-elect", "--leader-election-namespace", OPERATOR_NAMESPACE)
    everything_the_operator_does(harness, ns)
    stop_operators(harness)
    events = audit_events(kube, start, OPERATOR_USER)
    assert refused(events) == []
    shipped = rules_of([d for d in yaml.safe_load_all(BASE_RBAC.read_text()) if d and "rules" in d])
    calls = used(events)
    assert calls - shipped == set(), "calls no rule allows"
    assert shipped - calls - NOT_A_REQUEST == set(), "rules never used"
    # Only keyrotor's own Secrets are listed and watched (the label selector is the server's
    # to apply), and the first listing of the objects comes in pages.
    secrets = listed(events, "secrets")
    assert secrets
    assert all(
        query.get("labelSelector") == ["app.kubernetes.io/managed-by=keyrotor"] for query in secrets
    )
    page = [str(LIST_PAGE_SIZE)]
    assert any(query.get("limit") == page for query in listed(events, "accesskeyrotations"))


def listed(events: list[dict[str, Any]], resource: str) -> list[dict[str, list[str]]]:
    """The query of every list and watch of ``resource`` (collections, not single objects)."""
    return [
        parse_qs(urlsplit(e["requestURI"]).query)
        for e in events
        if e["verb"] in ("list", "watch") and e["objectRef"].get("resource") == resource
    ]


def test_namespaced_rbac_is_used_and_enough(harness: Harness, tmp_path: Path) -> None:
    kube = harness.kube
    ns = harness.namespace("audit-ns")
    identity = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{NAMESPACED_SA}"
    documents = []
    for doc in yaml.safe_load_all(OVERLAY_RBAC.read_text()):
        if doc["metadata"].get("namespace") == "team-a":
            doc["metadata"]["namespace"] = ns
        if doc["kind"].startswith("Cluster") or doc["metadata"]["namespace"] == OPERATOR_NAMESPACE:
            doc["metadata"]["name"] += "-audit"  # beside the cluster-wide install's objects
            if "roleRef" in doc:
                doc["roleRef"]["name"] += "-audit"
        for subject in doc.get("subjects") or []:
            subject["name"] = NAMESPACED_SA
        documents.append(doc)
    path = tmp_path / "namespaced-rbac.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    core = harness.core
    try:
        core.create_namespaced_service_account(
            OPERATOR_NAMESPACE,
            client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=NAMESPACED_SA)),
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    kube.apply_yaml(path)
    token = core.create_namespaced_service_account_token(
        NAMESPACED_SA,
        OPERATOR_NAMESPACE,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    ).status.token
    config = yaml.safe_load(kube.operator_kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    harness.kubeconfig = tmp_path / "namespaced.kubeconfig"
    harness.kubeconfig.write_text(yaml.safe_dump(config))

    start = log_size(kube)
    harness.start_operator(
        "--namespace", ns, "--leader-elect", "--leader-election-namespace", OPERATOR_NAMESPACE
    )
    everything_the_operator_does(harness, ns)
    stop_operators(harness)
    events = audit_events(kube, start, identity)
    assert refused(events) == []
    shipped = rules_of(documents)
    calls = used(events)
    assert calls - shipped == set(), "calls no rule allows"
    assert shipped - calls - NOT_A_REQUEST == set(), "rules never used"
    # Its namespace, its Lease's, and the one read of kube-system (the installation's identity).
    named = {e["objectRef"].get("namespace") or e["objectRef"].get("name") for e in events}
    assert named <= {ns, OPERATOR_NAMESPACE, "kube-system", None}
