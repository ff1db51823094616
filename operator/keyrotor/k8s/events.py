"""Kubernetes Events about AccessKeyRotation objects (core/v1), posted from any thread.

Messages name ARNs, version ids and access key ids, never a secret value.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from keyrotor.k8s.client import KubeApis

log = logging.getLogger(__name__)
COMPONENT = "keyrotor"
MAX_MESSAGE = 1024


def post_event(
    kube: KubeApis,
    body: dict[str, Any],
    *,
    event_type: str,
    reason: str,
    message: str,
    instance: str = COMPONENT,
) -> None:
    """``instance`` (reportingInstance) says which operator posted it: ``keyrotor``, or
    ``keyrotor-<shard>`` for a shard."""
    metadata = body.get("metadata", {})
    namespace = metadata.get("namespace") or "default"
    now = datetime.now(UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(
            name=f"{metadata.get('name', 'object')}.{uuid.uuid4().hex[:12]}", namespace=namespace
        ),
        involved_object=client.V1ObjectReference(
            api_version=body.get("apiVersion"),
            kind=body.get("kind"),
            name=metadata.get("name"),
            namespace=namespace,
            uid=metadata.get("uid"),
            resource_version=metadata.get("resourceVersion"),
        ),
        type=event_type,
        reason=reason,
        message=message[:MAX_MESSAGE],
        source=client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        reporting_instance=instance,
        first_timestamp=now,
        last_timestamp=now,
        event_time=None,
        count=1,
    )
    try:
        kube.core.create_namespaced_event(namespace, event)
    except Exception as exc:  # an Event that cannot be posted must not fail the reconcile
        status = getattr(exc, "status", type(exc).__name__)
        log.warning(
            "could not post event %s for %s/%s: %s", reason, namespace, metadata.get("name"), status
        )
    log.info("%s %s/%s: %s: %s", event_type, namespace, metadata.get("name"), reason, message)
