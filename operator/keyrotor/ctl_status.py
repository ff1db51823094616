"""``keyrotor status NAME``: an AccessKeyRotation's conditions, key ids, times, recent Events
and what to do next, as ``cmctl status certificate`` shows a Certificate."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from keyrotor.conditions import find_condition
from keyrotor.ctl import Kube, api_error, get_object
from keyrotor.model import KIND, ROTATE_NOW_ANNOTATION, ConditionType, Reason

EVENTS_SHOWN = 10


def recent_events(kube: Kube, obj: Mapping[str, Any]) -> list[Any] | str:
    """The object's Events, oldest first (at most EVENTS_SHOWN), or why they cannot be listed."""
    metadata = obj["metadata"]
    try:
        items = kube.core.list_namespaced_event(
            metadata["namespace"],
            field_selector=(
                f"involvedObject.kind={KIND},involvedObject.name={metadata['name']},"
                f"involvedObject.uid={metadata['uid']}"
            ),
        ).items
    except Exception as exc:
        return str(api_error(exc, "Events"))

    def when(event: Any) -> datetime:
        moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        return moment or datetime.min.replace(tzinfo=UTC)

    return sorted(items, key=when)[-EVENTS_SHOWN:]


# --- status -----------------------------------------------------------------------------------


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    seconds = int((moment - now).total_seconds())
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            text = f"{span // size}{unit}"
            break
    else:
        text = f"{span}s"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _when(text: Any, now: datetime) -> str:
    moment = _parse_time(text)
    return f"{text} ({relative(moment, now)})" if moment else "-"


def _steps_by_reason(here: str) -> dict[str, str]:
    """For each Ready reason, what the person reading ``keyrotor status`` does next."""
    return {
        Reason.READY: f"nothing; to rotate now: keyrotor rotate {here} --wait",
        Reason.ROTATION_PENDING: (
            "wait: the rotation Lambda is making the key; the Events show its progress, and a "
            "rotation that does not finish is reported as RotationStuck"
        ),
        Reason.INVALID_SPEC: f"fix the spec as the message says: kubectl edit akr {here}",
        Reason.NOT_AUTHORIZED: (
            "do what the message says (tag the IAM user, or start keyrotor with --allow); "
            "keyrotor checks again by itself"
        ),
        Reason.CONFLICT: (
            "another object (or installation) rotates this IAM user or owns the secret: use "
            "that object, or delete it first; keyrotor checks again by itself"
        ),
        Reason.KMS_KEY_NOT_ALLOWED: (
            "use a KMS key the installation allows (the message lists them), or remove "
            f"spec.secretsManager.kmsKeyId: kubectl edit akr {here}"
        ),
        Reason.USER_NOT_FOUND: (
            f"create the IAM user, or correct spec.iamUser (kubectl edit akr {here}); keyrotor "
            "checks again by itself"
        ),
        Reason.ACCESS_DENIED: (
            "give the operator the permission the message names (`keyrotor policy` prints the "
            "whole AWS policy; deploy/ has the Kubernetes RBAC)"
        ),
        Reason.AWS_ERROR: (
            "AWS failed the request the message names; keyrotor retries with backoff. If it "
            "persists, check the Lambda keyrotor-<cluster-name>-rotation and the operator's log"
        ),
        Reason.SUSPENDED: (
            f"resume with: kubectl patch akr {here} --type merge -p "
            '\'{"spec":{"suspend":false}}\''
        ),
        Reason.DEAD_KEY: (
            "wait: keyrotor requested a rotation that replaces the dead key (Events show it); "
            "until then the Secret holds a key that does not work"
        ),
        Reason.SYNC_FAILED: (
            "the mirrored Secret could not be written or read as the message says; fix that "
            "and keyrotor puts it back at the next sync"
        ),
    }


def next_steps(obj: Mapping[str, Any]) -> list[str]:
    """What to do next, from the Ready condition and the generations."""
    metadata = obj["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    status = obj.get("status") or {}
    ready = find_condition(status.get("conditions"), ConditionType.READY)
    if ready is None:
        return [
            "keyrotor has not reported on this object yet: check that the operator runs and "
            f"serves namespace {namespace} (kubectl get pods -A -l app.kubernetes.io/name=keyrotor)"
        ]
    if metadata.get("generation") != status.get("observedGeneration"):
        return [
            f"generation {metadata.get('generation')} is not handled yet (status is of "
            f"generation {status.get('observedGeneration')}): wait a moment; if it stays so, "
            "check that the operator runs (its pods and its Lease keyrotor-<cluster-name>)"
        ]
    step = _steps_by_reason(f"{name} -n {namespace}").get(str(ready.get("reason")))
    return [step or f"see the message: {ready.get('message', '')}"]


def _header(obj: Mapping[str, Any]) -> list[str]:
    metadata, spec = obj["metadata"], obj.get("spec") or {}
    status = obj.get("status") or {}
    lines = [
        f"Name:          {metadata['name']}",
        f"Namespace:     {metadata['namespace']}",
        f"IAM user:      {spec.get('iamUser', '-')}",
        f"Generation:    {metadata.get('generation')} "
        f"(observed: {status.get('observedGeneration', '-')})",
    ]
    if spec.get("suspend"):
        lines.append("Suspended:     yes (spec.suspend)")
    return lines


def _conditions(status: Mapping[str, Any], now: datetime) -> list[str]:
    lines = ["Conditions:"]
    conditions = status.get("conditions") or []
    if not conditions:
        lines.append("  (none yet)")
    for condition in conditions:
        since = relative(_parse_time(condition.get("lastTransitionTime")), now) or "-"
        lines.append(
            f"  {condition.get('type', ''):<19} {condition.get('status', ''):<6} "
            f"{condition.get('reason', ''):<16} {condition.get('message', '')} (since {since})"
        )
    return lines


def _key_and_times(obj: Mapping[str, Any], now: datetime) -> list[str]:
    metadata, spec = obj["metadata"], obj.get("spec") or {}
    status = obj.get("status") or {}
    effective = status.get("effective") or {}
    target = (effective.get("target") or {}).get("secretName") or (
        (spec.get("target") or {}).get("secretName") or metadata["name"]
    )
    lines = [
        "Key:",
        f"  Access key id:    {status.get('accessKeyId', '-')}",
        f"  Version:          {status.get('versionId', '-')}",
        f"  Secret:           {metadata['namespace']}/{target}",
        f"  Secrets Manager:  {status.get('secretArn', '-')}",
        f"  Rotation Lambda:  {status.get('lambdaArn', '-')}",
        f"  Schedule:         {(effective.get('rotation') or {}).get('scheduleExpression', '-')}",
        "Times:",
        f"  Last rotation:    {_when(status.get('lastRotationTime'), now)}",
        f"  Next rotation:    {_when(status.get('nextRotationTime'), now)}",
        f"  Last sync:        {_when(status.get('lastSyncTime'), now)}",
    ]
    previous = status.get("previousKey") or {}
    if previous:
        after = previous.get("actionAfter")
        lines.append(
            f"Previous key:     {previous.get('accessKeyId', '-')} {previous.get('state', '')}"
            + (f", action after {_when(after, now)}" if after else "")
        )
    wanted = (metadata.get("annotations") or {}).get(ROTATE_NOW_ANNOTATION)
    if wanted or status.get("rotateNowHandled"):
        lines.append(
            f"Rotate-now:       requested {wanted or '-'!r}, handled "
            f"{status.get('rotateNowHandled') or '-'!r}"
        )
    return lines


def _events(events: list[Any] | str, now: datetime) -> list[str]:
    if isinstance(events, str):
        return ["Events:", f"  ({events})"]
    lines = ["Events:"] + ([] if events else ["  (none)"])
    for event in events:
        moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        lines.append(
            f"  {relative(moment, now):<9} {event.type:<8} {event.reason:<24} {event.message}"
        )
    return lines


def render_status(obj: Mapping[str, Any], events: list[Any] | str, now: datetime) -> str:
    """What ``keyrotor status`` prints: no secret value is in an object's status or Events."""
    status = obj.get("status") or {}
    lines = _header(obj) + _conditions(status, now) + _key_and_times(obj, now)
    lines += _events(events, now)
    lines += ["Next:"] + [f"  {step}" for step in next_steps(obj)]
    return "\n".join(lines)


def status_command(kube: Kube, namespace: str, name: str, out: TextIO) -> int:
    obj = get_object(kube, namespace, name)
    print(render_status(obj, recent_events(kube, obj), datetime.now(UTC)), file=out)
    return 0


# --- rotate -----------------------------------------------------------------------------------
