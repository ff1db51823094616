"""The mirrored Kubernetes Secret: the AWSCURRENT key in the shapes workloads consume.

The Secret carries a hash of its data (``keyrotor.io/data-hash``, a SHA-256, never the data), so
an edit is detected without keeping any key in memory, and it is owned by its AccessKeyRotation.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kubernetes import client

from keyrotor.k8s.client import KubeApis, is_status
from keyrotor.model import (
    ACCESS_KEY_ID_ANNOTATION,
    DATA_HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    VERSION_ID_ANNOTATION,
)


class TargetState(Enum):
    CURRENT = "Current"
    MISSING = "Missing"
    DRIFTED = "Drifted"  # data edited, or another version mirrored
    OUTDATED = "Outdated"  # our data, but not spec.target's profile, labels or annotations
    FOREIGN = "Foreign"  # a Secret of that name that keyrotor does not manage


class TargetConflictError(RuntimeError):
    """The target Secret exists and is not managed by this object."""


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


def _is_managed_by(secret: Any, owner: Owner) -> bool:
    refs = secret.metadata.owner_references or []
    return any(ref.uid == owner.uid for ref in refs)


def _profile_of(encoded: Mapping[str, str]) -> str | None:
    """The profile of the credentials file: its first line, ``[profile]`` (no key material)."""
    try:
        first = base64.b64decode(encoded.get("credentials", "")).split(b"\n", 1)[0].decode()
    except ValueError:
        return None
    return first[1:-1] if first.startswith("[") and first.endswith("]") else None


def inspect_target(
    kube: KubeApis,
    namespace: str,
    name: str,
    owner: Owner,
    version_id: str | None,
    *,
    profile: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> TargetState:
    try:
        secret = kube.core.read_namespaced_secret(name, namespace)
    except Exception as exc:
        if is_status(exc, 404):
            return TargetState.MISSING
        raise
    if not _is_managed_by(secret, owner):
        return TargetState.FOREIGN
    have_annotations = secret.metadata.annotations or {}
    if have_annotations.get(VERSION_ID_ANNOTATION) != version_id:
        return TargetState.DRIFTED
    if have_annotations.get(DATA_HASH_ANNOTATION) != data_hash(secret.data or {}):
        return TargetState.DRIFTED
    have_labels = secret.metadata.labels or {}
    if (
        (profile is not None and _profile_of(secret.data or {}) != profile)
        or any(have_labels.get(k) != v for k, v in (labels or {}).items())
        or any(have_annotations.get(k) != v for k, v in (annotations or {}).items())
    ):
        return TargetState.OUTDATED
    return TargetState.CURRENT


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
) -> bool:
    """Make the Secret hold this key. True when something was written."""
    encoded = _encode(credentials_data(access_key_id, secret_access_key, profile))
    wanted_annotations = {
        **annotations,
        VERSION_ID_ANNOTATION: version_id,
        ACCESS_KEY_ID_ANNOTATION: access_key_id,
        DATA_HASH_ANNOTATION: data_hash(encoded),
    }
    wanted_labels = {**labels, MANAGED_BY_LABEL: MANAGED_BY_VALUE, OWNER_NAME_LABEL: owner.name}
    metadata = client.V1ObjectMeta(
        name=name,
        namespace=namespace,
        labels=wanted_labels,
        annotations=wanted_annotations,
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
    for _attempt in range(3):
        try:
            existing = kube.core.read_namespaced_secret(name, namespace)
        except Exception as exc:
            if not is_status(exc, 404):
                raise
            existing = None
        if existing is None:
            body = client.V1Secret(metadata=metadata, type="Opaque", data=encoded)
            try:
                kube.core.create_namespaced_secret(namespace, body)
                return True
            except Exception as exc:
                if is_status(exc, 409):
                    continue  # created meanwhile: read it and compare
                raise
        if not _is_managed_by(existing, owner):
            raise TargetConflictError(
                f"Secret {namespace}/{name} exists and is not managed by this AccessKeyRotation; "
                f"delete it or choose another spec.target.secretName"
            )
        have_annotations = existing.metadata.annotations or {}
        have_labels = existing.metadata.labels or {}
        if (
            existing.data == encoded
            and all(have_annotations.get(k) == v for k, v in wanted_annotations.items())
            and all(have_labels.get(k) == v for k, v in wanted_labels.items())
            and existing.type == "Opaque"
        ):
            return False
        metadata.resource_version = existing.metadata.resource_version
        # Keep what others added to the Secret's metadata; ours wins on our keys.
        metadata.labels = {**have_labels, **wanted_labels}
        metadata.annotations = {**have_annotations, **wanted_annotations}
        body = client.V1Secret(metadata=metadata, type="Opaque", data=encoded)
        try:
            kube.core.replace_namespaced_secret(name, namespace, body)
            return True
        except Exception as exc:
            if is_status(exc, 409, 404):
                continue  # changed or deleted meanwhile: look again
            raise
    raise RuntimeError(f"Secret {namespace}/{name} kept changing while being written")
