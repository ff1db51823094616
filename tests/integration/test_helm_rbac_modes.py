"""The chart's RBAC in both install modes, its NetworkPolicy and bind address, and checkov on
what it renders (the same rules as deploy/base and deploy/overlays/namespaced, which
tests/integration/test_crd.py compares file by file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_helm_chart import container_env, render, template
from tests.unit.test_install_scanners import run_checkov

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "deploy" / "helm" / "keyrotor" / "files"
CLUSTER = ["clusterName=prod-eu-1"]


def rules(name: str) -> Any:
    return yaml.safe_load((FILES / name).read_text())


def test_cluster_wide_mode_binds_workload_restarts_only_where_asked(helm: Path) -> None:
    docs = render(helm, [*CLUSTER, "rbac.restartNamespaces={team-a}"])
    assert docs[("ClusterRole", "keyrotor")]["rules"] == rules("operator-rules.yaml")
    assert not any(
        rule.get("apiGroups") == ["apps"] for rule in docs[("ClusterRole", "keyrotor")]["rules"]
    )
    restart = docs[("ClusterRole", "keyrotor-restart-workloads")]
    assert restart["rules"] == rules("restart-rules.yaml")
    bindings = [d for (kind, _), d in docs.items() if kind == "RoleBinding"]
    assert [(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings] == [
        ("team-a", "keyrotor-restart-workloads")
    ]
    assert not [k for k in docs if k[0] == "Role"]


def test_namespaced_mode_has_roles_in_the_served_namespaces_only(helm: Path) -> None:
    rendered = template(helm, [*CLUSTER, "rbac.namespaced=true", "namespaces={team-a,team-b}"])
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "keyrotor"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == rules("namespaced-rules.yaml") for r in roles)
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert "keyrotor" not in cluster_roles
    assert cluster_roles["keyrotor-namespaced"]["rules"] == rules("namespaced-cluster-rules.yaml")
    assert not any(
        d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "keyrotor" for d in docs
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KEYROTOR_NAMESPACE"] == "team-a,team-b"


def test_namespaced_mode_needs_its_namespaces(helm: Path) -> None:
    refused = template(helm, [*CLUSTER, "rbac.namespaced=true"])
    assert refused.returncode != 0 and "rbac.namespaced needs namespaces" in refused.stderr


def test_network_policy_and_bind_address(helm: Path) -> None:
    docs = render(helm, CLUSTER)
    policy = docs[("NetworkPolicy", "keyrotor")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    assert container_env(docs)["KEYROTOR_BIND_ADDRESS"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }
    assert ("NetworkPolicy", "keyrotor") not in render(
        helm, [*CLUSTER, "networkPolicy.enabled=false"]
    )


@pytest.mark.parametrize(
    "values",
    [CLUSTER, [*CLUSTER, "rbac.namespaced=true", "namespaces={team-a}"]],
    ids=["cluster-wide", "namespaced"],
)
def test_checkov_finds_nothing_in_what_the_chart_renders(
    helm: Path, values: list[str], tmp_path: Path
) -> None:
    rendered = template(helm, values)
    assert rendered.returncode == 0, rendered.stderr
    (tmp_path / "chart.yaml").write_text(rendered.stdout)
    run_checkov("--directory", str(tmp_path), framework="kubernetes")
