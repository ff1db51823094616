"""``keyrotor status NAME`` and ``keyrotor rotate NAME``: the everyday commands, as cmctl's
``status certificate`` and ``renew`` are for cert-manager.

Both use the current kubeconfig (``KUBECONFIG``, ``--context``) or the in-cluster config, as
kubectl does. Errors are one line on stderr: exit 1 for a failure (no configuration, not found,
forbidden, unreachable, a rotation that did not finish in time), 2 for usage errors (argparse).
"""

from __future__ import annotations

import secrets as random_tokens
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from keyrotor.conditions import find_condition
from keyrotor.model import (
    GROUP,
    KIND,
    PLURAL,
    ROTATE_NOW_ANNOTATION,
    VERSION,
    ConditionType,
    Reason,
)

EVENTS_SHOWN = 10
# Ready reasons that wait for a person: --wait stops at once instead of timing out.
NEEDS_A_PERSON = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.NOT_AUTHORIZED,
        Reason.CONFLICT,
        Reason.USER_NOT_FOUND,
        Reason.SUSPENDED,
    }
)


class CommandError(Exception):
    """A failure to report as one line (exit 1)."""


@dataclass
class Kube:
    custom: Any
    core: Any
    namespace: str  # the context's namespace, for -n's default


def connect(context: str | None) -> Kube:
    """Clients from the kubeconfig (or in-cluster config), as kubectl would pick them."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    namespace = "default"
    try:
        config.load_kube_config(context=context)
        _, active = config.list_kube_config_contexts()
        if context is None:
            namespace = (active.get("context") or {}).get("namespace") or "default"
        else:
            contexts, _ = config.list_kube_config_contexts()
            chosen: dict[str, Any] = next((c for c in contexts if c.get("name") == context), {})
            namespace = (chosen.get("context") or {}).get("namespace") or "default"
    except (ConfigException, FileNotFoundError) as exc:
        try:
            config.load_incluster_config()
            namespace = _incluster_namespace()
        except ConfigException:
            raise CommandError(
                f"no Kubernetes configuration: {_first_line(exc)} (set KUBECONFIG or use "
                f"~/.kube/config)"
            ) from None
    api = client.ApiClient()
    return Kube(
        custom=client.CustomObjectsApi(api), core=client.CoreV1Api(api), namespace=namespace
    )


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def api_error(exc: BaseException, what: str) -> CommandError:
    """An API failure as one readable line."""
    import json

    from kubernetes.client import ApiException

    if isinstance(exc, ApiException):
        message = ""
        try:
            message = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            message = ""
        if exc.status == 404:
            return CommandError(f"{what} not found")
        if exc.status == 403:
            return CommandError(f"forbidden: {message or what}")
        if exc.status == 401:
            return CommandError(f"unauthorized: the kubeconfig's credentials were refused ({what})")
        return CommandError(f"{what}: {exc.status} {message or exc.reason}")
    # urllib3 connection errors carry the URL and the cause in their text.
    return CommandError(f"cannot reach the Kubernetes API server: {_first_line(exc)}")


def get_object(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except Exception as exc:
        raise api_error(exc, f"AccessKeyRotation {namespace}/{name}") from None
    return obj


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


def next_steps(obj: Mapping[str, Any]) -> list[str]:
    """What to do next, from the Ready condition and the generations."""
    metadata = obj["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    status = obj.get("status") or {}
    ready = find_condition(status.get("conditions"), ConditionType.READY)
    here = f"{name} -n {namespace}"
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
    reason = ready.get("reason")
    message = ready.get("message", "")
    steps = {
        Reason.READY: [f"nothing; to rotate now: keyrotor rotate {here} --wait"],
        Reason.ROTATION_PENDING: [
            "wait: the rotation Lambda is making the key; the Events show its progress, and a "
            "rotation that does not finish is reported as RotationStuck"
        ],
        Reason.INVALID_SPEC: [f"fix the spec as the message says: kubectl edit akr {here}"],
        Reason.NOT_AUTHORIZED: [
            "do what the message says (tag the IAM user, or start keyrotor with --allow); "
            "keyrotor checks again by itself"
        ],
        Reason.CONFLICT: [
            "another object (or installation) rotates this IAM user or owns the secret: use "
            "that object, or delete it first; keyrotor checks again by itself"
        ],
        Reason.USER_NOT_FOUND: [
            "create the IAM user, or correct spec.iamUser (kubectl edit akr "
            f"{here}); keyrotor checks again by itself"
        ],
        Reason.ACCESS_DENIED: [
            "give the operator's AWS role the permission the message names "
            "(deploy/examples/operator-iam-policy.json has the whole policy)"
        ],
        Reason.AWS_ERROR: [
            "AWS failed the request the message names; keyrotor retries every minute. If it "
            "persists, check the Lambda keyrotor-<cluster-name>-rotation and the operator's log"
        ],
        Reason.SUSPENDED: [
            f"resume with: kubectl patch akr {here} --type merge -p "
            '\'{"spec":{"suspend":false}}\''
        ],
        Reason.SYNC_FAILED: [
            "the mirrored Secret could not be written or read as the message says; fix that "
            "and keyrotor puts it back at the next sync"
        ],
    }.get(str(reason))
    return steps or [f"see the message: {message}"]


def render_status(obj: Mapping[str, Any], events: list[Any] | str, now: datetime) -> str:
    metadata = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    effective = status.get("effective") or {}
    target = (effective.get("target") or {}).get("secretName") or (
        (spec.get("target") or {}).get("secretName") or metadata["name"]
    )
    lines = [
        f"Name:          {metadata['name']}",
        f"Namespace:     {metadata['namespace']}",
        f"IAM user:      {spec.get('iamUser', '-')}",
        f"Generation:    {metadata.get('generation')} "
        f"(observed: {status.get('observedGeneration', '-')})",
    ]
    if spec.get("suspend"):
        lines.append("Suspended:     yes (spec.suspend)")
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    if not conditions:
        lines.append("  (none yet)")
    for condition in conditions:
        lines.append(
            f"  {condition.get('type', ''):<19} {condition.get('status', ''):<6} "
            f"{condition.get('reason', ''):<16} {condition.get('message', '')} "
            f"(since {relative(_parse_time(condition.get('lastTransitionTime')), now) or '-'})"
        )
    lines += [
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
    lines.append("Events:")
    if isinstance(events, str):
        lines.append(f"  ({events})")
    elif not events:
        lines.append("  (none)")
    for event in events if not isinstance(events, str) else []:
        moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        lines.append(
            f"  {relative(moment, now):<9} {event.type:<8} {event.reason:<24} {event.message}"
        )
    lines.append("Next:")
    lines += [f"  {step}" for step in next_steps(obj)]
    return "\n".join(lines)


def status_command(kube: Kube, namespace: str, name: str, out: TextIO) -> int:
    obj = get_object(kube, namespace, name)
    print(render_status(obj, recent_events(kube, obj), datetime.now(UTC)), file=out)
    return 0


# --- rotate -----------------------------------------------------------------------------------


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


def main(command: str, args: Any, out: TextIO = sys.stdout) -> int:
    try:
        kube = connect(args.context)
        namespace = args.namespace or kube.namespace
        if command == "status":
            return status_command(kube, namespace, args.name, out)
        return rotate_command(
            kube, namespace, args.name, wait=args.wait, timeout=args.timeout, out=out
        )
    except CommandError as exc:
        print(f"keyrotor: {exc}", file=sys.stderr)
        return 1


def add_parsers(commands: Any) -> None:
    """``status`` and ``rotate`` on the CLI's subcommand parser."""

    def common(parser: Any) -> None:
        parser.add_argument("name", metavar="NAME", help="the AccessKeyRotation's name")
        parser.add_argument(
            "-n", "--namespace", help="its namespace (default: the kubeconfig context's)"
        )
        parser.add_argument("--context", help="the kubeconfig context to use")

    status = commands.add_parser(
        "status",
        help="an AccessKeyRotation's conditions, key, times, recent Events and what to do next",
    )
    common(status)
    rotate = commands.add_parser(
        "rotate", help=f"rotate now: set {ROTATE_NOW_ANNOTATION} to a fresh value"
    )
    common(rotate)
    rotate.add_argument(
        "--wait", action="store_true", help="wait until the new key is mirrored into the Secret"
    )
    rotate.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds --wait waits before failing (default 300)",
    )
