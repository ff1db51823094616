"""``keyrotor status NAME`` and ``keyrotor rotate NAME``: the everyday commands, as cmctl's
``status certificate`` and ``renew`` are for cert-manager. This module holds what both share:
the Kubernetes client from the current kubeconfig (``KUBECONFIG``, ``--context``) or the
in-cluster config, as kubectl picks it, and errors as one readable line. The commands are in
``ctl_status`` and ``ctl_rotate``.

Exit codes: 0 done, 1 a failure (no configuration, not found, forbidden, unreachable, a rotation
that did not finish in time), 2 a usage error (argparse).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from keyrotor.model import GROUP, PLURAL, ROTATE_NOW_ANNOTATION, VERSION


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


def main(command: str, args: Any, out: TextIO = sys.stdout) -> int:
    try:
        kube = connect(args.context)
        namespace = args.namespace or kube.namespace
        if command == "status":
            from keyrotor.ctl_status import status_command

            return status_command(kube, namespace, args.name, out)
        from keyrotor.ctl_rotate import rotate_command

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
