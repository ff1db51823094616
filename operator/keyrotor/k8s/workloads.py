"""Rolling restarts of the workloads that read the mirrored Secret."""

from __future__ import annotations

from keyrotor.k8s.client import KubeApis, kube_errors
from keyrotor.model import RESTARTED_FOR_ANNOTATION


@kube_errors
def annotate_pod_template(
    kube: KubeApis, *, namespace: str, kind: str, name: str, version_id: str
) -> None:
    """Set the pod template annotation to the new version: a rollout, once per version.
    A workload that does not exist is a NotFoundError."""
    patch = {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR_ANNOTATION: version_id}}}}
    }
    method = {
        "Deployment": kube.apps.patch_namespaced_deployment,
        "StatefulSet": kube.apps.patch_namespaced_stateful_set,
        "DaemonSet": kube.apps.patch_namespaced_daemon_set,
    }[kind]
    method(name, namespace, patch)
