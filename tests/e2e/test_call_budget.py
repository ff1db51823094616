"""Fewer calls, once (issue 10): what bringing objects up costs in AWS calls and reconciles.

Counted with the operator's own metrics (``keyrotor_aws_api_calls_total``,
``keyrotor_reconciles_total``), which count its calls and decisions and nothing else. Upper
bounds on counts, no time limits: the only time used is how long each rotation took in the
emulator, to bound how many DescribeSecret looks a wait makes before it is over
(``mirroring.focus_look_due``).
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyrotor.mirroring import focus_look_due
from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import FAST_ARGS, Harness, free_port, running

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

FOCUS_INTERVAL = float(FAST_ARGS[FAST_ARGS.index("--focus-interval") + 1])
# One object from apply to Ready, besides the looks that wait for its first key: the user read
# (authorization, claim), the claim written and read back, the secret looked up (absent),
# created and rotated (no DescribeSecret: our own writes say what exists), then, when the first
# key is there, the user read again before mirroring and the key read once (its CreateDate
# rides beside it in the value: no ListAccessKeys).
BUDGET = {
    "iam:GetUser": 3,
    "iam:TagUser": 1,
    # Before it is created, and the look that sees the first key; plus the looks the wait made
    # before the rotation was over (at most those of mirroring.focus_look_due's schedule).
    "secretsmanager:DescribeSecret": 2,
    "secretsmanager:CreateSecret": 1,
    "secretsmanager:RotateSecret": 1,
    "secretsmanager:GetSecretValue": 1,
}
MIRRORED_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "credentials"}
# The operator's start (who am I) and the installation's role, function and permission: once
# per operator, not per object.
INSTALLATION = {
    "sts:GetCallerIdentity",
    "iam:GetRole",
    "iam:CreateRole",
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "lambda:GetFunction",
    "lambda:CreateFunction",
    "lambda:GetPolicy",
    "lambda:AddPermission",
}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    metrics_port: int,
) -> Iterator[Harness]:
    # No sweep while objects come up (the first comes 300 s after start): every call counted
    # is one of bringing them up.
    harness = Harness(
        aws_emulator,
        operator_rbac,
        tmp_path_factory.mktemp("operator"),
        extra_args=("--metrics-port", str(metrics_port), "--sync-interval", "300"),
    )
    with running(harness):
        yield harness


def _scrape(port: int) -> tuple[Counter[str], Counter[str]]:
    """The operator's AWS calls by service:operation, and its reconciles by trigger."""
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    calls: Counter[str] = Counter()
    reconciles: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keyrotor_aws_api_calls_total":
                labels = sample.labels
                calls[f"{labels['service']}:{labels['operation']}"] += int(sample.value)
            elif sample.name == "keyrotor_reconciles_total":
                reconciles[sample.labels["trigger"]] += int(sample.value)
    return calls, reconciles


def _early_looks(rotation: float) -> int:
    """The looks a wait makes before a rotation that took ``rotation`` seconds is over, at most
    (the operator's first look comes no sooner than the focus interval; learnt later, fewer)."""
    start, looks = datetime(2026, 1, 1, tzinfo=UTC), 0
    while focus_look_due(start, looks, start + timedelta(seconds=rotation), FOCUS_INTERVAL):
        looks += 1
    return looks


def _rotation_seconds(keyrotor: Harness, ns: str, name: str) -> float:
    """How long the object's first rotation took in the emulator (RotateSecret to its end)."""
    arn = keyrotor.get(ns, name)["status"]["secretArn"]
    (rotation,) = keyrotor.aws.rotations_of(arn)
    assert rotation.finished is not None and rotation.succeeded
    return (rotation.finished - rotation.started).total_seconds()


def _bring_up(
    keyrotor: Harness, port: int, count: int, ns: str
) -> tuple[Counter[str], Counter[str]]:
    users = [keyrotor.iam_user(namespaces=ns) for _ in range(count)]
    calls_before, reconciles_before = _scrape(port)
    for user in users:
        keyrotor.create(ns, user, {"iamUser": user})
    for user in users:
        keyrotor.wait_ready(ns, user, timeout=120)
    keyrotor.aws.wait_for_rotations(timeout=60)
    early_looks = sum(_early_looks(_rotation_seconds(keyrotor, ns, user)) for user in users)
    time.sleep(2 * FOCUS_INTERVAL)  # what Ready still brings (focus ended, Secret events)
    calls_after, reconciles_after = _scrape(port)
    calls = calls_after - calls_before
    per_object = {op: n for op, n in calls.items() if op not in INSTALLATION}
    assert set(per_object) <= set(BUDGET), f"calls outside the budget: {per_object}"
    for op, most in BUDGET.items():
        allowed = most * count
        if op == "secretsmanager:DescribeSecret":
            # One more for the whole run: a look between finishSecret and the emulator's
            # LastRotatedDate hands its answer over to no decision (reconcile: handed_over),
            # which describes the secret again.
            allowed += early_looks + 1
        assert calls[op] <= allowed, f"{op}: {calls[op]} > {allowed} for {count}; all: {calls}"
    return calls, reconciles_after - reconciles_before


def test_one_object_comes_up_within_its_call_budget(keyrotor: Harness, metrics_port: int) -> None:
    ns = keyrotor.namespace()
    calls, reconciles = _bring_up(keyrotor, metrics_port, 1, ns)
    assert calls["iam:ListUserTags"] == 0  # GetUser answers the tags
    # The key's CreateDate came with the value, and it is IAM's; only the key is mirrored.
    assert calls["iam:ListAccessKeys"] == 0
    (obj,) = keyrotor.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    user, name = obj["spec"]["iamUser"], obj["metadata"]["name"]
    listed = keyrotor.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    secret = keyrotor.secret(ns, name)
    assert secret is not None and set(secret.data or {}) == MIRRORED_KEYS
    annotation = secret.metadata.annotations["keyrotor.io/access-key-created"]
    assert annotation == listed[0]["CreateDate"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert calls["secretsmanager:ListSecretVersionIds"] == 0  # the rotation we started is young
    assert reconciles["create"] == 1 and reconciles["update"] == 0
    # One decision when the first key is there (the focus look's DescribeSecret handed to it).
    assert reconciles["sync"] <= 1


def test_objects_applied_together_are_reconciled_once_each(
    keyrotor: Harness, metrics_port: int
) -> None:
    count = 6
    calls, reconciles = _bring_up(keyrotor, metrics_port, count, keyrotor.namespace())
    assert reconciles["create"] == count
    assert reconciles["update"] == reconciles["resume"] == 0
    assert reconciles["sync"] <= count
    per_object = sum(n for op, n in calls.items() if op not in INSTALLATION) / count
    described = calls["secretsmanager:DescribeSecret"] / count
    besides_looks = sum(n for op, n in BUDGET.items() if op != "secretsmanager:DescribeSecret")
    assert per_object - described <= besides_looks
