"""Start the operator: settings -> clients -> kopf, with the handlers registered."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import kopf

from keyrotor import metrics
from keyrotor.aws.clients import AwsClients, error_message
from keyrotor.aws.rate_limits import RateLimiter
from keyrotor.errors import KeyrotorError
from keyrotor.installation import Installation, Target
from keyrotor.k8s import endpoint_slices, objects
from keyrotor.k8s.client import KubeApis
from keyrotor.k8s.events import post_event
from keyrotor.k8s.leader_election import LeaderElector, default_identity, default_namespace
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.tenancy import installation_id

if TYPE_CHECKING:
    from keyrotor.event_push import PushListener


class StartupError(RuntimeError):
    """The operator cannot start; the message is one readable line."""


def _post_and_count_event(
    kube: KubeApis,
    instance: str,
    body: dict[str, Any],
    *,
    event_type: str,
    reason: str,
    message: str,
) -> None:
    metrics.count_event(reason)
    post_event(kube, body, event_type=event_type, reason=reason, message=message, instance=instance)


def make_runtime(settings: Settings) -> Runtime:
    # Threads that may call AWS or Kubernetes at once: the sync loop's workers, the decision
    # threads and kopf's handler threads (finalizers, Secret repairs), the loop itself and the
    # event consumer; each client pools that many connections.
    threads = settings.sync_workers + 2 * settings.reconcile_workers + 2
    try:
        aws = AwsClients.create(
            settings.region, limiter=RateLimiter(dict(settings.aws_rates)), connections=threads
        )
        for client in aws.all():
            metrics.count_aws_calls(client)
        identity = aws.sts.get_caller_identity()
    except Exception as exc:
        raise StartupError(f"cannot reach AWS: {error_message(exc)}") from None
    arn = str(identity["Arn"])
    try:
        kube = KubeApis.create(connections=threads)
        cluster_uid = objects.kube_system_uid(kube)
    except Exception as exc:
        raise StartupError(f"cannot reach Kubernetes: {exc}") from None
    target = Target(account_id=str(identity["Account"]), partition=arn.split(":")[1])
    return Runtime(
        settings=settings,
        aws=aws,
        kube=kube,
        installation=Installation(settings, aws, target),
        emit=partial(_post_and_count_event, kube, settings.shard.reporting_instance),
        installation_id=installation_id(settings.cluster_name, cluster_uid),
    )


def _exit_on_lost_lease() -> None:
    """The Lease is lost: another replica may be taking over. Stop at once, as controller-runtime
    does, rather than risk two operators acting; the pod restarts as a standby."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(1)


class _StandbyHealth:
    """``/healthz`` while this replica waits for the Lease (kopf's liveness endpoint starts only
    with the operator): a standby is alive, and must not be restarted by its liveness probe."""

    def __init__(self, address: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = 200 if self.path.split("?")[0] == "/healthz" else 404
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"standby\n" if code == 200 else b"not found\n")

            def log_message(self, *_: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        self.server = Server((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def elect_leader(settings: Settings) -> LeaderElector:
    """Block until this replica holds the installation's Lease; then keep renewing it."""
    from kubernetes import client

    elector = LeaderElector(
        client.ApiClient(),  # the configuration make_runtime loaded (kubeconfig or in-cluster)
        namespace=settings.leader_election_namespace or default_namespace(),
        name=settings.lease_name,
        identity=default_identity(settings.leader_election_id),
        lease_duration=settings.lease_duration,
        renew_deadline=settings.renew_deadline,
        retry_period=settings.retry_period,
    )
    health = (
        _StandbyHealth(settings.bind_address, settings.health_port)
        if settings.health_port
        else None
    )
    try:
        elector.acquire()
    finally:
        if health is not None:
            health.close()
    elector.start_renewing(_exit_on_lost_lease)
    return elector


def start_push_listener(settings: Settings) -> PushListener | None:
    """Push delivery listens from the start, like metrics: a standby answers 503 (EventBridge
    retries) until it is the active replica."""
    if not settings.event_push:
        return None
    from keyrotor.event_push import PushListener

    try:
        return PushListener(settings).start()
    except OSError as exc:
        raise StartupError(
            f"--event-push-port {settings.event_push_port}: cannot listen: {exc.strerror}"
        ) from None


def push_endpoint(settings: Settings, runtime: Runtime) -> endpoint_slices.PushEndpoint | None:
    """With --event-push-service: the slice this replica will own once active, checked now (a
    read) so that a Service name taken by something else stops every replica at start."""
    if not settings.event_push_service or not settings.pod_ip:
        return None
    endpoint = endpoint_slices.PushEndpoint(
        namespace=settings.pod_namespace or default_namespace(),
        service=settings.event_push_service,
        ip=settings.pod_ip,
        port=settings.event_push_port,
        pod_name=settings.pod_name,
    )
    try:
        slices = endpoint_slices.EndpointSlices(runtime.kube.core.api_client)
        endpoint_slices.check_not_foreign(slices, endpoint)
    except KeyrotorError as exc:
        raise StartupError(f"--event-push-service: {exc}") from None
    return endpoint


def keep_push_endpoint(runtime: Runtime, endpoint: endpoint_slices.PushEndpoint) -> threading.Event:
    """The active replica points the push Service at itself, and keeps it so."""
    stop = threading.Event()
    slices = endpoint_slices.EndpointSlices(runtime.kube.core.api_client)
    threading.Thread(
        target=endpoint_slices.keep_slice,
        args=(slices, endpoint, stop),
        name="keyrotor-push-endpoint",
        daemon=True,
    ).start()
    return stop


def run(settings: Settings, *, verbose: bool = False) -> int:
    import keyrotor.handlers
    import keyrotor.metrics_watch  # noqa: F401  (feeds the scrape-time metrics)

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    # boto3 and urllib3 logs can carry request details: keep them quiet.
    for noisy in ("botocore", "boto3", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.bind_address)
    push_listener = start_push_listener(settings)
    runtime = make_runtime(settings)  # fail fast, before kopf starts, with one readable line
    endpoint = push_endpoint(settings, runtime)
    metrics.LEADER.set(0)
    metrics.SHARD_INFO.labels(shard=settings.shard_name).set(1)
    # Several replicas: only the Lease holder starts the operator. kopf's own peering is not used
    # (standalone): it freezes every operator of equal priority (see k8s/leader_election.py).
    elector = elect_leader(settings) if settings.leader_elect else None
    metrics.LEADER.set(1)
    # The push Service now leads here (a standby is never in it); the listener answers 503 until
    # kopf's start-up handler attached the operator, and EventBridge retries meanwhile.
    stop_endpoint = keep_push_endpoint(runtime, endpoint) if endpoint is not None else None
    memo = kopf.Memo(
        make_runtime=partial(lambda rt: rt, runtime),
        shard=settings.shard,
        push_listener=push_listener,
    )
    if settings.shard.name or settings.shard.selector is not None:
        logging.getLogger(__name__).info("serving %s", settings.shard.describe())
    try:
        kopf.run(
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            memo=memo,
            liveness_endpoint=(
                settings.http_url(settings.health_port, "/healthz")
                if settings.health_port
                else None
            ),
        )
    finally:
        if stop_endpoint is not None:
            stop_endpoint.set()
        if elector is not None:
            elector.release()  # kopf has stopped: a standby may take over at once
    return 0
