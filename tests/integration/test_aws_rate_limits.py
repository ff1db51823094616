"""Every request of the operator's AWS clients (``AwsClients.create``, as ``keyrotor run`` makes
them) takes its turn in the rate limiter before it reaches AWS (the emulator over HTTP), each
attempt of a retried call included.

The limiter runs on a frozen clock here, with a sleep that only records: a request's wait is then
exactly its place in the queue divided by the rate, whatever the machine's speed, and the test
sleeps for nothing. The real requests still go to the emulator, which counts them.
"""

from __future__ import annotations

import pytest

from keyrotor.aws.clients import AwsClients
from keyrotor.aws.rate_limits import RateLimiter
from keyrotor_sandbox.aws import AwsEmulator


@pytest.fixture
def frozen_limiter() -> tuple[RateLimiter, list[float]]:
    slept: list[float] = []
    limiter = RateLimiter(
        {"secretsmanager:list": 2, "iam:read": 1, "sts": 1},
        clock=lambda: 0.0,
        sleep=slept.append,
        record_starts=True,
    )
    return limiter, slept


def test_operator_clients_wait_their_turn_per_family(
    aws: AwsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    frozen_limiter: tuple[RateLimiter, list[float]],
) -> None:
    for name, value in aws.environ().items():
        monkeypatch.setenv(name, value)
    limiter, slept = frozen_limiter
    clients = AwsClients.create(aws.region, limiter=limiter)
    assert clients.limiter is limiter
    start = len(aws.calls)
    for _ in range(6):
        clients.secretsmanager.list_secrets(MaxResults=1)
    for _ in range(3):
        clients.iam.list_users(MaxItems=1)
    clients.sts.get_caller_identity()
    clients.lambda_.list_functions(MaxItems=1)

    made = aws.calls.pairs()[start:]
    stats = limiter.stats()
    assert made.count(("secretsmanager", "ListSecrets")) == stats["secretsmanager:list"].requests
    assert made.count(("iam", "ListUsers")) == stats["iam:read"].requests == 3
    assert stats["sts"].requests == 1
    assert stats["lambda:other:ListFunctions"].requests == 1
    # 2/s with a burst of 2: the first two at once, then one every half second.
    assert stats["secretsmanager:list"].starts == [0, 0, 0.5, 1.0, 1.5, 2.0]
    # 1/s with a burst of 1: one at once, then one a second. Each wait was slept, not failed.
    assert stats["iam:read"].starts == [0, 1.0, 2.0]
    assert slept == [0.5, 1.0, 1.5, 2.0, 1.0, 2.0]


def test_each_attempt_of_a_retried_call_takes_a_turn(
    aws: AwsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    frozen_limiter: tuple[RateLimiter, list[float]],
) -> None:
    """AWS counts every attempt against its quota: so does the limiter."""
    for name, value in aws.environ().items():
        monkeypatch.setenv(name, value)
    limiter, _slept = frozen_limiter
    clients = AwsClients.create(aws.region, limiter=limiter)
    aws.faults.fail("ListSecrets", error="Throttling", times=2, service="secretsmanager")
    clients.secretsmanager.list_secrets(MaxResults=1)  # botocore retries twice, then succeeds
    assert len(aws.faults.fired) == 2
    assert limiter.stats()["secretsmanager:list"].requests == 3
