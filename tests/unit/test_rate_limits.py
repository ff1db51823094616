"""The client-side rate limit per AWS API family (keyrotor.aws.rate_limits), on a fake clock:
no test sleeps or measures time."""

from __future__ import annotations

import random
import threading

import pytest

from keyrotor import metrics
from keyrotor.aws import policies
from keyrotor.aws.rate_limits import (
    FAMILIES,
    FAMILY_NAMES,
    RateLimiter,
    TokenBucket,
    family_for,
    parse_rate,
)
from keyrotor.settings import SettingsError


class FakeClock:
    """A clock that moves only when someone sleeps on it (or the test moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def holds_the_bucket_bound(starts: list[float], rate: float, burst: float) -> bool:
    """A token bucket's promise: in any stretch of time T, at most burst + rate*T requests go."""
    starts = sorted(starts)
    return all(
        j - i + 1 <= burst + rate * (starts[j] - starts[i]) + 1e-9
        for i in range(len(starts))
        for j in range(i, len(starts))
    )


def test_a_full_bucket_lets_a_burst_through_then_one_per_interval() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    waits = [bucket.reserve()[1] for _ in range(5)]
    assert waits == [0, 0, 0.5, 1.0, 1.5]  # served in order, each 1/rate after the one before


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert [bucket.reserve()[1] for _ in range(2)] == [0, 0]
    clock.advance(0.5)  # one token back
    assert bucket.reserve()[1] == 0
    assert bucket.reserve()[1] == 0.5
    clock.advance(3600)  # idle for long: never more than the burst saved up
    assert [bucket.reserve()[1] for _ in range(3)] == [0, 0, 0.5]


def test_random_arrivals_never_exceed_the_rate_and_never_wait_needlessly() -> None:
    rng = random.Random(7)
    clock = FakeClock()
    limiter = RateLimiter({"iam:write": 4}, clock=clock, sleep=clock.sleep, record_starts=True)
    arrivals, waits = [], []
    for _ in range(300):
        clock.advance(rng.expovariate(6.0))  # arrivals faster than the rate, on average
        arrivals.append(clock())
        waits.append(limiter.acquire("iam", "TagUser"))
    starts = limiter.stats()["iam:write"].starts
    assert holds_the_bucket_bound(starts, rate=4, burst=4)
    assert all(start >= arrival for start, arrival in zip(starts, arrivals, strict=True))
    assert 0 < sum(1 for w in waits if w == 0) < len(waits)  # some waited, some did not


def test_acquire_blocks_by_sleeping_and_counts_the_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"secretsmanager:rotate": 1}, clock=clock, sleep=clock.sleep)
    before = metrics.AWS_RATE_LIMIT_WAIT_SECONDS.labels(family="secretsmanager:rotate")._value.get()
    assert limiter.acquire("secretsmanager", "RotateSecret") == 0
    assert limiter.acquire("secretsmanager", "CancelRotateSecret") == 1.0  # one quota for both
    assert clock.slept == [1.0]
    stats = limiter.stats()["secretsmanager:rotate"]
    assert (stats.requests, stats.waited, stats.wait_seconds) == (2, 1, 1.0)
    after = metrics.AWS_RATE_LIMIT_WAIT_SECONDS.labels(family="secretsmanager:rotate")._value.get()
    assert after - before == 1.0


def test_threads_share_one_bucket_and_are_spaced_whatever_their_order() -> None:
    clock = FakeClock()  # frozen: nobody's sleep moves it here
    limiter = RateLimiter({"iam:read": 5}, clock=clock, sleep=lambda _s: None, record_starts=True)
    barrier = threading.Barrier(20)

    def call() -> None:
        barrier.wait()
        limiter.acquire("iam", "GetUser")

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts = sorted(limiter.stats()["iam:read"].starts)
    expected = [1000.0] * 5 + [1000.0 + k / 5 for k in range(1, 16)]
    assert starts == pytest.approx(expected)


@pytest.mark.parametrize(
    ("service", "operation", "family"),
    [
        ("secretsmanager", "DescribeSecret", "secretsmanager:read"),
        ("secretsmanager", "GetSecretValue", "secretsmanager:read"),
        ("secretsmanager", "ListSecrets", "secretsmanager:list"),
        ("secretsmanager", "CreateSecret", "secretsmanager:create"),
        ("secretsmanager", "UpdateSecretVersionStage", "secretsmanager:write"),
        ("secretsmanager", "ListSecretVersionIds", "secretsmanager:other"),
        ("iam", "GetUser", "iam:read"),
        ("iam", "ListAccessKeys", "iam:read"),
        ("iam", "TagUser", "iam:write"),
        ("iam", "GenerateCredentialReport", "iam:write"),
        ("lambda", "GetFunction", "lambda:GetFunction"),
        ("lambda", "UpdateFunctionCode", "lambda:other"),
        ("sts", "GetCallerIdentity", "sts"),
        ("events", "PutRule", "events"),
        ("sqs", "ReceiveMessage", None),
    ],
)
def test_operations_belong_to_their_quota_family(
    service: str, operation: str, family: str | None
) -> None:
    found = family_for(service, operation)
    assert (found.name if found else None) == family


def test_per_operation_families_give_each_operation_its_own_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"lambda:other": 1}, clock=clock, sleep=clock.sleep)
    assert limiter.acquire("lambda", "CreateFunction") == 0
    assert limiter.acquire("lambda", "AddPermission") == 0  # another API, another quota
    assert limiter.acquire("lambda", "CreateFunction") == 1.0
    assert set(limiter.stats()) == {"lambda:other:CreateFunction", "lambda:other:AddPermission"}


def test_every_action_the_operator_may_call_has_a_family_unless_sqs() -> None:
    """The operator's IAM policy lists every AWS action it calls, in every mode."""
    actions: set[str] = set()
    for params in (
        policies.PolicyParams(cluster_name="c", region="us-east-1"),
        policies.PolicyParams(cluster_name="c", region="us-east-1", event_mode=True),
    ):
        for statement in policies.documents(params)[policies.OPERATOR]["Statement"]:
            listed = statement["Action"]
            actions.update([listed] if isinstance(listed, str) else listed)
    assert actions
    prefixes = {"secretsmanager", "iam", "lambda", "sts", "events", "sqs", "kms"}
    for action in sorted(actions):
        prefix, operation = action.split(":")
        assert prefix in prefixes, action
        if prefix in ("sqs", "kms") or operation == "PassRole":  # not called (or not limited)
            continue
        assert family_for(prefix, operation) is not None, action


def test_defaults_stay_at_or_under_the_documented_quotas() -> None:
    documented = {  # AWS Secrets Manager quotas; Lambda quotas (requests per second)
        "secretsmanager:read": 10_000,
        "secretsmanager:list": 100,
        "secretsmanager:create": 50,
        "secretsmanager:rotate": 50,
        "secretsmanager:write": 50,
        "secretsmanager:tag": 50,
        "lambda:GetFunction": 100,
        "lambda:GetPolicy": 15,
        "lambda:other": 15,
    }
    rates = {f.name: f.rate for f in FAMILIES}
    assert all(rates[name] <= quota for name, quota in documented.items())
    assert rates["iam:read"] <= 20 and rates["iam:write"] <= 10  # undocumented: conservative


def test_rates_are_configured_per_family() -> None:
    assert parse_rate("iam:write=5") == ("iam:write", 5.0)
    assert parse_rate("secretsmanager:read=2500.5") == ("secretsmanager:read", 2500.5)
    for bad in ("iam=5", "iam:write", "iam:write=0", "iam:write=-1", "iam:write=fast"):
        with pytest.raises(SettingsError, match="--aws-rate"):
            parse_rate(bad)
    assert "iam:write" in FAMILY_NAMES
