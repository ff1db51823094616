"""The pure decisions: spec parsing and defaults, conditions, tenancy. No network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyrotor.conditions import Condition, merge_conditions
from keyrotor.model import SpecError, parse_spec, schedule_expression
from keyrotor.observation import Observed, rotation_config_matches
from keyrotor.tenancy import (
    Claim,
    ClaimDecision,
    authorization_problem,
    claim_decision,
    claim_value,
    conflicting_claim,
    holds_claim,
)
from tests.spec_rows import (
    AFTER_VERSUS_INTERVAL,
    INVALID_SCHEDULES,
    INVALID_TARGET_METADATA,
    VALID_SCHEDULES,
    VALID_TARGET_METADATA,
)


def parse(spec: dict) -> object:
    return parse_spec(
        spec, name="app", namespace="team-a", default_secret_name="keyrotor/c/team-a/app"
    )


def test_defaults_are_applied_in_code() -> None:
    spec = parse_spec(
        {"iamUser": "svc-app"},
        name="app",
        namespace="team-a",
        default_secret_name="keyrotor/c/team-a/app",
    )
    assert spec.schedule_expression == "rate(90 days)"
    assert spec.secret_name == "keyrotor/c/team-a/app"
    assert spec.target_secret_name == "app"
    assert spec.profile == "default"
    assert spec.deletion_policy == "Retain"
    assert spec.recovery_window_days == 7
    assert spec.previous_key_action == "Deactivate"
    assert spec.previous_key_after == timedelta(hours=24)
    assert spec.suspend is False
    effective = spec.effective()
    assert effective["rotation"]["scheduleExpression"] == "rate(90 days)"
    assert effective["previousKey"] == {"action": "Deactivate", "after": "1d"}


@pytest.mark.parametrize(
    ("interval", "expression"),
    [
        ("4h", "rate(4 hours)"),
        ("1d", "rate(1 day)"),
        ("30d", "rate(30 days)"),
        ("1000d", "rate(1000 days)"),
    ],
)
def test_interval_becomes_rate(interval: str, expression: str) -> None:
    assert schedule_expression(interval) == expression
    spec = parse_spec(
        {
            "iamUser": "u",
            "rotation": {"interval": interval, "window": "2h"},
            "previousKey": {"after": "1h"},  # shorter than the shortest interval
        },
        name="a",
        namespace="n",
        default_secret_name="s",
    )
    assert spec.schedule_expression == expression
    assert spec.window == "2h"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.iamUser"),
        ({"iamUser": "has space"}, "spec.iamUser"),
        ({"iamUser": "x" * 65}, "spec.iamUser"),
        ({"iamUser": "u", "rotation": {"interval": "3h"}}, "between 4h and 1000d"),
        ({"iamUser": "u", "rotation": {"interval": "1001d"}}, "between 4h and 1000d"),
        ({"iamUser": "u", "rotation": {"interval": "9999999999999d"}}, "between 4h and 1000d"),
        ({"iamUser": "u", "rotation": {"interval": "10m"}}, "spec.rotation.interval"),
        ({"iamUser": "u", "rotation": {"interval": "4h", "schedule": "rate(1 day)"}}, "not both"),
        ({"iamUser": "u", "rotation": {"schedule": "every day"}}, "spec.rotation.schedule"),
        ({"iamUser": "u", "rotation": {"window": "90m"}}, "spec.rotation.window"),
        ({"iamUser": "u", "secretsManager": {"recoveryWindowDays": 6}}, "recoveryWindowDays"),
        ({"iamUser": "u", "secretsManager": {"deletionPolicy": "Orphan"}}, "deletionPolicy"),
        (
            {"iamUser": "u", "restartOnRotation": [{"kind": "Pod", "name": "p"}]},
            "restartOnRotation[0]",
        ),
        ({"iamUser": "u", "previousKey": {"action": "Burn"}}, "spec.previousKey.action"),
        ({"iamUser": "u", "previousKey": {"after": "soon"}}, "spec.previousKey.after"),
        ({"iamUser": "u", "previousKey": {"after": "1001d"}}, "spec.previousKey.after"),
        ({"iamUser": "u", "previousKey": {"after": "9999999999d"}}, "at most 1000d"),
        ({"iamUser": "u", "target": {"labels": {"a": 1}}}, "spec.target.labels.a"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(
        SpecError, match=field.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        parse_spec(spec, name="a", namespace="n", default_secret_name="s")


def _spec(rotation: dict, after: str | None = None, **extra: object) -> dict:
    spec: dict = {"iamUser": "u", "rotation": rotation, **extra}
    if after is not None:
        spec["previousKey"] = {"after": after}
    return spec


@pytest.mark.parametrize("schedule", VALID_SCHEDULES)
def test_valid_schedules_are_kept(schedule: str) -> None:
    spec = parse(_spec({"schedule": schedule}, "1h"))
    assert spec.schedule_expression == schedule  # type: ignore[attr-defined]


@pytest.mark.parametrize(("schedule", "message"), INVALID_SCHEDULES)
def test_invalid_schedules_are_refused(schedule: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse(_spec({"schedule": schedule}, "1h"))
    assert str(refused.value).startswith(f"spec.rotation.schedule {schedule!r}")
    assert message in str(refused.value)


@pytest.mark.parametrize(("labels", "annotations"), VALID_TARGET_METADATA)
def test_valid_target_labels_and_annotations_are_kept(labels: dict, annotations: dict) -> None:
    spec = parse(_spec({}, target={"labels": labels, "annotations": annotations}))
    assert spec.target_labels == labels  # type: ignore[attr-defined]
    assert spec.target_annotations == annotations  # type: ignore[attr-defined]


@pytest.mark.parametrize(("labels", "annotations", "field"), INVALID_TARGET_METADATA)
def test_invalid_target_labels_and_annotations_are_refused(
    labels: dict, annotations: dict, field: str
) -> None:
    with pytest.raises(SpecError) as refused:
        parse(_spec({}, target={"labels": labels, "annotations": annotations}))
    assert str(refused.value).startswith(field)


@pytest.mark.parametrize(("rotation", "after", "valid"), AFTER_VERSUS_INTERVAL)
def test_previous_key_after_must_be_shorter_than_the_interval(
    rotation: dict, after: str | None, valid: bool
) -> None:
    if valid:
        parse(_spec(rotation, after))
        return
    with pytest.raises(SpecError) as refused:
        parse(_spec(rotation, after))
    assert str(refused.value).startswith("spec.previousKey.after")
    assert "must be shorter than the rotation interval" in str(refused.value)
    if after is None:
        assert "the default" in str(refused.value)


def test_cron_schedule_is_kept() -> None:
    spec = parse_spec(
        {"iamUser": "u", "rotation": {"schedule": "cron(0 4 1 * ? *)"}},
        name="a",
        namespace="n",
        default_secret_name="s",
    )
    assert spec.schedule_expression == "cron(0 4 1 * ? *)"
    assert spec.interval is None


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions(
        [], [Condition("Synced", False, "RotationPending", "wait")], generation=1, now=NOW
    )
    later = NOW + timedelta(minutes=5)
    same = merge_conditions(
        first, [Condition("Synced", False, "SyncFailed", "boom")], generation=2, now=later
    )
    assert same[0]["lastTransitionTime"] == "2026-11-28T12:00:00Z"
    assert same[0]["reason"] == "SyncFailed"
    assert same[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same, [Condition("Synced", True, "Synced", "ok")], generation=2, now=later
    )
    assert flipped[0]["lastTransitionTime"] == "2026-11-28T12:05:00Z"


def test_ready_comes_first() -> None:
    merged = merge_conditions(
        [],
        [
            Condition("Synced", True, "Synced", "ok"),
            Condition("RotationConfigured", True, "RotationEnabled", "ok"),
            Condition("Ready", True, "Ready", "ok"),
        ],
        generation=1,
        now=NOW,
    )
    assert [c["type"] for c in merged] == ["Ready", "RotationConfigured", "Synced"]


@pytest.mark.parametrize(
    ("tag", "allowed"),
    [
        ("team-a", True),
        ("team-b, team-a", True),
        ("team-b team-a", True),
        ("*", True),
        ("team-b", False),
        (None, False),
    ],
)
def test_namespace_tag(tag: str | None, allowed: bool) -> None:
    tags = {} if tag is None else {"keyrotor.io/namespaces": tag}
    problem = authorization_problem(
        namespace="team-a", iam_user="svc", user_tags=tags, allowed_by_flag=False
    )
    assert (problem is None) is allowed
    if problem:
        assert "keyrotor.io/namespaces" in problem and "--allow team-a:svc" in problem


def test_allow_flag_overrides_missing_tag() -> None:
    assert (
        authorization_problem(namespace="n", iam_user="u", user_tags={}, allowed_by_flag=True)
        is None
    )


def test_oldest_claim_wins() -> None:
    old = Claim("a", "x", "uid-1", "2026-01-01T00:00:00Z")
    new = Claim("b", "y", "uid-2", "2026-02-01T00:00:00Z")
    assert conflicting_claim(old, [old, new]) is None
    assert conflicting_claim(new, [old, new]) == old
    assert conflicting_claim(new, [new]) is None


def test_a_held_claim_wins_over_one_made_in_the_same_second() -> None:
    at = "2026-01-01T00:00:00Z"
    working = Claim("a", "x", "uid-9", at, holding=True)
    newcomer = Claim("b", "y", "uid-1", at)  # lower uid, same second
    assert conflicting_claim(newcomer, [working, newcomer]) == working
    assert conflicting_claim(working, [working, newcomer]) is None
    # Reconcile passes a claim built from the body; the index says whether it is held.
    assert conflicting_claim(Claim("a", "x", "uid-9", at), [working, newcomer]) is None
    assert holds_claim({"secretArn": "arn:x", "conditions": [{"type": "Ready", "reason": "Ready"}]})
    assert not holds_claim(
        {"secretArn": "arn:x", "conditions": [{"type": "Ready", "reason": "Conflict"}]}
    )
    assert not holds_claim({"conditions": [{"type": "Ready", "reason": "NotAuthorized"}]})


def test_rotation_config_comparison() -> None:
    spec = parse_spec(
        {"iamUser": "u", "rotation": {"interval": "30d", "window": "2h"}},
        name="a",
        namespace="n",
        default_secret_name="s",
    )
    observed = Observed(
        arn="arn",
        current_version="v1",
        rotation_enabled=True,
        rotation_lambda_arn="fn",
        rotation_rules={
            "ScheduleExpression": "rate(30 days)",
            "Duration": "2h",
            "AutomaticallyAfterDays": 30,
        },
    )
    assert rotation_config_matches(spec, observed, "fn")
    assert not rotation_config_matches(spec, observed, "other-fn")
    observed.rotation_rules = {"ScheduleExpression": "rate(90 days)"}
    assert not rotation_config_matches(spec, observed, "fn")


def test_stuck_pending_is_pending_on_a_non_current_version() -> None:
    observed = Observed(arn="a", current_version="v1", pending_versions=["v1", "v2"])
    assert observed.stuck_pending == ["v2"]


def test_claim_tag_decides_who_rotates_a_user() -> None:
    mine = claim_value("prod", "uid-1")
    assert mine == "prod/uid-1"
    assert claim_decision(mine=mine, held=mine, live_uids=set()) is ClaimDecision.MINE
    assert claim_decision(mine=mine, held=None, live_uids={"uid-1"}) is ClaimDecision.FREE
    # Another live object of this installation holds it.
    assert (
        claim_decision(mine=mine, held="prod/uid-2", live_uids={"uid-1", "uid-2"})
        is ClaimDecision.TAKEN
    )
    # Its object is gone (deleted without its finalizer): stale, may be taken.
    assert claim_decision(mine=mine, held="prod/uid-2", live_uids={"uid-1"}) is ClaimDecision.FREE
    # Another installation's claim is never taken over: this one cannot see its objects.
    assert (
        claim_decision(mine=mine, held="staging/uid-9", live_uids={"uid-1"}) is ClaimDecision.TAKEN
    )
