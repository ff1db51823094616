"""AccessKeyRotation objects: read one, patch its status (status subresource only)."""

from __future__ import annotations

from typing import Any

from keyrotor.k8s.client import KubeApis, is_status, kube_errors
from keyrotor.model import GROUP, PLURAL, VERSION


@kube_errors
def get_object(kube: KubeApis, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        body = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as exc:
        if is_status(exc, 404):
            return None
        raise
    return dict(body)


@kube_errors
def patch_status(
    kube: KubeApis, namespace: str, name: str, status: dict[str, Any], *, resource_version: str
) -> str | None:
    """Merge-patch the status subresource, if the object is still at ``resource_version``
    (optimistic concurrency: a ConflictError means decide again from a fresh read). An object
    deleted meanwhile is nothing to do. The resourceVersion the write made, if it made one."""
    body = {"metadata": {"resourceVersion": resource_version}, "status": status}
    try:
        written = kube.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body
        )
    except Exception as exc:
        if not is_status(exc, 404):
            raise
        return None
    version = (written or {}).get("metadata", {}).get("resourceVersion")
    return str(version) if version else None


@kube_errors
def remove_finalizer(kube: KubeApis, body: dict[str, Any], finalizer: str) -> None:
    """Take ``finalizer`` off the object, if it is still where ``body`` saw it (a JSON patch
    that tests first: another finalizer added or removed meanwhile is left alone, and a
    conflict means try again from a fresh read)."""
    metadata = body.get("metadata") or {}
    finalizers = list(metadata.get("finalizers") or [])
    if finalizer not in finalizers:
        return
    path = f"/metadata/finalizers/{finalizers.index(finalizer)}"
    patch = [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]
    try:
        kube.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            metadata["namespace"],
            PLURAL,
            metadata["name"],
            patch,
            _content_type="application/json-patch+json",
        )
    except Exception as exc:
        if not is_status(exc, 404):
            raise


@kube_errors
def kube_system_uid(kube: KubeApis) -> str:
    """The kube-system namespace's uid: unique per cluster, stable for the cluster's life.
    A get by name: RBAC can grant exactly this namespace (resourceNames), a list it cannot."""
    try:
        namespace = kube.core.read_namespace("kube-system")
    except Exception as exc:
        if is_status(exc, 404):
            return ""
        raise
    return str(namespace.metadata.uid)


# Objects per page of a list. A page of 500 objects with their status is about 3 MB of JSON and
# several times that decoded, and what a page leaves behind in the allocator stays resident:
# 100 keeps a list over 10,000 objects (the claims map's, every 30 minutes) from raising RSS.
LIST_PAGE_SIZE = 100


@kube_errors
def list_objects(
    kube: KubeApis, namespace: str | None, *, continue_token: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the AccessKeyRotation objects (of one namespace, or of every one with
    None): the objects and the token for the next page (None after the last)."""
    paging: dict[str, Any] = {"limit": LIST_PAGE_SIZE}
    if continue_token:
        paging["_continue"] = continue_token
    if namespace is None:
        page = kube.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **paging)
    else:
        page = kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, **paging
        )
    token = (page.get("metadata") or {}).get("continue")
    return list(page.get("items") or []), str(token) if token else None


@kube_errors
def namespace_names(kube: KubeApis) -> list[str] | None:
    """Every namespace's name; None when keyrotor may not list namespaces."""
    try:
        listed = kube.core.list_namespace()
    except Exception as exc:
        if is_status(exc, 403):
            return None
        raise
    return [str(item.metadata.name) for item in listed.items]
