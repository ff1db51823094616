"""Operator configuration: read once at start-up into one frozen, typed object.

Every flag of ``keyrotor run`` can also be given as a ``KEYROTOR_*`` environment variable
(``--sync-interval`` is ``KEYROTOR_SYNC_INTERVAL``); a flag wins over the variable. Errors name
the offending flag or variable.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from keyrotor.model import parse_duration
from keyrotor.shards import SHARD_NAME_RE, LabelSelector, Shard

DEFAULT_SYNC_INTERVAL = 300.0
# In event mode, events announce rotations within seconds; the sweep is only the safety net.
EVENT_MODE_SYNC_INTERVAL = 1800.0
# Objects worked on at once, by the sync loop and by kopf's handlers: enough to overlap AWS's
# and the API server's latency; the rate limits, not the workers, keep AWS under its quotas.
DEFAULT_WORKERS = 8
MAX_WORKERS = 64
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
# Event delivery: EventBridge to an SQS queue keyrotor long-polls, or EventBridge calling the
# operator (an API destination) with a shared token.
EVENT_DELIVERIES = ("queue", "push")
PUSH_TOKEN_RE = re.compile(r"^[\x21-\x7e]{32,512}$")  # visible ASCII: an HTTP header value
SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1035 label
ROLE_ARN_RE = re.compile(r"^arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
KMS_KEY_ARN_RE = re.compile(r"^arn:[a-z-]+:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the flag or variable."""


@dataclass(frozen=True)
class AllowRule:
    """``--allow NAMESPACE:USER_GLOB``: objects in NAMESPACE may claim IAM users matching GLOB."""

    namespace: str
    user_glob: str

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        namespace, sep, user_glob = text.partition(":")
        if not sep or not namespace or not user_glob:
            raise SettingsError(
                f"--allow {text!r}: expected NAMESPACE:USER_GLOB, e.g. team-a:team-a-*"
            )
        if "[" in user_glob or "]" in user_glob:
            # The IAM policies name these users by ARN, and IAM knows only * and ?.
            raise SettingsError(f"--allow {text!r}: use * and ? in USER_GLOB, not [...]")
        return cls(namespace=namespace, user_glob=user_glob)

    def matches(self, namespace: str, iam_user: str) -> bool:
        return fnmatch.fnmatchcase(namespace, self.namespace) and fnmatch.fnmatchcase(
            iam_user, self.user_glob
        )


@dataclass(frozen=True)
class Settings:
    cluster_name: str = "default"
    region: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # Sharding (keyrotor.shards): this process serves the objects its selector matches, under
    # its own identity in claims. Empty: the one unsharded operator.
    shard_name: str = ""
    selector: str = ""
    sync_interval: float = DEFAULT_SYNC_INTERVAL  # seconds between ListSecrets sweeps
    focus_interval: float = 2.0  # seconds between DescribeSecret checks of objects in focus
    stuck_after: float = 900.0  # a pending rotation older than this is stuck (Lambda: 3 x 120s)
    # An object refused for what a person must fix (NotAuthorized, UserNotFound, Conflict,
    # AccessDenied) is checked again after this many seconds, so the fix takes effect by itself.
    recheck_interval: float = 120.0
    # A failed decision is tried again after retry_base seconds, doubling up to retry_cap.
    retry_base: float = 5.0
    retry_cap: float = 600.0
    # The shared role, Lambda and permission are checked again this often (and after a failure
    # that points at them), so a Lambda deleted out of band comes back by itself.
    installation_recheck: float = 900.0
    # Every mirrored key is looked up in IAM's credential report this often (O(1) calls).
    dead_key_check: float = 3600.0
    # Bounded concurrency: objects the sync loop works on at once (--sync-workers), and the
    # decisions kopf's handlers asked for at once (--reconcile-workers; keyrotor.decisions;
    # kopf's own handler threads, as many, run finalizers and Secret repairs).
    sync_workers: int = DEFAULT_WORKERS
    reconcile_workers: int = DEFAULT_WORKERS
    # --aws-rate FAMILY=RATE: requests per second of an AWS API family, instead of the default
    # (keyrotor.aws.rate_limits, where the families and their defaults are).
    aws_rates: tuple[tuple[str, float], ...] = ()
    lambda_role_arn: str | None = None
    # Event mode: Secrets Manager's rotation events (EventBridge -> SQS) say which secret to
    # look at; the queue keyrotor-<cluster>-events unless the user names one.
    event_mode: bool = False
    event_queue_url: str | None = None
    # Push delivery (keyrotor.event_push): EventBridge POSTs each event to event_push_url (the
    # user's Ingress), which reaches the listener on bind_address:event_push_port; EventBridge
    # sends event_push_token in a header and invokes the destination with event_push_role_arn.
    event_delivery: str = "queue"
    event_push_port: int = 0
    event_push_url: str | None = None
    event_push_role_arn: str | None = None
    # Never in a repr, log line, status or exception (it comes from a Kubernetes Secret).
    event_push_token: str = field(default="", repr=False, compare=False)
    # The push Service (--event-push-service, in the operator's namespace): the active replica
    # points its EndpointSlice at pod_ip (keyrotor.k8s.endpoint_slices). The pod's IP, name and
    # namespace come from the downward API (POD_IP, POD_NAME, POD_NAMESPACE).
    event_push_service: str | None = None
    pod_ip: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    allow: tuple[AllowRule, ...] = ()
    kms_keys: tuple[str, ...] = ()  # KMS key ARNs objects may use (spec.secretsManager.kmsKeyId)
    metrics_port: int = 0  # 0: no metrics endpoint
    # Where metrics and health listen: loopback unless told (the Deployment gives the pod's IP).
    bind_address: str = "127.0.0.1"
    health_port: int = 0  # 0: no liveness endpoint
    log_format: str = "text"
    # Leader election (several replicas, one active): off for a single `keyrotor run`, on in the
    # Deployment and the Helm chart. Times as controller-runtime's defaults.
    leader_elect: bool = False
    leader_election_namespace: str | None = None  # default: the pod's namespace, else "default"
    leader_election_id: str | None = None  # default: the host (pod) name; a random suffix is added
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.cluster_name):
            raise SettingsError(
                f"--cluster-name {self.cluster_name!r}: use 1-40 lowercase letters, digits and '-'"
            )
        if self.shard_name and not SHARD_NAME_RE.match(self.shard_name):
            raise SettingsError(
                f"--shard {self.shard_name!r}: use 1-30 lowercase letters, digits and '-'"
            )
        if self.selector:
            try:
                LabelSelector.parse(self.selector)
            except ValueError as exc:
                raise SettingsError(f"--selector {self.selector!r}: {exc}") from None
            if not self.shard_name:
                raise SettingsError(
                    "--selector: give the shard a name with --shard, so that its claims are its "
                    "own (shards never take each other's claims)"
                )
        if self.event_mode and len(self.cluster_name) + len(self.shard_name) > 46:
            raise SettingsError(
                f"--shard {self.shard_name!r}: with --cluster-name {self.cluster_name!r} too long "
                f"for event mode's rule name (64 characters): at most 46 between them"
            )
        if self.sync_interval < 10:
            raise SettingsError(f"--sync-interval {self.sync_interval:g}s: must be at least 10s")
        if self.event_queue_url and not self.event_mode:
            raise SettingsError("--event-queue-url: only used with --event-mode")
        self._check_event_push()
        if self.recheck_interval < 1:
            raise SettingsError(
                f"--recheck-interval {self.recheck_interval:g}s: must be at least 1s"
            )
        for flag, workers in (
            ("--sync-workers", self.sync_workers),
            ("--reconcile-workers", self.reconcile_workers),
        ):
            if not 1 <= workers <= MAX_WORKERS:
                raise SettingsError(f"{flag} {workers}: expected 1 to {MAX_WORKERS}")
        for key in self.kms_keys:
            if not KMS_KEY_ARN_RE.match(key):
                raise SettingsError(
                    f"--kms-key {key!r}: give the key's ARN "
                    f"(arn:<partition>:kms:<region>:<account>:key/<id>)"
                )
        try:
            ipaddress.ip_address(self.bind_address)
        except ValueError:
            raise SettingsError(
                f"--bind-address {self.bind_address!r}: expected an IP address, e.g. 127.0.0.1"
            ) from None
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"--log-format {self.log_format!r}: expected json or text")
        if not self.lease_duration > self.renew_deadline > self.retry_period * 1.2:
            raise SettingsError(
                f"--leader-election-lease-duration {self.lease_duration:g}s, "
                f"--leader-election-renew-deadline {self.renew_deadline:g}s and "
                f"--leader-election-retry-period {self.retry_period:g}s: each must be longer "
                f"than the next (the retry period by a fifth)"
            )

    @property
    def event_push(self) -> bool:
        return self.event_mode and self.event_delivery == "push"

    def _check_event_push(self) -> None:
        if self.event_delivery not in EVENT_DELIVERIES:
            raise SettingsError(f"--event-delivery {self.event_delivery!r}: expected queue or push")
        if self.event_delivery != "push":
            if self.event_push_service:
                raise SettingsError("--event-push-service: only used with --event-delivery push")
            return
        if not self.event_mode:
            raise SettingsError("--event-delivery push: only used with --event-mode")
        if self.event_queue_url:
            raise SettingsError("--event-queue-url: not used with --event-delivery push")
        if not 1 <= self.event_push_port <= 65535:
            raise SettingsError("--event-push-port: push delivery needs the listener's port")
        _check_push_url(self.event_push_url)
        if not self.event_push_role_arn or not ROLE_ARN_RE.match(self.event_push_role_arn):
            raise SettingsError(
                f"--event-push-role-arn {self.event_push_role_arn or ''!r}: push delivery needs "
                f"the ARN of the role EventBridge invokes the API destination with "
                f"(keyrotor policy --document event-push-role / event-push-trust)"
            )
        self._check_push_service()
        if not PUSH_TOKEN_RE.match(self.event_push_token):
            # Says what is wrong with the token, never any of it.
            raise SettingsError(
                "KEYROTOR_EVENT_PUSH_TOKEN: push delivery needs a token of 32 to 512 visible "
                "ASCII characters (no spaces), e.g. from `openssl rand -hex 32`"
            )

    def _check_push_service(self) -> None:
        service = self.event_push_service
        if not service:
            return
        if not SERVICE_NAME_RE.match(service):
            raise SettingsError(
                f"--event-push-service {service!r}: a Service name (1-63 lowercase letters, "
                f"digits and '-', starting with a letter)"
            )
        if not self.pod_ip:
            raise SettingsError(
                f"--event-push-service {service}: needs this pod's IP in POD_IP "
                f"(the downward API: fieldRef status.podIP)"
            )
        try:
            address = ipaddress.ip_address(self.pod_ip)
        except ValueError:
            raise SettingsError(f"POD_IP {self.pod_ip!r}: expected an IP address") from None
        if address.is_loopback or address.is_unspecified or address.is_link_local:
            raise SettingsError(
                f"POD_IP {self.pod_ip}: the API server takes no loopback, link-local or "
                f"unspecified address as an endpoint; give the pod's IP (status.podIP)"
            )

    # Names of what one installation (one cluster name) shares in the AWS account.
    @property
    def secret_prefix(self) -> str:
        return f"keyrotor/{self.cluster_name}/"

    @property
    def lambda_function_name(self) -> str:
        return f"keyrotor-{self.cluster_name}-rotation"

    @property
    def lambda_role_name(self) -> str:
        return f"keyrotor-{self.cluster_name}-rotation"

    def http_url(self, port: int, path: str) -> str:
        """A URL on the bind address (IPv6 in brackets)."""
        host = f"[{self.bind_address}]" if ":" in self.bind_address else self.bind_address
        return f"http://{host}:{port}{path}"

    @cached_property
    def shard(self) -> Shard:
        """The objects this process serves (everything it watches, unless sharded)."""
        selector = LabelSelector.parse(self.selector) if self.selector else None
        return Shard(name=self.shard_name, selector=selector, namespaces=self.namespaces)

    @property
    def lease_name(self) -> str:
        """The leader election Lease: one per installation (per shard), in the operator's
        namespace."""
        return self.shard.lease_name(self.cluster_name)

    def default_secret_name(self, namespace: str, name: str) -> str:
        return f"{self.secret_prefix}{namespace}/{name}"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _check_push_url(url: str | None) -> None:
    """EventBridge calls HTTPS endpoints only; plain HTTP is accepted for loopback (the sandbox)."""
    parts = urlsplit(url or "")
    loopback = parts.hostname in LOOPBACK_HOSTS or (parts.hostname or "").startswith("127.")
    if (
        not url
        or len(url) > 2048
        or not parts.hostname
        or parts.username
        or parts.password
        or not (parts.scheme == "https" or (parts.scheme == "http" and loopback))
    ):
        raise SettingsError(
            f"--event-push-url {url or ''!r}: push delivery needs the HTTPS URL at which "
            f"EventBridge reaches the listener (your Ingress), e.g. "
            f"https://keyrotor.example.com/events"
        )


def env(name: str, default: str | None = None) -> str | None:
    """A setting's environment variable, ``KEYROTOR_<name>`` (the flags' defaults)."""
    return os.environ.get(f"KEYROTOR_{name}", default)


def env_list(name: str) -> list[str]:
    """A list setting from the environment: comma or space separated."""
    return [part for part in (env(name) or "").replace(",", " ").split() if part]


def env_flag(name: str) -> bool:
    """An on/off setting from the environment: on only for 1, true or yes (any case)."""
    return (env(name) or "").strip().lower() in ("1", "true", "yes")


def parse_interval_setting(flag: str, text: str) -> float:
    """Seconds from ``300``, ``300s``, ``5m`` or ``1h``."""
    try:
        try:
            return float(text)
        except ValueError:
            pass
        return parse_duration(text, units="smhd").total_seconds()
    except ValueError as exc:
        raise SettingsError(f"{flag} {text!r}: {exc}") from None
