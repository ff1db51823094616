"""Fewer calls, once (issue 10): what one decision reads again, and when the sync loop looks.

Pure rules, no network: ``keyrotor.reads`` (a read is kept for the rest of a decision until one
of its own actions could have changed it; our own writes stand in for the reads they make
needless), ``mirroring.focus_look_due`` (the looks of one wait back off) and
``mirroring.rotation_watched`` (the sweep leaves a young rotation to the focus looks).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keyrotor import policies, reads
from keyrotor.mirroring import focus_look_due, rotation_watched
from keyrotor.model import CLAIM_TAG, NAMESPACES_TAG, WorkloadRef
from keyrotor.observation import Observation, UserView, initial_version_id
from keyrotor.outcome import (
    AdoptSecret,
    ClearPending,
    ConfigureRotation,
    CreateSecret,
    EnsureInstallation,
    MirrorKey,
    ReleaseClaim,
    RequestRotation,
    RestartWorkload,
    RetirePreviousKey,
    TakeClaim,
)
from keyrotor.reads import CREATED, DESCRIBED, TARGET, USER, USER_KEYS, Reads
from tests.unit.test_policies import ARN, INSTALLATION, LAMBDA, NOW, TAGS, UID, observe, spec

RULES = {"ScheduleExpression": "rate(90 days)"}


@pytest.mark.parametrize(
    ("action", "stale"),
    [
        (TakeClaim(iam_user="svc", value="v", object_label="ns/n"), {USER}),
        (ReleaseClaim(iam_user="svc", value="v"), {USER}),
        (EnsureInstallation(), set()),
        (CreateSecret(name="n", iam_user="svc", tags={}, kms_key_id=None), {DESCRIBED}),
        (AdoptSecret(arn=ARN, add_tags={}, restore=False, kms_key_id=None), {DESCRIBED}),
        (ClearPending(arn=ARN, version_id="v"), {DESCRIBED}),
        (
            ConfigureRotation(arn=ARN, lambda_arn=LAMBDA, rules=RULES, rotate_immediately=True),
            {DESCRIBED},
        ),
        (RequestRotation(arn=ARN, token=None, cause="rotate-now"), {DESCRIBED}),
        (
            MirrorKey(
                version_id="v",
                iam_user="svc",
                secret_name="n",
                profile="default",
                labels={},
                annotations={},
                cause="initial",
            ),
            {TARGET},
        ),
        (RetirePreviousKey(iam_user="svc", access_key_id="AKIA", delete=False), {USER_KEYS}),
    ],
)
def test_an_action_makes_stale_only_what_it_can_change(action: Any, stale: set[str]) -> None:
    assert reads.stale_after(action) == stale
    memo = Reads()
    for what in (USER, DESCRIBED, TARGET, USER_KEYS):
        memo.seed(what, f"read {what}")
    memo.after(action, owner_uid=UID, now=NOW)
    assert set(memo.values) == {USER, DESCRIBED, TARGET, USER_KEYS} - stale


def test_every_action_is_in_the_table() -> None:
    restart = RestartWorkload(workload=WorkloadRef("Deployment", "app"), version_id="v")
    assert reads.stale_after(restart) == set()
    assert set(reads.STALE_AFTER) >= {
        TakeClaim,
        ReleaseClaim,
        EnsureInstallation,
        CreateSecret,
        AdoptSecret,
        ClearPending,
        ConfigureRotation,
        RequestRotation,
        MirrorKey,
        RestartWorkload,
        RetirePreviousKey,
    }


def test_a_read_is_made_once_until_it_is_stale() -> None:
    calls: list[str] = []

    def read_user() -> str:
        calls.append("GetUser")
        return f"user {len(calls)}"

    memo = Reads()
    assert memo.once(USER, read_user) == memo.once(USER, read_user) == "user 1"
    memo.after(EnsureInstallation(), owner_uid=UID, now=NOW)
    assert memo.once(USER, read_user) == "user 1"
    memo.after(TakeClaim(iam_user="svc", value="v", object_label="x"), owner_uid=UID, now=NOW)
    assert memo.once(USER, read_user) == "user 2"  # the claim is read back
    assert calls == ["GetUser", "GetUser"]


def test_a_secret_that_existed_is_described_again() -> None:
    memo = Reads()
    memo.seed(DESCRIBED, None)
    memo.after(
        CreateSecret(name="n", iam_user="svc", tags=TAGS, kms_key_id=None),
        owner_uid=UID,
        now=NOW,
        created_arn=None,  # ResourceExists: whose it is, the next look decides
    )
    assert DESCRIBED not in memo.values


def _step(obs: Observation, memo: Reads, **written: Any) -> tuple[Any, Observation]:
    plan = policies.plan(spec(), obs, NOW)
    for action in plan.actions:
        memo.after(action, owner_uid=UID, now=NOW, **written)
    return plan, obs


def test_bring_up_needs_no_read_that_our_writes_answer() -> None:
    """A new object, claimed: CreateSecret's answer stands for DescribeSecret, RotateSecret's for
    DescribeSecret and ListSecretVersionIds; the plan then waits for the first key, in focus."""
    user = UserView("svc", {NAMESPACES_TAG: "team-a", CLAIM_TAG: f"{INSTALLATION}/{UID}"})
    status: dict[str, Any] = {}
    first = observe(status=status, user=user, secret=None, target=None)
    memo = Reads()
    memo.seed(DESCRIBED, None)
    plan = policies.plan(spec(), first, NOW)
    assert [type(a) for a in plan.actions] == [CreateSecret]
    memo.after(plan.actions[0], owner_uid=UID, now=NOW, created_arn=ARN)
    created = memo.values[DESCRIBED]
    assert created.current_version == initial_version_id(UID) and created.tags == TAGS

    plan = policies.plan(spec(), observe(status=status, user=user, secret=created), NOW)
    assert [type(a) for a in plan.actions] == [ConfigureRotation]
    assert plan.actions[0].rotate_immediately
    memo.after(plan.actions[0], owner_uid=UID, now=NOW, started_version="token-1")
    started = memo.values[DESCRIBED]
    assert started.pending_versions == ["token-1"] and started.rotation_enabled
    assert memo.values[(CREATED, "token-1")] == NOW

    waiting = observe(status=status, user=user, secret=started, pending_ages={"token-1": 0.0})
    plan = policies.plan(spec(), waiting, NOW)
    assert plan.actions == [] and not plan.again
    assert plan.index.active and plan.index.focus and plan.index.secret_arn == ARN
    synced = {c.type: c for c in plan.conditions}["Synced"]
    assert synced.reason == "RotationPending"


@pytest.mark.parametrize(
    ("looks", "due_after"),
    [(0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0), (4, 32.0), (5, 62.0), (6, 92.0)],
)
def test_the_looks_of_one_wait_back_off(looks: int, due_after: float) -> None:
    since = NOW
    assert focus_look_due(since, looks, NOW + timedelta(seconds=due_after), 2.0)
    assert not focus_look_due(since, looks, NOW + timedelta(seconds=due_after - 0.1), 2.0)


def test_a_wait_of_five_minutes_costs_a_dozen_looks_not_a_hundred_and_fifty() -> None:
    looks, now, end = 0, NOW, NOW + timedelta(minutes=5)
    while now <= end:
        if focus_look_due(NOW, looks, now, 2.0):
            looks += 1
        now += timedelta(seconds=2)
    assert looks <= 13
    assert focus_look_due(None, 0, NOW, 2.0)  # no wait recorded: look now


def test_the_sweep_leaves_a_young_rotation_to_the_focus_looks() -> None:
    until = NOW + timedelta(minutes=15)
    assert rotation_watched(until, NOW, NOW + timedelta(seconds=899), 900)
    assert not rotation_watched(until, NOW, NOW + timedelta(seconds=900), 900)  # maybe stuck
    assert not rotation_watched(None, None, NOW, 900)  # not in focus
    assert not rotation_watched(NOW, NOW - timedelta(seconds=1), NOW + timedelta(seconds=1), 900)
