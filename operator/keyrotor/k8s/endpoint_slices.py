"""The push Service's EndpointSlice (``--event-push-service``): the active replica points it at
itself, as Patroni points its Endpoints at the primary, so that EventBridge's requests reach the
active replica and never a standby (which would answer 503 and send the event into EventBridge's
growing retry delays).

The Service has no selector, so no controller of Kubernetes writes its endpoints; the slice is
named after the Service and carries ``kubernetes.io/service-name`` (what kube-proxy and Ingress
controllers follow) and ``endpointslice.kubernetes.io/managed-by: keyrotor.io`` (what makes it
keyrotor's own); the Service owns it (an ownerReference), so it goes with the Service, and
none is written while the Service is missing (one written then would outlive an uninstall).
Check, then write: the slice is read, and written only when it differs from the
wanted one (a leader that restarts writes nothing); a slice of that name managed by anything else
is refused and left as it was. During a failover the slice names the dead leader until the new
one takes over (bounded by the lease duration); EventBridge's retries cover that.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from keyrotor.errors import ConflictError, NotFoundError, failure_for
from keyrotor.k8s.client import is_status, kube_errors

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "keyrotor.io"
PORT_NAME = "push"  # the Service's port name (the chart's keyrotor-events)
RECHECK = 30.0  # seconds between two checks of the slice by the active replica
RETRY = 5.0  # seconds before a failed check is tried again


class ForeignSliceError(ConflictError):
    """An EndpointSlice of the Service's name exists and is not keyrotor's."""


class ServiceMissingError(NotFoundError):
    """The Service is not there: no slice is written for it (it would outlive the Service)."""


@dataclass(frozen=True)
class PushEndpoint:
    """Where the push Service's traffic should go: this pod's IP and the listener's port."""

    namespace: str
    service: str
    ip: str
    port: int
    pod_name: str | None = None

    def describe(self) -> str:
        return f"EndpointSlice {self.namespace}/{self.service}"


def address_type(ip: str) -> str:
    """The slice's addressType for an address: IPv4 or IPv6."""
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def service_owner(endpoint: PushEndpoint, uid: str) -> dict[str, Any]:
    """The Service as the slice's owner (as the EndpointSlice controller sets it), so that the
    slice goes with the Service (helm uninstall). No blockOwnerDeletion: that would need a
    right on the Service's finalizers."""
    return {"apiVersion": "v1", "kind": "Service", "name": endpoint.service, "uid": uid}


def wanted_slice(endpoint: PushEndpoint, service_uid: str | None = None) -> dict[str, Any]:
    """The slice that sends the Service's traffic to ``endpoint`` alone, owned by the Service
    when it exists (``service_uid``)."""
    address: dict[str, Any] = {
        "addresses": [str(ipaddress.ip_address(endpoint.ip))],  # canonical, as the API wants
        "conditions": {"ready": True},
    }
    if endpoint.pod_name:
        address["targetRef"] = {
            "kind": "Pod",
            "name": endpoint.pod_name,
            "namespace": endpoint.namespace,
        }
    metadata: dict[str, Any] = {
        "name": endpoint.service,
        "namespace": endpoint.namespace,
        "labels": {SERVICE_NAME_LABEL: endpoint.service, MANAGED_BY_LABEL: MANAGED_BY},
    }
    if service_uid:
        metadata["ownerReferences"] = [service_owner(endpoint, service_uid)]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": address_type(endpoint.ip),
        "endpoints": [address],
        "ports": [{"name": PORT_NAME, "port": endpoint.port, "protocol": "TCP"}],
    }


def is_foreign(observed: dict[str, Any]) -> bool:
    """Managed by anything but keyrotor (or by nothing said)."""
    labels = (observed.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) != MANAGED_BY


def _endpoints(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    found = []
    for endpoint in body.get("endpoints") or []:
        ref = endpoint.get("targetRef") or {}
        found.append(
            (
                tuple(endpoint.get("addresses") or []),
                (endpoint.get("conditions") or {}).get("ready"),
                (ref.get("kind"), ref.get("name"), ref.get("namespace")) if ref else None,
            )
        )
    return found


def _ports(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (port.get("name"), port.get("port"), port.get("protocol") or "TCP")
        for port in body.get("ports") or []
    ]


def _owner_missing(observed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The wanted owner (the Service, when it exists) is not among the slice's owners."""
    uids = {o.get("uid") for o in (observed.get("metadata") or {}).get("ownerReferences") or []}
    return any(o["uid"] not in uids for o in wanted["metadata"].get("ownerReferences") or [])


def differs(observed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the observed slice sends traffic elsewhere than the wanted one, or lacks its
    owner (only what keyrotor sets counts: the API server's defaults, others' labels and
    owners do not)."""
    labels = (observed.get("metadata") or {}).get("labels") or {}
    wanted_labels = wanted["metadata"]["labels"]
    return (
        any(labels.get(key) != value for key, value in wanted_labels.items())
        or _owner_missing(observed, wanted)
        or observed.get("addressType") != wanted["addressType"]
        or _endpoints(observed) != _endpoints(wanted)
        or _ports(observed) != _ports(wanted)
    )


def updated_slice(observed: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The observed slice with the wanted labels, endpoints and ports (its resourceVersion kept,
    so a concurrent write makes the replace a conflict; others' labels kept)."""
    body = copy.deepcopy(observed)
    metadata = body.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **wanted["metadata"]["labels"]}
    metadata.pop("managedFields", None)
    if wanted["metadata"].get("ownerReferences"):  # the Service now, instead of an older one
        others = [
            o
            for o in metadata.get("ownerReferences") or []
            if (o.get("kind"), o.get("name")) != ("Service", metadata.get("name"))
        ]
        metadata["ownerReferences"] = others + wanted["metadata"]["ownerReferences"]
    body["endpoints"] = wanted["endpoints"]
    body["ports"] = wanted["ports"]
    return body


class EndpointSlices:
    """The adapter: one EndpointSlice by name, read and written with the operator's client."""

    def __init__(self, api_client: Any) -> None:
        self.api = client.DiscoveryV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self._serialize = api_client.sanitize_for_serialization

    @kube_errors
    def service_uid(self, namespace: str, name: str) -> str | None:
        """The Service's uid; None when there is no such Service (yet)."""
        try:
            service = self.core.read_namespaced_service(name, namespace)
        except client.ApiException as exc:
            if is_status(exc, 404):
                return None
            raise
        return str(service.metadata.uid)

    @kube_errors
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.api.read_namespaced_endpoint_slice(name, namespace)
        except client.ApiException as exc:
            if is_status(exc, 404):
                return None
            raise
        return dict(self._serialize(found))

    @kube_errors
    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.api.create_namespaced_endpoint_slice(namespace, body)

    @kube_errors
    def replace(self, namespace: str, body: dict[str, Any]) -> None:
        self.api.replace_namespaced_endpoint_slice(body["metadata"]["name"], namespace, body)


def check_not_foreign(slices: EndpointSlices, endpoint: PushEndpoint) -> None:
    """Read only: raises ForeignSliceError when the slice exists and is not keyrotor's."""
    observed = slices.read(endpoint.namespace, endpoint.service)
    if observed is not None and is_foreign(observed):
        raise ForeignSliceError(_foreign_message(endpoint, observed), service="kubernetes")


def ensure_slice(slices: EndpointSlices, endpoint: PushEndpoint) -> bool:
    """Make the slice point at ``endpoint``; True when something was written. A foreign slice
    raises ForeignSliceError and a missing Service ServiceMissingError, before any write; a
    concurrent write, ConflictError (look again)."""
    service_uid = slices.service_uid(endpoint.namespace, endpoint.service)
    if service_uid is None:
        raise ServiceMissingError(
            f"Service {endpoint.namespace}/{endpoint.service} not found: no EndpointSlice is "
            f"written for it until it exists (create it with no selector)",
            service="kubernetes",
        )
    wanted = wanted_slice(endpoint, service_uid)
    observed = slices.read(endpoint.namespace, endpoint.service)
    if observed is None:
        slices.create(endpoint.namespace, wanted)
        return True
    if is_foreign(observed):
        raise ForeignSliceError(_foreign_message(endpoint, observed), service="kubernetes")
    if not differs(observed, wanted):
        return False
    slices.replace(endpoint.namespace, updated_slice(observed, wanted))
    return True


def _foreign_message(endpoint: PushEndpoint, observed: dict[str, Any]) -> str:
    labels = (observed.get("metadata") or {}).get("labels") or {}
    owner = labels.get(MANAGED_BY_LABEL) or "nothing"
    return (
        f"{endpoint.describe()} is managed by {owner!r}, not {MANAGED_BY}: keyrotor does not take "
        f"it over (give --event-push-service a Service of keyrotor's own, with no selector)"
    )


def keep_slice(
    slices: EndpointSlices, endpoint: PushEndpoint, stop: threading.Event, recheck: float = RECHECK
) -> None:
    """The active replica's loop: the slice is checked every ``recheck`` seconds and put back
    if someone changed or deleted it; failures are logged and tried again."""
    while True:
        try:
            if ensure_slice(slices, endpoint):
                log.info("event push: %s points at %s", endpoint.describe(), endpoint.ip)
            wait = recheck
        except ForeignSliceError as exc:  # a person must act: said at each recheck
            log.error("event push: %s", exc)
            wait = recheck
        except ServiceMissingError as exc:  # not yet, or being uninstalled
            log.warning("event push: %s", exc)
            wait = recheck
        except Exception as exc:  # tried again; the sweep covers events lost meanwhile
            log.warning("event push: %s: %s", endpoint.describe(), failure_for(exc).message)
            wait = RETRY
        if stop.wait(wait):
            return
