"""Kubernetes API clients, made once at start-up from the kubeconfig or the in-cluster config."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


@dataclass(frozen=True)
class KubeApis:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    apps: client.AppsV1Api

    @classmethod
    def create(cls) -> KubeApis:
        try:
            config.load_incluster_config()
        except ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
        return cls(
            core=client.CoreV1Api(api),
            custom=client.CustomObjectsApi(api),
            apps=client.AppsV1Api(api),
        )


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, client.ApiException) and exc.status in codes
