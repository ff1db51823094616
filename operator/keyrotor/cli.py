"""``keyrotor run`` (the operator) and ``keyrotor demo`` (the whole loop on this machine)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from keyrotor import audit_command, policy_command
from keyrotor.aws.rate_limits import parse_rate
from keyrotor.settings import (
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_WORKERS,
    EVENT_MODE_SYNC_INTERVAL,
    AllowRule,
    Settings,
    SettingsError,
    env,
    env_flag,
    env_list,
    parse_interval_setting,
)


def _add_run_loop_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: what it watches and how often it looks."""
    run.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable, or comma separated; kopf's globs and "
        "!exclusions); default all",
    )
    run.add_argument(
        "--cluster-name",
        default=env("CLUSTER_NAME", "default"),
        help="names this installation: secret prefix, Lambda, role, tags",
    )
    run.add_argument("--region", default=env("REGION"), help="AWS region (default: boto3's chain)")
    run.add_argument(
        "--sync-interval",
        default=env("SYNC_INTERVAL"),
        help=f"seconds (or 5m) between ListSecrets sweeps (default {int(DEFAULT_SYNC_INTERVAL)}, "
        f"{int(EVENT_MODE_SYNC_INTERVAL)} in event mode)",
    )
    run.add_argument("--focus-interval", default=env("FOCUS_INTERVAL", "2"), help=argparse.SUPPRESS)
    run.add_argument(
        "--stuck-after",
        default=env("STUCK_AFTER", "900"),
        help="seconds after which an unfinished rotation is cleared",
    )
    run.add_argument(
        "--recheck-interval",
        default=env("RECHECK_INTERVAL", "120"),
        help="seconds (or 2m) before an object refused as NotAuthorized, UserNotFound, "
        "Conflict or AccessDenied is checked again",
    )
    run.add_argument(
        "--dead-key-check-interval",
        default=env("DEAD_KEY_CHECK_INTERVAL", "3600"),
        help="seconds (or 1h) between checks of every mirrored key in IAM's credential report",
    )
    run.add_argument(
        "--installation-recheck",
        default=env("INSTALLATION_RECHECK", "900"),
        help="seconds (or 15m) between checks of the rotation Lambda, its role and permission",
    )


def _add_run_event_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: event mode, by queue or by push."""
    run.add_argument(
        "--event-mode",
        action=argparse.BooleanOptionalAction,
        default=env_flag("EVENT_MODE"),
        help="mirror rotations within seconds from Secrets Manager's events (an EventBridge rule "
        "and an SQS queue keyrotor ensures); the sweep stays as the safety net",
    )
    run.add_argument(
        "--event-queue-url",
        default=env("EVENT_QUEUE_URL"),
        help="event mode: long-poll this queue instead of creating keyrotor-<cluster-name>-events "
        "(its policy must let the rule keyrotor-<cluster-name>-secrets send)",
    )
    run.add_argument(
        "--event-delivery",
        choices=["queue", "push"],
        default=env("EVENT_DELIVERY", "queue"),
        help="event mode: long-poll an SQS queue (queue), or let EventBridge call the operator "
        "(push: an API destination to --event-push-url; the token from "
        "KEYROTOR_EVENT_PUSH_TOKEN)",
    )
    run.add_argument(
        "--event-push-port",
        type=int,
        default=env("EVENT_PUSH_PORT", "0"),
        help="push delivery: the listener's port, on --bind-address",
    )
    run.add_argument(
        "--event-push-url",
        default=env("EVENT_PUSH_URL"),
        help="push delivery: the HTTPS URL at which EventBridge reaches the listener (Ingress)",
    )
    run.add_argument(
        "--event-push-role-arn",
        default=env("EVENT_PUSH_ROLE_ARN"),
        help="push delivery: the role EventBridge invokes the API destination with",
    )
    run.add_argument(
        "--event-push-service",
        default=env("EVENT_PUSH_SERVICE"),
        metavar="NAME",
        help="push delivery: the Service (no selector, in the operator's namespace) whose "
        "EndpointSlice the active replica points at itself (its IP from POD_IP)",
    )


def _add_run_shard_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: one shard of several (keyrotor.shards)."""
    run.add_argument(
        "--shard",
        default=env("SHARD", ""),
        help="this process is one shard of several: its name (in claims, its Lease, its "
        "finalizer and its event queue); default: one unsharded operator",
    )
    run.add_argument(
        "--selector",
        default=env("SELECTOR", ""),
        metavar="LABEL_SELECTOR",
        help="serve only the objects whose labels match (as kubectl -l: a=b, a!=b, a in (x,y), "
        "a notin (x), a, !a); needs --shard",
    )


def _add_run_aws_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: the rotation role, who may claim which user, KMS keys."""
    run.add_argument(
        "--lambda-role-arn",
        default=env("LAMBDA_ROLE_ARN"),
        help="use this execution role for the rotation Lambda instead of creating one",
    )
    run.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="NAMESPACE:USER_GLOB",
        help="objects in NAMESPACE may claim IAM users matching the glob (repeatable)",
    )
    run.add_argument(
        "--kms-key",
        action="append",
        default=None,
        metavar="KEY_ARN",
        help="a customer managed KMS key objects may use in spec.secretsManager.kmsKeyId "
        "(repeatable; any other key is refused on the object)",
    )


def _add_run_scale_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: objects worked on at once, and AWS requests per second."""
    run.add_argument(
        "--sync-workers",
        type=int,
        default=env("SYNC_WORKERS", str(DEFAULT_WORKERS)),
        help=f"objects the sync loop works on at once (default {DEFAULT_WORKERS})",
    )
    run.add_argument(
        "--reconcile-workers",
        type=int,
        default=env("RECONCILE_WORKERS", str(DEFAULT_WORKERS)),
        help=f"objects reconciled at once (default {DEFAULT_WORKERS})",
    )
    run.add_argument(
        "--aws-rate",
        action="append",
        default=None,
        metavar="FAMILY=RATE",
        help="requests per second for one AWS API family instead of its default, e.g. "
        "iam:write=5 (repeatable; families and defaults: README, Scale)",
    )


def _add_run_endpoint_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: metrics, health and logs."""
    # argparse converts string defaults with `type`, so a bad variable is a usage error too.
    run.add_argument(
        "--metrics-port",
        type=int,
        default=env("METRICS_PORT", "0"),
        help="serve Prometheus /metrics on this port (0: off)",
    )
    run.add_argument(
        "--health-port",
        type=int,
        default=env("HEALTH_PORT", "0"),
        help="serve the liveness probe /healthz on this port (0: off)",
    )
    run.add_argument(
        "--bind-address",
        default=env("BIND_ADDRESS", "127.0.0.1"),
        help="IP address the metrics and health endpoints listen on (0.0.0.0: every interface)",
    )
    run.add_argument("--log-format", default=env("LOG_FORMAT", "text"), choices=["text", "json"])
    run.add_argument("--verbose", action="store_true", default=env_flag("VERBOSE"))


def _add_run_leader_flags(run: argparse.ArgumentParser) -> None:
    """keyrotor run: leader election, when several replicas run."""
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=env_flag("LEADER_ELECT"),
        help="run as one of several replicas: only the holder of the Lease keyrotor-<cluster-name> "
        "acts (the Deployment and the Helm chart turn this on)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=env("LEADER_ELECTION_NAMESPACE"),
        help="namespace of the Lease (default: the pod's namespace, else default)",
    )
    run.add_argument(
        "--leader-election-id",
        default=env("LEADER_ELECTION_ID"),
        help="this replica's name in the Lease (default: the host name); a random suffix is added",
    )
    run.add_argument(
        "--leader-election-lease-duration",
        default=env("LEADER_ELECTION_LEASE_DURATION", "15s"),
        help="how long standbys wait after the leader's last renewal before taking over",
    )
    run.add_argument(
        "--leader-election-renew-deadline",
        default=env("LEADER_ELECTION_RENEW_DEADLINE", "10s"),
        help="the leader exits when it could not renew the Lease for this long",
    )
    run.add_argument(
        "--leader-election-retry-period",
        default=env("LEADER_ELECTION_RETRY_PERIOD", "2s"),
        help="time between renewals and between takeover attempts",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyrotor", description="Rotate AWS IAM access keys and mirror them into Kubernetes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator (each flag also as KEYROTOR_*)")
    for add in (
        _add_run_loop_flags,
        _add_run_event_flags,
        _add_run_shard_flags,
        _add_run_aws_flags,
        _add_run_scale_flags,
        _add_run_endpoint_flags,
        _add_run_leader_flags,
    ):
        add(run)
    commands.add_parser("demo", help="run the whole rotation loop on emulated AWS and Kubernetes")
    policy_command.add_parser(commands)
    audit_command.add_parser(commands)
    from keyrotor.ctl import add_parsers

    add_parsers(commands)
    return parser


def _push_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Push delivery's settings (keyrotor.event_push, keyrotor.k8s.endpoint_slices)."""
    return {
        "event_push_port": args.event_push_port,
        "event_push_url": args.event_push_url or None,
        "event_push_role_arn": args.event_push_role_arn or None,
        # The token only from the environment (a Secret): a flag would show in `ps` and the
        # pod's spec.
        "event_push_token": env("EVENT_PUSH_TOKEN") or "",
        "event_push_service": args.event_push_service or None,
        # The downward API's names (the pod's spec sets them), not KEYROTOR_* settings.
        "pod_ip": os.environ.get("POD_IP") or None,
        "pod_name": os.environ.get("POD_NAME") or None,
        "pod_namespace": os.environ.get("POD_NAMESPACE") or None,
    }


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = args.namespace if args.namespace is not None else env_list("NAMESPACE")
    namespaces = [part for value in given for part in value.replace(",", " ").split()]
    allow = args.allow if args.allow is not None else env_list("ALLOW")
    kms_keys = args.kms_key if args.kms_key is not None else env_list("KMS_KEY")
    aws_rates = args.aws_rate if args.aws_rate is not None else env_list("AWS_RATE")
    event_mode = bool(args.event_mode)
    default_interval = EVENT_MODE_SYNC_INTERVAL if event_mode else DEFAULT_SYNC_INTERVAL
    sync_interval = args.sync_interval or str(int(default_interval))
    return Settings(
        cluster_name=args.cluster_name,
        region=args.region or None,
        namespaces=tuple(namespaces),
        shard_name=args.shard or "",
        selector=args.selector or "",
        sync_interval=parse_interval_setting("--sync-interval", str(sync_interval)),
        event_mode=event_mode,
        event_queue_url=args.event_queue_url or None,
        event_delivery=args.event_delivery,
        **_push_settings(args),
        focus_interval=parse_interval_setting("--focus-interval", str(args.focus_interval)),
        stuck_after=parse_interval_setting("--stuck-after", str(args.stuck_after)),
        recheck_interval=parse_interval_setting("--recheck-interval", str(args.recheck_interval)),
        dead_key_check=parse_interval_setting(
            "--dead-key-check-interval", str(args.dead_key_check_interval)
        ),
        installation_recheck=parse_interval_setting(
            "--installation-recheck", str(args.installation_recheck)
        ),
        sync_workers=args.sync_workers,
        reconcile_workers=args.reconcile_workers,
        aws_rates=tuple(parse_rate(text) for text in aws_rates),
        lambda_role_arn=args.lambda_role_arn or None,
        allow=tuple(AllowRule.parse(rule) for rule in allow),
        kms_keys=tuple(kms_keys),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        log_format=args.log_format,
        leader_elect=bool(args.leader_elect),
        leader_election_namespace=args.leader_election_namespace or None,
        leader_election_id=args.leader_election_id or None,
        lease_duration=parse_interval_setting(
            "--leader-election-lease-duration", str(args.leader_election_lease_duration)
        ),
        renew_deadline=parse_interval_setting(
            "--leader-election-renew-deadline", str(args.leader_election_renew_deadline)
        ),
        retry_period=parse_interval_setting(
            "--leader-election-retry-period", str(args.leader_election_retry_period)
        ),
    )


SANDBOX_MISSING = (
    "keyrotor demo: the sandbox is not installed (it is not part of the operator's image); "
    "from a keyrotor checkout run `make demo`, or `pip install -e ./sandbox` then `keyrotor demo`"
)


def run_demo() -> int:
    """``keyrotor demo`` lives in the sandbox package, installed by ``make demo``/``make test``."""
    try:
        from keyrotor_sandbox.demo import main as demo_main
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("keyrotor_sandbox"):
            raise  # the sandbox is there but broken: show the real error
        print(SANDBOX_MISSING, file=sys.stderr)
        return 1
    return demo_main()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "policy":
        return policy_command.main(args)
    if args.command == "audit":
        return audit_command.main(args)
    if args.command in ("status", "rotate"):
        from keyrotor import ctl

        return ctl.main(args.command, args)
    if args.command == "demo":
        return run_demo()
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"keyrotor: {exc}", file=sys.stderr)
        return 2
    from keyrotor.operator_main import StartupError, run

    try:
        return run(settings, verbose=args.verbose)
    except StartupError as exc:
        print(f"keyrotor: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
