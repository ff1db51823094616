"""A client-side rate limit per AWS API family: the operator stays under AWS's request quotas by
waiting its turn, not by being throttled.

Every request of the operator's boto3 clients takes a token from its family's bucket just before
botocore signs it (the ``before-sign`` event). That is once per attempt, retries included, as
AWS counts them; and a wait there never ages a signature (SigV4 signatures expire). A request
that finds its bucket empty sleeps until its turn (first come, first served) and then goes on:
nothing fails. botocore's standard retry mode still retries the throttling that happens anyway
(other clients share the account's quotas).

Default rates, in requests per second (``FAMILIES``):
- Secrets Manager: AWS's documented quotas per account and Region ("AWS Secrets Manager
  quotas"): DescribeSecret and GetSecretValue combined 10,000; ListSecrets 100;
  BatchGetSecretValue 100; 50 for every other quota (CreateSecret, DeleteSecret, RestoreSecret,
  RotateSecret with CancelRotateSecret, PutSecretValue with UpdateSecret and
  UpdateSecretVersionStage, TagResource with UntagResource, the resource policy calls,
  ListSecretVersionIds, GetRandomPassword).
- IAM: AWS documents no per-API request quota for IAM (its support says each API has token
  buckets of its own, undisclosed, shared by the whole account in every Region). The defaults
  are conservative guesses: 20 for reads (Get*, List*), 10 for everything else (tags, keys,
  roles, the credential report). Raise them with ``--aws-rate`` where AWS confirms more.
- Lambda: documented, GetFunction 100, GetPolicy 15, and 15 for each other control-plane API.
- STS 20 and EventBridge 10: not documented per API here; the operator calls them once at
  start-up and a few times per ``--installation-recheck``.
- SQS: no limit (standard queues take a nearly unlimited number of calls; the operator
  long-polls one queue).

Several operator processes (shards) in one account share its quotas: give each a share with
``--aws-rate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keyrotor import metrics
from keyrotor.settings import SettingsError


@dataclass(frozen=True)
class Family:
    """Operations of one service that share one AWS quota."""

    name: str  # what --aws-rate names, e.g. "iam:write"
    service: str  # botocore's service name: "secretsmanager", "iam", ...
    rate: float  # requests per second (the default)
    operations: frozenset[str] = frozenset()  # empty: the service's other operations
    prefixes: tuple[str, ...] = ()  # operations whose names start so (IAM's reads)
    per_operation: bool = False  # one bucket per operation, each at this rate

    def matches(self, operation: str) -> bool:
        return operation in self.operations or any(operation.startswith(p) for p in self.prefixes)

    @property
    def catch_all(self) -> bool:
        return not self.operations and not self.prefixes


def _sm(name: str, rate: float, *operations: str) -> Family:
    return Family(f"secretsmanager:{name}", "secretsmanager", rate, frozenset(operations))


FAMILIES: tuple[Family, ...] = (
    _sm("read", 10_000, "DescribeSecret", "GetSecretValue"),
    _sm("list", 100, "ListSecrets"),
    _sm("batch", 100, "BatchGetSecretValue"),
    _sm("create", 50, "CreateSecret"),
    _sm("delete", 50, "DeleteSecret"),
    _sm("restore", 50, "RestoreSecret"),
    _sm("rotate", 50, "RotateSecret", "CancelRotateSecret"),
    _sm(
        "write",
        50,
        "PutSecretValue",
        "UpdateSecret",
        "UpdateSecretVersionStage",
        "RemoveRegionsFromReplication",
        "ReplicateSecretToRegions",
        "StopReplicationToReplica",
    ),
    _sm("tag", 50, "TagResource", "UntagResource"),
    _sm(
        "policy",
        50,
        "DeleteResourcePolicy",
        "GetResourcePolicy",
        "PutResourcePolicy",
        "ValidateResourcePolicy",
    ),
    Family("secretsmanager:other", "secretsmanager", 50, per_operation=True),
    Family("iam:read", "iam", 20, prefixes=("Get", "List")),
    Family("iam:write", "iam", 10),
    Family("lambda:GetFunction", "lambda", 100, frozenset({"GetFunction"})),
    Family("lambda:GetPolicy", "lambda", 15, frozenset({"GetPolicy"})),
    Family("lambda:other", "lambda", 15, per_operation=True),
    Family("sts", "sts", 20),
    Family("events", "events", 10),
)
FAMILY_NAMES = frozenset(f.name for f in FAMILIES)


def family_for(
    service: str, operation: str, families: Iterable[Family] = FAMILIES
) -> Family | None:
    """The family of one operation: the first that names it, else its service's catch-all;
    None for a service without a limit (SQS)."""
    fallback = None
    for family in families:
        if family.service != service:
            continue
        if family.matches(operation):
            return family
        if family.catch_all and fallback is None:
            fallback = family
    return fallback


def parse_rate(text: str) -> tuple[str, float]:
    """``--aws-rate FAMILY=RATE``, e.g. ``iam:write=5``."""
    name, sep, value = text.partition("=")
    try:
        rate = float(value) if sep else 0.0
    except ValueError:
        rate = 0.0
    if name not in FAMILY_NAMES or not rate > 0:
        raise SettingsError(
            f"--aws-rate {text!r}: expected FAMILY=REQUESTS_PER_SECOND (more than 0), FAMILY one "
            f"of {', '.join(sorted(FAMILY_NAMES))}"
        )
    return name, rate


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. A taker that finds none reserves the
    next one (the count goes below zero), so waiters are served in order, each ``1/rate``
    after the one before, and nobody polls."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self) -> tuple[float, float]:
        """Take one token; return when it may be used (the clock's time) and the seconds to wait
        until then (0: at once)."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return now + wait, wait


@dataclass
class FamilyStats:
    """One family's requests as the limiter saw them (the limiter's own clock)."""

    requests: int = 0
    waited: int = 0  # requests that had to wait
    wait_seconds: float = 0.0
    starts: list[float] = field(default_factory=list)  # when each request may go (if recorded)


class RateLimiter:
    """The buckets of every family, shared by all the clients it is installed on and by every
    thread that uses them. ``record_starts`` keeps each request's start time (tests)."""

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        families: Iterable[Family] = FAMILIES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        record_starts: bool = False,
    ) -> None:
        self.families = tuple(families)
        self.rates = {f.name: f.rate for f in self.families} | dict(rates or {})
        self._clock = clock
        self._sleep = sleep
        self._record_starts = record_starts
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._stats: dict[str, FamilyStats] = {}

    def _bucket(self, family: Family, operation: str) -> tuple[str, TokenBucket]:
        key = f"{family.name}:{operation}" if family.per_operation else family.name
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                rate = self.rates[family.name]
                # A second's worth of burst, as AWS's own buckets allow.
                bucket = self._buckets[key] = TokenBucket(rate, max(1.0, rate), self._clock)
            return key, bucket

    def acquire(self, service: str, operation: str) -> float:
        """Wait (block) until this request may go; return the seconds waited."""
        family = family_for(service, operation, self.families)
        if family is None:
            return 0.0
        key, bucket = self._bucket(family, operation)
        start, wait = bucket.reserve()
        with self._lock:
            stats = self._stats.setdefault(key, FamilyStats())
            stats.requests += 1
            if self._record_starts:
                stats.starts.append(start)
            if wait > 0:
                stats.waited += 1
                stats.wait_seconds += wait
        if wait > 0:
            metrics.AWS_RATE_LIMIT_WAITS.labels(family=family.name).inc()
            metrics.AWS_RATE_LIMIT_WAIT_SECONDS.labels(family=family.name).inc(wait)
            self._sleep(wait)
        return wait

    def install(self, client: Any) -> None:
        """Every request of this boto3 client takes its turn, just before it is signed."""
        service = str(client.meta.service_model.service_name)

        def before_sign(operation_name: str, **_: Any) -> None:
            self.acquire(service, operation_name)

        client.meta.events.register("before-sign", before_sign)

    def stats(self) -> dict[str, FamilyStats]:
        """Per bucket (a family, or family:Operation for per-operation families)."""
        with self._lock:
            return {
                key: FamilyStats(s.requests, s.waited, s.wait_seconds, list(s.starts))
                for key, s in self._stats.items()
            }
