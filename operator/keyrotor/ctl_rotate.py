"""``keyrotor rotate NAME [--wait]``: set ``keyrotor.io/rotate-now`` to a fresh value and, with
``--wait``, follow the request until the new key is mirrored (as ``cmctl renew`` does for a
Certificate)."""

from __future__ import annotations

import secrets as random_tokens
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from keyrotor.conditions import find_condition
from keyrotor.ctl import CommandError, Kube, api_error, get_object
from keyrotor.model import GROUP, PLURAL, ROTATE_NOW_ANNOTATION, VERSION, ConditionType, Reason

# Ready reasons that wait for a person: --wait stops at once instead of timing out.
NEEDS_A_PERSON = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.NOT_AUTHORIZED,
        Reason.CONFLICT,
        Reason.KMS_KEY_NOT_ALLOWED,
        Reason.USER_NOT_FOUND,
        Reason.SUSPENDED,
    }
)


def fresh_value(now: datetime) -> str:
    """A new rotate-now value: readable, and distinct even within one second."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{random_tokens.token_hex(3)}"


def rotation_done(obj: Mapping[str, Any], value: str, old_version: str | None) -> bool:
    status = obj.get("status") or {}
    synced = find_condition(status.get("conditions"), ConditionType.SYNCED)
    return (
        status.get("rotateNowHandled") == value
        and bool(status.get("versionId"))
        and status.get("versionId") != old_version
        and synced is not None
        and synced.get("status") == "True"
    )


def rotate_command(
    kube: Kube, namespace: str, name: str, *, wait: bool, timeout: float, out: TextIO
) -> int:
    obj = get_object(kube, namespace, name)
    old_status = obj.get("status") or {}
    old_version = old_status.get("versionId")
    value = fresh_value(datetime.now(UTC))
    try:
        kube.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": {ROTATE_NOW_ANNOTATION: value}}},
        )
    except Exception as exc:
        raise api_error(exc, f"AccessKeyRotation {namespace}/{name}") from None
    print(f"rotation requested: {ROTATE_NOW_ANNOTATION}={value} on {namespace}/{name}", file=out)
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    handled = False
    while True:
        obj = get_object(kube, namespace, name)
        status = obj.get("status") or {}
        if not handled and status.get("rotateNowHandled") == value:
            handled = True
            print("rotation started; waiting for the new key to be mirrored", file=out)
        if rotation_done(obj, value, old_version):
            print(
                f"new key {status.get('accessKeyId')} (version {status.get('versionId')}) "
                f"mirrored into Secret {namespace}/"
                f"{((status.get('effective') or {}).get('target') or {}).get('secretName', name)}",
                file=out,
            )
            return 0
        ready = find_condition(status.get("conditions"), ConditionType.READY) or {}
        current = obj["metadata"].get("generation") == status.get("observedGeneration")
        if current and ready.get("reason") in NEEDS_A_PERSON and ready.get("status") != "True":
            raise CommandError(
                f"{namespace}/{name} cannot rotate: {ready.get('reason')}: "
                f"{ready.get('message', '')}"
            )
        if time.monotonic() >= deadline:
            ready_text = (
                f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}"
                if ready
                else "no status yet"
            )
            raise CommandError(
                f"timed out after {timeout:g}s waiting for the new key of {namespace}/{name} "
                f"({'rotation started' if handled else 'request not picked up yet'}; "
                f"{ready_text}); see: keyrotor status {name} -n {namespace}"
            )
        time.sleep(1.0)
