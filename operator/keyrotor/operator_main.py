"""Start the operator: settings -> clients -> kopf, with the handlers registered."""

from __future__ import annotations

import logging
from functools import partial

import kopf

from keyrotor import metrics
from keyrotor.aws.clients import AwsClients, error_message
from keyrotor.k8s.client import KubeApis
from keyrotor.k8s.events import post_event
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings


class StartupError(RuntimeError):
    """The operator cannot start; the message is one readable line."""


def make_runtime(settings: Settings) -> Runtime:
    try:
        aws = AwsClients.create(settings.region)
        for client in (aws.iam, aws.sts, aws.secretsmanager, aws.lambda_):
            metrics.count_aws_calls(client)
        identity = aws.sts.get_caller_identity()
    except Exception as exc:
        raise StartupError(f"cannot reach AWS: {error_message(exc)}") from None
    arn = str(identity["Arn"])
    try:
        kube = KubeApis.create()
    except Exception as exc:
        raise StartupError(f"cannot load a Kubernetes configuration: {exc}") from None
    return Runtime(
        settings=settings,
        aws=aws,
        kube=kube,
        account_id=str(identity["Account"]),
        partition=arn.split(":")[1],
        emit=partial(post_event, kube),
    )


def run(settings: Settings, *, verbose: bool = False) -> int:
    import keyrotor.handlers  # noqa: F401  (registers the handlers)

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
    runtime = make_runtime(settings)  # fail fast, before kopf starts, with one readable line
    memo = kopf.Memo(make_runtime=partial(lambda rt: rt, runtime))
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        memo=memo,
        liveness_endpoint=(
            settings.http_url(settings.health_port, "/healthz") if settings.health_port else None
        ),
    )
    return 0
