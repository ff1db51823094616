"""The mirrored Kubernetes Secret: the AWSCURRENT key in the shapes workloads consume.

The Secret carries a hash of its data (``keyrotor.io/data-hash``, a SHA-256, never the data), so
an edit is detected without keeping any key in memory, and it is owned by its AccessKeyRotation.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client

from keyrotor import errors
from keyrotor.k8s.client import KubeApis, is_status, kube_errors
from keyrotor.model import (
    ACCESS_KEY_CREATED_ANNOTATION,
    ACCESS_KEY_ID_ANNOTATION,
    DATA_HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    VERSION_ID_ANNOTATION,
)
from keyrotor.observation import TargetView


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str


def credentials_data(access_key_id: str, secret_access_key: str, profile: str) -> dict[str, str]:
    credentials = (
        f"[{profile}]\naws_access_key_id = {access_key_id}\n"
        f"aws_secret_access_key = {secret_access_key}\n"
    )
    return {
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "credentials": credentials,
    }


def data_hash(encoded: Mapping[str, str]) -> str:
    """SHA-256 over the base64 data as stored in the Secret (sorted keys)."""
    digest = hashlib.sha256()
    for key in sorted(encoded):
        digest.update(key.encode() + b"\0" + encoded[key].encode() + b"\0")
    return digest.hexdigest()


def _encode(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode("ascii") for k, v in data.items()}


def _is_managed_by(secret: Any, owner_uid: str) -> bool:
    refs = secret.metadata.owner_references or []
    return any(ref.uid == owner_uid for ref in refs)


def _profile_of(encoded: Mapping[str, str]) -> str | None:
    """The profile of the credentials file: its first line, ``[profile]`` (no key material)."""
    try:
        first = base64.b64decode(encoded.get("credentials", "")).split(b"\n", 1)[0].decode()
    except ValueError:
        return None
    return first[1:-1] if first.startswith("[") and first.endswith("]") else None


def is_intact(
    annotations: Mapping[str, str], encoded: Mapping[str, str], version: str | None
) -> bool:
    """The Secret holds ``version`` as keyrotor wrote it: its data matches its own hash."""
    return annotations.get(VERSION_ID_ANNOTATION) == version and annotations.get(
        DATA_HASH_ANNOTATION
    ) == data_hash(encoded)


@kube_errors
def inspect_target(
    kube: KubeApis,
    namespace: str,
    name: str,
    owner_uid: str,
    *,
    profile: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> TargetView:
    """The target Secret's metadata and whether its data is intact (no data leaves here)."""
    try:
        secret = kube.core.read_namespaced_secret(name, namespace)
    except Exception as exc:
        if is_status(exc, 404):
            return TargetView(exists=False)
        raise
    if not _is_managed_by(secret, owner_uid):
        return TargetView(exists=True, owned=False)
    have_annotations = secret.metadata.annotations or {}
    have_labels = secret.metadata.labels or {}
    version = have_annotations.get(VERSION_ID_ANNOTATION)
    return TargetView(
        access_key_id=have_annotations.get(ACCESS_KEY_ID_ANNOTATION),
        key_created=_time(have_annotations.get(ACCESS_KEY_CREATED_ANNOTATION)),
        exists=True,
        owned=True,
        version_id=version,
        intact=is_intact(have_annotations, secret.data or {}, version),
        matches_spec=_profile_of(secret.data or {}) == profile
        and all(have_labels.get(k) == v for k, v in labels.items())
        and all(have_annotations.get(k) == v for k, v in annotations.items()),
    )


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None  # edited by hand: looked up again


def _metadata(
    namespace: str,
    name: str,
    owner: Owner,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(
        name=name,
        namespace=namespace,
        labels={**labels, MANAGED_BY_LABEL: MANAGED_BY_VALUE, OWNER_NAME_LABEL: owner.name},
        annotations=dict(annotations),
        owner_references=[
            client.V1OwnerReference(
                api_version=owner.api_version,
                kind=owner.kind,
                name=owner.name,
                uid=owner.uid,
                controller=True,
                block_owner_deletion=True,
            )
        ],
    )


def _holds(existing: Any, encoded: Mapping[str, str], metadata: client.V1ObjectMeta) -> bool:
    have_annotations = existing.metadata.annotations or {}
    have_labels = existing.metadata.labels or {}
    return bool(
        existing.data == encoded
        and all(have_annotations.get(k) == v for k, v in metadata.annotations.items())
        and all(have_labels.get(k) == v for k, v in metadata.labels.items())
        and existing.type == "Opaque"
    )


@kube_errors
def mirror_secret(
    kube: KubeApis,
    *,
    namespace: str,
    name: str,
    owner: Owner,
    version_id: str,
    access_key_id: str,
    secret_access_key: str,
    profile: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    key_created: datetime | None = None,
) -> bool:
    """Make the Secret hold this key. True when something was written."""
    encoded = _encode(credentials_data(access_key_id, secret_access_key, profile))
    wanted = {
        **annotations,
        VERSION_ID_ANNOTATION: version_id,
        ACCESS_KEY_ID_ANNOTATION: access_key_id,
        DATA_HASH_ANNOTATION: data_hash(encoded),
    }
    if key_created is not None:
        wanted[ACCESS_KEY_CREATED_ANNOTATION] = key_created.strftime("%Y-%m-%dT%H:%M:%SZ")
    for _attempt in range(3):
        metadata = _metadata(namespace, name, owner, labels, wanted)
        try:
            existing = kube.core.read_namespaced_secret(name, namespace)
        except Exception as exc:
            if not is_status(exc, 404):
                raise
            existing = None
        try:
            if existing is None:
                body = client.V1Secret(metadata=metadata, type="Opaque", data=encoded)
                kube.core.create_namespaced_secret(namespace, body)
                return True
            if not _is_managed_by(existing, owner.uid):
                raise errors.ConflictError(
                    f"Secret {namespace}/{name} was created meanwhile by someone else",
                    service="kubernetes",
                )
            if _holds(existing, encoded, metadata):
                return False
            metadata.resource_version = existing.metadata.resource_version
            # Keep what others added to the Secret's metadata; ours wins on our keys.
            metadata.labels = {**(existing.metadata.labels or {}), **metadata.labels}
            metadata.annotations = {**(existing.metadata.annotations or {}), **wanted}
            body = client.V1Secret(metadata=metadata, type="Opaque", data=encoded)
            kube.core.replace_namespaced_secret(name, namespace, body)
            return True
        except client.ApiException as exc:
            if is_status(exc, 409, 404):
                continue  # created, changed or deleted meanwhile: look again
            raise
    raise errors.ConflictError(
        f"Secret {namespace}/{name} kept changing while being written", service="kubernetes"
    )
