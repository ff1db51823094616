"""The Helm chart, with a real helm (built from the Go modules pinned in tests/helm, or $HELM):
``helm lint``, ``helm template`` for each combination of values that changes what is rendered,
and a server-side dry-run apply of every rendered object against the real API server, which
checks each one against the server's own schemas (and the Prometheus Operator CRDs for the
monitoring objects).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "keyrotor"
RBAC_PATH = ROOT / "deploy" / "base" / "rbac.yaml"
PROMETHEUS_OPERATOR_CRDS = ROOT / "tests" / "fixtures" / "prometheus-operator"
KUBE_VERSION = "1.34.0"

# The combinations that render differently; each is linted, rendered and dry-run applied.
VALUES: dict[str, list[str]] = {
    "default": ["clusterName=prod-eu-1"],
    "single-replica": ["clusterName=prod-eu-1", "replicaCount=1"],
    "ha": [
        "clusterName=prod-eu-1",
        "replicaCount=3",
        "leaderElection.leaseDuration=30s",
        "leaderElection.renewDeadline=20s",
        "leaderElection.retryPeriod=5s",
    ],
    "no-leader-election": [
        "clusterName=prod-eu-1",
        "replicaCount=1",
        "leaderElection.enabled=false",
    ],
    "namespaced": ["clusterName=prod-eu-1", "rbac.namespaced=true", "namespaces={team-a,team-b}"],
    "monitoring": [
        "clusterName=prod-eu-1",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.alertLabels.team=platform",
        "metrics.dashboard.enabled=true",
    ],
    "allow-rules": ["clusterName=prod-eu-1", "allow={team-a:team-a-*}"],
    "event-push": [
        "clusterName=prod-eu-1",
        "eventMode.enabled=true",
        "eventMode.delivery=push",
        "eventMode.push.url=https://keyrotor.example.com/events",
        "eventMode.push.roleArn=arn:aws:iam::123456789012:role/keyrotor-prod-eu-1-event-push",
        "eventMode.push.tokenSecret.name=keyrotor-event-push",
        "eventMode.push.ingress.enabled=true",
        "eventMode.push.ingress.className=nginx",
        "eventMode.push.ingress.tlsSecretName=keyrotor-events-tls",
    ],
    "shards": [
        "clusterName=prod-eu-1",
        "shards[0].name=a",
        "shards[0].selector=keyrotor.io/shard=a",
        "shards[1].name=b",
        "shards[1].namespaces={team-b}",
    ],
}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def template(
    helm: Path, values: list[str], namespace: str = "keyrotor-system"
) -> subprocess.CompletedProcess[str]:
    command = ["template", "kr", str(CHART), "--namespace", namespace]
    command += ["--kube-version", KUBE_VERSION, "--include-crds"]
    for value in values:
        command += ["--set", value]
    return run_helm(helm, *command)


def render(helm: Path, values: list[str], namespace: str = "keyrotor-system") -> dict[Any, Any]:
    rendered = template(helm, values, namespace)
    assert rendered.returncode == 0, rendered.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered.stdout) if d}


def container_env(docs: dict[Any, Any], deployment: str = "keyrotor") -> dict[str, Any]:
    (container,) = docs[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_event_push_values(helm: Path) -> None:
    docs = render(helm, VALUES["event-push"])
    env = container_env(docs)
    assert env["KEYROTOR_EVENT_MODE"] == "true" and env["KEYROTOR_EVENT_DELIVERY"] == "push"
    assert env["KEYROTOR_EVENT_PUSH_URL"] == "https://keyrotor.example.com/events"
    assert env["KEYROTOR_EVENT_PUSH_TOKEN"] == {
        "secretKeyRef": {"name": "keyrotor-event-push", "key": "token"}
    }
    assert docs[("Service", "keyrotor-events")]["spec"]["ports"][0]["targetPort"] == 8082
    rule = docs[("Ingress", "keyrotor-events")]["spec"]["rules"][0]
    assert rule["host"] == "keyrotor.example.com"
    assert rule["http"]["paths"][0]["path"] == "/events"
    ingress = docs[("NetworkPolicy", "keyrotor")]["spec"]["ingress"]
    assert {"ports": [{"port": "push", "protocol": "TCP"}]} in ingress
    plain = render(helm, VALUES["default"])
    assert ("Service", "keyrotor-events") not in plain
    assert "KEYROTOR_EVENT_MODE" not in container_env(plain)


def test_event_push_service_follows_the_active_replica(helm: Path) -> None:
    """The push Service has no selector: the active replica points its EndpointSlice at itself
    (the flag, and its IP, name and namespace from the downward API), under a Role that grants
    that one slice in the release's namespace."""
    docs = render(helm, VALUES["event-push"])
    service = docs[("Service", "keyrotor-events")]["spec"]
    assert "selector" not in service
    assert service["ports"] == [
        {"name": "push", "port": 8082, "targetPort": 8082, "protocol": "TCP"}
    ]
    env = container_env(docs)
    assert env["KEYROTOR_EVENT_PUSH_SERVICE"] == "keyrotor-events"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (container,) = docs[("Deployment", "keyrotor")]["spec"]["template"]["spec"]["containers"]
    assert {"name": "push", "containerPort": 8082, "protocol": "TCP"} in container["ports"]
    role = docs[("Role", "keyrotor-event-push")]
    assert role["metadata"]["namespace"] == "keyrotor-system"
    assert role["rules"] == yaml.safe_load((CHART / "files" / "event-push-rules.yaml").read_text())
    base = {
        d["kind"]: d
        for d in yaml.safe_load_all((ROOT / "deploy" / "base" / "event-push-rbac.yaml").read_text())
    }
    assert role["rules"] == base["Role"]["rules"]  # the kustomize file grants the same
    binding = docs[("RoleBinding", "keyrotor-event-push")]
    assert binding["roleRef"]["name"] == "keyrotor-event-push"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "keyrotor", "namespace": "keyrotor-system"}
    ]
    # The NetworkPolicy still lets the Ingress reach the listener's port.
    ingress = docs[("NetworkPolicy", "keyrotor")]["spec"]["ingress"]
    assert {"ports": [{"port": "push", "protocol": "TCP"}]} in ingress
    # Without the chart's Service (your own in front of the pods), nothing of it.
    own = render(helm, [*VALUES["event-push"], "eventMode.push.service.enabled=false"])
    assert ("Service", "keyrotor-events") not in own
    assert ("Role", "keyrotor-event-push") not in own
    assert not {"KEYROTOR_EVENT_PUSH_SERVICE", "POD_IP"} & set(container_env(own))
    plain = render(helm, VALUES["default"])
    assert ("Role", "keyrotor-event-push") not in plain
    assert "POD_IP" not in container_env(plain)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (["eventMode.push.url=http://keyrotor.example.com/"], "eventMode.push.url"),
        (["eventMode.push.roleArn="], "eventMode.push.roleArn"),
        (["eventMode.push.tokenSecret.name="], "eventMode.push.tokenSecret.name"),
        (["shards[0].name=a", "shards[0].selector=x=a"], "not with shards"),
    ],
)
def test_refuses_incomplete_event_push_values(helm: Path, values: list[str], says: str) -> None:
    rendered = template(helm, [*VALUES["event-push"], *values])
    assert rendered.returncode != 0 and says in rendered.stderr


def test_helm_is_the_pinned_release(helm: Path) -> None:
    version = run_helm(helm, "version", "--short")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("v3.")


@pytest.mark.parametrize("combination", sorted(VALUES))
def test_helm_lint(helm: Path, combination: str) -> None:
    command = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    for value in VALUES[combination]:
        command += ["--set", value]
    linted = run_helm(helm, *command)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 chart(s) failed" in linted.stdout


def test_refuses_without_cluster_name(helm: Path) -> None:
    refused = template(helm, [])
    assert refused.returncode != 0
    assert "set clusterName" in refused.stderr


def test_refuses_replicas_without_leader_election(helm: Path) -> None:
    refused = template(helm, ["clusterName=x", "replicaCount=2", "leaderElection.enabled=false"])
    assert refused.returncode != 0
    assert "needs leaderElection.enabled" in refused.stderr


def test_default_renders_the_operator_highly_available(helm: Path) -> None:
    docs = render(helm, VALUES["default"])
    (role,) = [
        d
        for d in yaml.safe_load_all(RBAC_PATH.read_text())
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "keyrotor"
    ]
    assert docs[("ClusterRole", "keyrotor")]["rules"] == role["rules"]
    deployment = docs[("Deployment", "keyrotor")]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = container_env(docs)
    assert env["KEYROTOR_CLUSTER_NAME"] == "prod-eu-1"
    assert env["KEYROTOR_LEADER_ELECT"] == "true"
    assert env["KEYROTOR_LEADER_ELECTION_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["KEYROTOR_LEADER_ELECTION_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pdb = docs[("PodDisruptionBudget", "keyrotor")]
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    # Monitoring objects are optional and off by default.
    assert not {k for k in docs if k[0] in ("ServiceMonitor", "PrometheusRule")}
    assert ("ConfigMap", "keyrotor-dashboard") not in docs


def test_ha_values(helm: Path) -> None:
    docs = render(helm, VALUES["ha"])
    assert docs[("Deployment", "keyrotor")]["spec"]["replicas"] == 3
    env = container_env(docs)
    assert env["KEYROTOR_LEADER_ELECTION_LEASE_DURATION"] == "30s"
    assert env["KEYROTOR_LEADER_ELECTION_RENEW_DEADLINE"] == "20s"
    assert env["KEYROTOR_LEADER_ELECTION_RETRY_PERIOD"] == "5s"


@pytest.mark.parametrize("combination", ["single-replica", "no-leader-election"])
def test_one_replica_has_no_disruption_budget(helm: Path, combination: str) -> None:
    docs = render(helm, VALUES[combination])
    deployment = docs[("Deployment", "keyrotor")]
    assert deployment["spec"]["replicas"] == 1
    assert ("PodDisruptionBudget", "keyrotor") not in docs
    assert "affinity" not in deployment["spec"]["template"]["spec"]
    env = container_env(docs)
    if combination == "no-leader-election":
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert "KEYROTOR_LEADER_ELECT" not in env
    else:
        assert env["KEYROTOR_LEADER_ELECT"] == "true"


def test_namespaced_and_allow_values(helm: Path) -> None:
    assert container_env(render(helm, VALUES["namespaced"]))["KEYROTOR_NAMESPACE"] == (
        "team-a,team-b"
    )
    assert container_env(render(helm, VALUES["allow-rules"]))["KEYROTOR_ALLOW"] == (
        "team-a:team-a-*"
    )


def test_monitoring_values(helm: Path) -> None:
    docs = render(helm, VALUES["monitoring"])
    monitor = docs[("ServiceMonitor", "keyrotor")]
    service = docs[("Service", "keyrotor-metrics")]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True

    rule = docs[("PrometheusRule", "keyrotor")]
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rendered_rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    shipped_rules = [r for g in shipped["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rendered_rules] == [r["alert"] for r in shipped_rules]
    for rendered, original in zip(rendered_rules, shipped_rules, strict=True):
        assert rendered["expr"] == original["expr"]
        assert rendered["annotations"] == original["annotations"]
        assert rendered["labels"] == {**original["labels"], "team": "platform"}

    dashboard = docs[("ConfigMap", "keyrotor-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["keyrotor.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )


# --------------------------------------------------------------------------------------------
# Against the real API server.
# --------------------------------------------------------------------------------------------


def test_shards_values_run_one_deployment_per_shard(helm: Path) -> None:
    docs = render(helm, VALUES["shards"])
    assert ("Deployment", "keyrotor") not in docs  # no unsharded operator beside the shards
    selectors = []
    for shard in ("a", "b"):
        deployment = docs[("Deployment", f"keyrotor-{shard}")]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["keyrotor.io/shard"] == shard
        assert deployment["spec"]["template"]["metadata"]["labels"]["keyrotor.io/shard"] == shard
        assert docs[("PodDisruptionBudget", f"keyrotor-{shard}")]["spec"]["selector"] == {
            "matchLabels": selector
        }
        selectors.append(selector)
        env = container_env(docs, f"keyrotor-{shard}")
        assert env["KEYROTOR_SHARD"] == shard
        assert env["KEYROTOR_LEADER_ELECT"] == "true"  # one Lease per shard
    assert selectors[0] != selectors[1]
    env_a, env_b = container_env(docs, "keyrotor-a"), container_env(docs, "keyrotor-b")
    assert env_a["KEYROTOR_SELECTOR"] == "keyrotor.io/shard=a" and "KEYROTOR_NAMESPACE" not in env_a
    assert env_b["KEYROTOR_NAMESPACE"] == "team-b" and "KEYROTOR_SELECTOR" not in env_b


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (["shards[0].name=a"], "needs a selector or namespaces"),
        (["shards[0].name=A", "shards[0].selector=x=a"], "1-30 lowercase"),
        (["shards[0].selector=x=a"], "1-30 lowercase"),
        (
            ["shards[0].name=a", "shards[0].selector=x=a", "shards[1].name=a"],
            "two shards are named",
        ),
        (
            [
                "rbac.namespaced=true",
                "namespaces={team-a}",
                "shards[0].name=a",
                "shards[0].namespaces={team-z}",
            ],
            "not in namespaces",
        ),
    ],
)
def test_refuses_bad_shards(helm: Path, values: list[str], says: str) -> None:
    refused = template(helm, ["clusterName=x", *values])
    assert refused.returncode != 0
    assert says in refused.stderr


@pytest.fixture(scope="module")
def monitoring_crds(kube_apiserver: Any) -> None:
    kube_apiserver.install_crds(PROMETHEUS_OPERATOR_CRDS)


@pytest.mark.kube
@pytest.mark.parametrize("combination", sorted(VALUES))
def test_rendered_objects_pass_a_server_side_dry_run(
    helm: Path,
    combination: str,
    kube_admin_api: Any,
    namespace: str,
    monitoring_crds: None,
) -> None:
    """Every rendered object, applied server-side with dryRun=All: the API server validates it
    (schemas, CRD schemas, defaulting, admission) and stores nothing."""
    from kubernetes import dynamic

    # The namespaces the chart serves in namespaced mode must exist for its Roles.
    core = kubernetes.client.CoreV1Api(kube_admin_api)
    served = {"team-a": f"{namespace}-a", "team-b": f"{namespace}-b"}
    for name in served.values():
        core.create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
        )
    values = [
        v.replace("team-a", served["team-a"]).replace("team-b", served["team-b"])
        for v in VALUES[combination]
    ]
    rendered = template(helm, values, namespace)
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    client = dynamic.DynamicClient(kube_admin_api)
    refused = {}
    try:
        for document in documents:
            kind, name = document["kind"], document["metadata"]["name"]
            resource = client.resources.get(api_version=document["apiVersion"], kind=kind)
            try:
                client.server_side_apply(
                    resource,
                    body=document,
                    namespace=(document["metadata"].get("namespace") or namespace)
                    if resource.namespaced
                    else None,
                    field_manager="keyrotor-chart-test",
                    force_conflicts=True,
                    dry_run="All",
                )
            except Exception as exc:
                refused[(kind, name)] = getattr(exc, "body", None) or repr(exc)
    finally:
        for name in served.values():
            core.delete_namespace(name)
    assert refused == {}
    if combination == "namespaced":
        roles = {
            (d["metadata"]["namespace"], d["metadata"]["name"])
            for d in documents
            if d["kind"] == "Role"
        }
        assert {ns for ns, _ in roles} >= set(served.values())
    # Dry run: nothing was stored.
    apps = dynamic.DynamicClient(kube_admin_api).resources.get(
        api_version="apps/v1", kind="Deployment"
    )
    assert client.get(apps, namespace=namespace).items == []


def test_kustomize_base_runs_two_replicas_with_leader_election() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "base")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    deployment = docs[("Deployment", "keyrotor")]
    assert deployment["spec"]["replicas"] == 2
    assert container_env(docs)["KEYROTOR_LEADER_ELECT"] == "true"
    pdb = docs[("PodDisruptionBudget", "keyrotor")]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


MONITORING = ROOT / "deploy" / "monitoring"


def kustomize_monitoring() -> list[dict[str, Any]]:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def test_kustomize_monitoring_matches_the_chart() -> None:
    """deploy/monitoring (for the kustomize install) ships the chart's alerts and dashboard."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kustomize_monitoring()}
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert docs[("PrometheusRule", "keyrotor")]["spec"] == alerts
    dashboard = docs[("ConfigMap", "keyrotor-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["keyrotor.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    base = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "base")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    service = next(d for d in yaml.safe_load_all(base) if d and d["kind"] == "Service")
    monitor = docs[("ServiceMonitor", "keyrotor")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


@pytest.mark.kube
def test_kustomize_monitoring_passes_a_server_side_dry_run(
    kube_admin_api: Any, monitoring_crds: None
) -> None:
    from kubernetes import dynamic

    client = dynamic.DynamicClient(kube_admin_api)
    core = kubernetes.client.CoreV1Api(kube_admin_api)
    try:
        core.create_namespace(
            kubernetes.client.V1Namespace(
                metadata=kubernetes.client.V1ObjectMeta(name="keyrotor-system")
            )
        )
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409, exc.body  # there already
    accepted = []
    for document in kustomize_monitoring():
        resource = client.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        answer = client.server_side_apply(
            resource,
            body=document,
            namespace=document["metadata"]["namespace"],
            field_manager="keyrotor-chart-test",
            force_conflicts=True,
            dry_run="All",
        )
        accepted.append(answer.kind)
    assert sorted(accepted) == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
