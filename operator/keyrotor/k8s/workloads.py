"""Rolling restarts of the workloads that read the mirrored Secret."""

from __future__ import annotations

from keyrotor.k8s.client import KubeApis, is_status
from keyrotor.model import RESTARTED_FOR_ANNOTATION


class WorkloadNotFoundError(LookupError):
    pass


def annotate_pod_template(
    kube: KubeApis, *, namespace: str, kind: str, name: str, version_id: str
) -> None:
    """Set the pod template annotation to the new version: a rollout, once per version."""
    patch = {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR_ANNOTATION: version_id}}}}
    }
    method = {
        "Deployment": kube.apps.patch_namespaced_deployment,
        "StatefulSet": kube.apps.patch_namespaced_stateful_set,
        "DaemonSet": kube.apps.patch_namespaced_daemon_set,
    }[kind]
    try:
        method(name, namespace, patch)
    except Exception as exc:
        if is_status(exc, 404):
            raise WorkloadNotFoundError(f"{kind} {namespace}/{name} not found") from None
        raise
