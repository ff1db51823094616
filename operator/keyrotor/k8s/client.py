"""Kubernetes API clients, made once at start-up from the kubeconfig or the in-cluster config."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import aiohttp
import kopf
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from keyrotor import errors


@dataclass(frozen=True)
class KubeApis:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    apps: client.AppsV1Api

    @classmethod
    def create(cls, connections: int = 0) -> KubeApis:
        """``connections``: the HTTP connection pool, one per thread that may call at once (the
        client's default is five per CPU)."""
        try:
            config.load_incluster_config()
        except ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(
            connections, configuration.connection_pool_maxsize
        )
        api = client.ApiClient(configuration)
        return cls(
            core=client.CoreV1Api(api),
            custom=client.CustomObjectsApi(api),
            apps=client.AppsV1Api(api),
        )


# Connections that kopf's side of the operator (its watches, its patches and Events) keeps to
# the API server at most. kopf's own session has no limit (aiohttp's limit=0): a burst of N
# objects opened a TLS connection per concurrent request, N of them, each with asyncio's 256 KiB
# read buffer and OpenSSL's state (about 0.3 MiB apiece), memory the allocator kept after they
# closed: that was most of the operator's growth per object. Two are held by the watches (the
# objects and the mirrored Secrets); requests beyond the limit wait for a free connection.
KOPF_CONNECTIONS = 16


def kopf_session(info: kopf.ConnectionInfo, limit: int = KOPF_CONNECTIONS) -> kopf.AiohttpSession:
    """kopf's credentials as one aiohttp session with at most ``limit`` connections; otherwise
    as kopf builds its own (the same TLS context, headers, proxy and expiry). Made in the
    running event loop (a login handler), where kopf uses and closes it."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, client.ApiException) and exc.status in codes


def translate(exc: BaseException) -> errors.KeyrotorError | None:
    """The taxonomy's type for a Kubernetes API error, with the server's reason and message."""
    if isinstance(exc, errors.KeyrotorError):
        return exc
    if not isinstance(exc, client.ApiException):
        return None
    message = f"{exc.status} {exc.reason}"
    try:
        detail = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        detail = None
    if detail:
        message = f"{message}: {detail}"
    kind: type[errors.KeyrotorError] = errors.KeyrotorError
    if exc.status == 404:
        kind = errors.NotFoundError
    elif exc.status == 409:
        kind = errors.ConflictError
    elif exc.status in (401, 403):
        kind = errors.AccessDeniedError
    elif exc.status == 429:
        kind = errors.ThrottledError
    elif exc.status in (400, 422):
        kind = errors.InvalidError
    elif exc.status is not None and exc.status >= 500:
        kind = errors.NotReadyError
    return kind(message, service="kubernetes")


P = ParamSpec("P")
R = TypeVar("R")


def kube_errors(function: Callable[P, R]) -> Callable[P, R]:
    """An adapter's Kubernetes API errors leave it as the taxonomy's types (keyrotor.errors)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except client.ApiException as exc:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc

    return wrapper
