"""The planner, rule by rule, without any network (as cert-manager tests its policy chain).

Each test is named after the rule it shows; the observation is built by hand from what the
adapters would report.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyrotor import policies
from keyrotor.mirroring import (
    TargetState,
    needs_decision,
    schedule_moved,
    scheduled_rotation_due,
    target_state,
)
from keyrotor.model import (
    ADOPT_TAG,
    CLAIM_TAG,
    NAMESPACES_TAG,
    TAG_CLUSTER,
    TAG_IAM_USER,
    TAG_INSTALLATION,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    Reason,
    Spec,
    parse_spec,
)
from keyrotor.observation import (
    Context,
    KeyView,
    ObjectView,
    Observation,
    Observed,
    TargetView,
    UserView,
    deterministic_token,
    initial_version_id,
)
from keyrotor.outcome import (
    AdoptSecret,
    CancelRotation,
    ClearPending,
    ConfigureRotation,
    CreateSecret,
    EnsureInstallation,
    MirrorKey,
    Plan,
    RequestRotation,
    RestartWorkload,
    RetirePreviousKey,
    ScheduleDeletion,
    TakeClaim,
)
from keyrotor.tenancy import Claim

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
UID = "uid-1"
USER = "svc"
LAMBDA = "arn:aws:lambda:us-east-1:123456789012:function:keyrotor-c-rotation"
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:keyrotor/c/team-a/app-AbCdEf"
INSTALLATION = "c@kube-system-uid"
TAGS = {
    TAG_CLUSTER: "c",
    TAG_INSTALLATION: INSTALLATION,
    TAG_NAMESPACE: "team-a",
    TAG_NAME: "app",
    TAG_UID: UID,
    TAG_IAM_USER: USER,
    "app.kubernetes.io/managed-by": "keyrotor",
}


def spec(**overrides: Any) -> Spec:
    raw: dict[str, Any] = {"iamUser": USER, **overrides}
    return parse_spec(
        raw, name="app", namespace="team-a", default_secret_name="keyrotor/c/team-a/app"
    )


def secret(**overrides: Any) -> Observed:
    values: dict[str, Any] = {
        "arn": ARN,
        "current_version": "v2",
        "versions": ["v1", "v2"],
        "rotation_enabled": True,
        "rotation_lambda_arn": LAMBDA,
        "rotation_rules": {"ScheduleExpression": "rate(90 days)"},
        "last_rotated": NOW - timedelta(days=1),
        "next_rotation": NOW + timedelta(days=89),
        "tags": dict(TAGS),
    }
    values.update(overrides)
    return Observed(**values)


def observe(
    *,
    status: dict[str, Any] | None = None,
    rotate_now: str | None = None,
    **overrides: Any,
) -> Observation:
    """A Ready object: claimed, its secret at v2, mirrored, status in step."""
    values: dict[str, Any] = {
        "obj": ObjectView(
            namespace="team-a",
            name="app",
            uid=UID,
            created="2026-01-01T00:00:00Z",
            generation=1,
            resource_version="7",
            rotate_now=rotate_now,
            status={"versionId": "v2", "accessKeyId": "AKIA2"} if status is None else status,
        ),
        "context": Context(
            installation=INSTALLATION,
            stuck_after=900,
            recheck_interval=120,
            secret_tags=TAGS,
            namespace_path="keyrotor/c/team-a/",
        ),
        "user": UserView(USER, {NAMESPACES_TAG: "team-a", CLAIM_TAG: f"{INSTALLATION}/{UID}"}),
        "claims": (Claim("team-a", "app", UID, "2026-01-01T00:00:00Z", holding=True),),
        "lambda_arn": LAMBDA,
        "secret": secret(),
        "target": TargetView(
            exists=True, owned=True, version_id="v2", intact=True, matches_spec=True
        ),
    }
    values.update(overrides)
    return Observation(**values)


def kinds(plan: Plan) -> list[type]:
    return [type(a) for a in plan.actions]


def ready_reason(plan: Plan) -> str | None:
    return plan.ready.reason if plan.ready else None


# --- A Ready object: nothing to do ------------------------------------------------------------


def test_in_step_nothing_to_do() -> None:
    plan = policies.plan(spec(), observe(), NOW)
    assert plan.actions == [] and plan.events == [] and plan.ready is None
    assert {c.type: c.status for c in plan.conditions} == {
        "RotationConfigured": True,
        "Synced": True,
    }
    assert plan.index.active and plan.index.mirrored_version == "v2"
    assert plan.facts["lastRotationTime"] == "2026-01-09T12:00:00Z"


# --- Refusals, each before any action ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "observation", "reason", "says"),
    [
        ("user_not_found", observe(user=None), Reason.USER_NOT_FOUND, "does not exist"),
        (
            "not_authorized",
            observe(user=UserView(USER, {NAMESPACES_TAG: "other"})),
            Reason.NOT_AUTHORIZED,
            "add 'team-a' to it",
        ),
        (
            "claimed_by_another_installation",
            observe(user=UserView(USER, {NAMESPACES_TAG: "*", CLAIM_TAG: "other@x/uid-9"})),
            Reason.CONFLICT,
            "already rotated by another AccessKeyRotation",
        ),
        (
            "older_object_wants_the_user",
            observe(
                user=UserView(USER, {NAMESPACES_TAG: "*"}),
                claims=(
                    Claim("team-a", "app", UID, "2026-01-02T00:00:00Z"),
                    Claim("team-a", "older", "uid-0", "2026-01-01T00:00:00Z"),
                ),
            ),
            Reason.CONFLICT,
            "already rotated by AccessKeyRotation team-a/older",
        ),
        (
            "secret_of_another_object",
            observe(secret=secret(tags={**TAGS, TAG_NAMESPACE: "team-b", TAG_UID: "uid-2"})),
            Reason.CONFLICT,
            "belongs to another AccessKeyRotation; choose another",
        ),
        (
            "secret_not_made_by_keyrotor",
            observe(secret=secret(tags={"team": "x"})),
            Reason.NOT_AUTHORIZED,
            "tag keyrotor.io/adopt=team-a/app",
        ),
        (
            "secret_handed_to_another_object",
            observe(secret=secret(tags={ADOPT_TAG: "team-a/other"})),
            Reason.NOT_AUTHORIZED,
            "was not made by keyrotor for this object",
        ),
        (
            "retained_secret_of_another_installation",
            observe(secret=secret(tags={**TAGS, TAG_INSTALLATION: "c@other", TAG_UID: "u0"})),
            Reason.CONFLICT,
            "belongs to another AccessKeyRotation",
        ),
        (
            "key_of_another_user",
            observe(key=KeyView("v2", "someone-else", "AKIA2")),
            Reason.CONFLICT,
            "holds a key of another IAM user",
        ),
        (
            "target_secret_not_ours",
            observe(target=TargetView(exists=True, owned=False), status={}),
            Reason.CONFLICT,
            "is not managed by this AccessKeyRotation",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refusal_acts_on_nothing(
    name: str, observation: Observation, reason: str, says: str
) -> None:
    plan = policies.plan(spec(), observation, NOW)
    assert ready_reason(plan) == reason
    assert says in plan.ready.message  # type: ignore[union-attr]
    # A tenant never learns another namespace's objects, uids or secret contents.
    for hidden in ("team-b", "uid-2", "uid-9", "someone-else", "c@other"):
        assert hidden not in plan.ready.message  # type: ignore[union-attr]
    assert plan.actions == []
    assert not plan.index.active
    assert plan.recheck_after == 120


def test_suspended_acts_on_nothing_and_waits_for_the_spec() -> None:
    plan = policies.plan(spec(suspend=True), observe(), NOW)
    assert ready_reason(plan) == Reason.SUSPENDED
    assert plan.actions == [] and plan.recheck_after is None and not plan.index.active


# --- Steps: claim, installation, secret ------------------------------------------------------


def test_claim_is_taken_when_free() -> None:
    obs = observe(user=UserView(USER, {NAMESPACES_TAG: "*"}))
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [TakeClaim] and plan.again
    assert plan.actions[0].value == f"{INSTALLATION}/{UID}"  # type: ignore[attr-defined]


def test_stale_claim_of_this_installation_is_taken() -> None:
    obs = observe(user=UserView(USER, {NAMESPACES_TAG: "*", CLAIM_TAG: f"{INSTALLATION}/uid-gone"}))
    assert kinds(policies.plan(spec(), obs, NOW)) == [TakeClaim]


def test_installation_is_ensured_before_the_secret() -> None:
    plan = policies.plan(spec(), observe(lambda_arn=None, secret=None), NOW)
    assert kinds(plan) == [EnsureInstallation] and plan.again


def test_secret_is_created_when_missing() -> None:
    plan = policies.plan(spec(), observe(secret=None, target=TargetView(exists=False)), NOW)
    assert kinds(plan) == [CreateSecret]
    assert plan.actions[0].tags == TAGS  # type: ignore[attr-defined]


def test_secret_scheduled_for_deletion_is_restored_and_tagged() -> None:
    untagged = {k: v for k, v in TAGS.items() if k != TAG_CLUSTER}
    plan = policies.plan(spec(), observe(secret=secret(deleted=True, tags=untagged)), NOW)
    assert kinds(plan) == [AdoptSecret]
    action = plan.actions[0]
    assert action.restore and action.add_tags == {TAG_CLUSTER: "c"}  # type: ignore[attr-defined]


# --- Only own secrets: retained, handed over, under the namespace's path ------------------------


def test_retained_secret_is_taken_back_and_rotation_turned_on_again() -> None:
    retained = secret(tags={**TAGS, TAG_UID: "uid-of-the-deleted-object"}, rotation_enabled=False)
    plan = policies.plan(spec(), observe(secret=retained, status={}), NOW)
    assert kinds(plan) == [AdoptSecret]
    assert plan.actions[0].add_tags == {TAG_UID: UID}  # type: ignore[attr-defined]
    taken = replace(retained, tags=dict(TAGS))
    plan = policies.plan(spec(), observe(secret=taken, status={}), NOW)
    assert kinds(plan) == [ConfigureRotation]
    assert not plan.actions[0].rotate_immediately  # type: ignore[attr-defined]


def test_secret_handed_over_by_an_administrator_is_adopted() -> None:
    handed = secret(tags={ADOPT_TAG: "team-a/app"}, rotation_enabled=False)
    obs = observe(secret=handed, status={}, key=KeyView("v2", USER, "AKIA2"))
    plan = policies.plan(spec(secretsManager={"secretName": "legacy/billing"}), obs, NOW)
    assert kinds(plan) == [AdoptSecret]
    assert plan.actions[0].add_tags == TAGS  # type: ignore[attr-defined]


def test_secret_handed_over_with_another_users_key_is_refused_before_the_claim() -> None:
    handed = secret(tags={ADOPT_TAG: "team-a/app"})
    obs = observe(
        secret=handed,
        status={},
        key=KeyView("v2", "someone-else", "AKIA2"),
        user=UserView(USER, {NAMESPACES_TAG: "*"}),  # the claim is free: still nothing written
    )
    plan = policies.plan(spec(), obs, NOW)
    assert ready_reason(plan) == Reason.CONFLICT and plan.actions == []


@pytest.mark.parametrize("name", ["keyrotor/c/team-b/app", "elsewhere/app", "keyrotor/c/team-ab"])
def test_secret_name_outside_the_namespace_path_is_refused(name: str) -> None:
    obs = observe(secret=None, status={})
    plan = policies.plan(spec(secretsManager={"secretName": name}), obs, NOW)
    assert ready_reason(plan) == Reason.NOT_AUTHORIZED and plan.actions == []
    assert "keyrotor/c/team-a/" in plan.ready.message  # type: ignore[union-attr]


def test_secret_name_under_the_namespace_path_is_created() -> None:
    obs = observe(secret=None, status={})
    plan = policies.plan(spec(secretsManager={"secretName": "keyrotor/c/team-a/x"}), obs, NOW)
    assert kinds(plan) == [CreateSecret]


def test_kms_key_not_allowed_is_refused() -> None:
    plan = policies.plan(spec(secretsManager={"kmsKeyId": "arn:aws:kms:r:1:key/k"}), observe(), NOW)
    assert ready_reason(plan) == "KmsKeyNotAllowed" and plan.actions == []


# --- First key --------------------------------------------------------------------------------


def _new_secret(**overrides: Any) -> Observed:
    values: dict[str, Any] = {
        "current_version": initial_version_id(UID),
        "versions": [initial_version_id(UID)],
        "rotation_enabled": False,
        "rotation_lambda_arn": None,
        "rotation_rules": {},
        "last_rotated": None,
        "next_rotation": None,
    }
    return secret(**{**values, **overrides})


def test_first_key_is_requested_with_the_rotation_configuration() -> None:
    obs = observe(status={}, secret=_new_secret(), target=TargetView(exists=False))
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [ConfigureRotation]
    action = plan.actions[0]
    assert action.rotate_immediately  # type: ignore[attr-defined]
    assert action.event.reason == Reason.ROTATION_REQUESTED  # type: ignore[union-attr]


def test_first_key_running_waits_for_the_key() -> None:
    pending = initial_version_id(UID), "v-pending"
    configured = _new_secret(pending_versions=["v-pending"], versions=list(pending))
    configured = replace(
        configured,
        rotation_enabled=True,
        rotation_lambda_arn=LAMBDA,
        rotation_rules={"ScheduleExpression": "rate(90 days)"},
    )
    obs = observe(
        status={}, secret=configured, pending_ages={"v-pending": 5.0}, target=TargetView(False)
    )
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions == []
    synced = next(c for c in plan.conditions if c.type == "Synced")
    assert synced.reason == Reason.ROTATION_PENDING and plan.index.focus


def test_first_key_cleared_as_stuck_is_requested_again() -> None:
    configured = replace(
        _new_secret(),
        current_version="v-made-by-someone",
        rotation_enabled=True,
        rotation_lambda_arn=LAMBDA,
        rotation_rules={"ScheduleExpression": "rate(90 days)"},
    )
    obs = observe(status={}, secret=configured, key=KeyView("v-made-by-someone", USER, ""))
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [RequestRotation]
    assert plan.actions[0].if_idle  # type: ignore[attr-defined]


# --- Stuck rotations -------------------------------------------------------------------------


def test_stuck_rotation_is_cleared_and_a_young_one_is_left_running() -> None:
    stuck = secret(pending_versions=["v-old", "v-young"], versions=["v2", "v-old", "v-young"])
    obs = observe(secret=stuck, pending_ages={"v-old": 1000.0, "v-young": 10.0})
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [ClearPending]
    assert plan.actions[0].version_id == "v-old"  # type: ignore[attr-defined]
    assert plan.actions[0].event.reason == Reason.ROTATION_STUCK  # type: ignore[union-attr]


# --- rotate-now ------------------------------------------------------------------------------


def test_rotate_now_requests_one_rotation_per_value() -> None:
    plan = policies.plan(spec(), observe(rotate_now="r1"), NOW)
    assert kinds(plan) == [RequestRotation]
    action = plan.actions[0]
    assert action.token == deterministic_token("rotate-now", UID, "r1")  # type: ignore[attr-defined]
    # Recorded as handled only with the request's success (the action's facts).
    assert action.facts == {"rotateNowHandled": "r1"}
    assert "rotateNowHandled" not in plan.facts and plan.index.focus
    handled = observe(rotate_now="r1", status={"versionId": "v2", "rotateNowHandled": "r1"})
    assert policies.plan(spec(), handled, NOW).actions == []


def test_rotate_now_requested_before_a_restart_is_recorded() -> None:
    token = deterministic_token("rotate-now", UID, "r1")
    obs = observe(rotate_now="r1", secret=secret(versions=["v2", token]))
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions == [] and plan.facts["rotateNowHandled"] == "r1"


def test_rotate_now_waits_for_a_running_rotation() -> None:
    running = secret(pending_versions=["v3"], versions=["v2", "v3"])
    obs = observe(rotate_now="r1", secret=running, pending_ages={"v3": 3.0})
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions == [] and plan.recheck_after == policies.RETRY_ROTATION_IN_PROGRESS


# --- Mirroring: rotation, repair, update -------------------------------------------------------


def test_rotation_is_mirrored_then_workloads_restart_and_the_grace_period_starts() -> None:
    obs = observe(
        secret=secret(current_version="v3"),
        key=KeyView("v3", USER, "AKIA3"),
        status={"versionId": "v2", "accessKeyId": "AKIA2"},
    )
    plan = policies.plan(spec(restartOnRotation=[{"kind": "Deployment", "name": "web"}]), obs, NOW)
    assert kinds(plan) == [MirrorKey, RestartWorkload]
    assert plan.actions[0].cause == "rotation"  # type: ignore[attr-defined]
    assert plan.facts["previousKey"] == {
        "accessKeyId": "AKIA2",
        "state": "Active",
        "actionAfter": "2026-01-11T12:00:00Z",
    }
    assert plan.index.previous_key_due == NOW + timedelta(hours=24)
    assert [e.reason for e in plan.events] == [Reason.SYNCED]


def test_repair_puts_back_an_edited_secret() -> None:
    obs = observe(
        target=TargetView(exists=True, owned=True, version_id="v2", intact=False),
        key=KeyView("v2", USER, "AKIA2"),
    )
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [MirrorKey]
    assert plan.actions[0].cause == "repair"  # type: ignore[attr-defined]
    assert plan.events[0].reason == Reason.SECRET_REPAIRED and "drifted" in plan.events[0].message


def test_repair_puts_back_a_deleted_secret() -> None:
    obs = observe(target=TargetView(exists=False), key=KeyView("v2", USER, "AKIA2"))
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [MirrorKey] and "missing" in plan.events[0].message


def test_target_options_changed_is_an_update_not_a_repair() -> None:
    obs = observe(
        target=TargetView(True, True, "v2", intact=True, matches_spec=False),
        key=KeyView("v2", USER, "AKIA2"),
    )
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions[0].cause == "update"  # type: ignore[attr-defined]
    assert plan.events[0].reason == Reason.SYNCED


def test_version_mirrored_before_status_recorded_it_is_a_rotation_without_a_write() -> None:
    obs = observe(
        secret=secret(current_version="v3"),
        target=TargetView(True, True, "v3", intact=True, matches_spec=True),
        key=KeyView("v3", USER, "AKIA3"),
    )
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions == [] and plan.facts["versionId"] == "v3"
    assert plan.facts["previousKey"]["accessKeyId"] == "AKIA2"


def test_target_state() -> None:
    assert target_state(None, "v") is TargetState.MISSING
    assert target_state(TargetView(True, True, "v", True, True), "v") is TargetState.CURRENT
    assert target_state(TargetView(True, True, "u", True, True), "v") is TargetState.DRIFTED
    assert target_state(TargetView(True, True, "v", True, False), "v") is TargetState.OUTDATED


# --- The previous key and its grace period ----------------------------------------------------


def _with_previous(after: datetime, state: str = "Active") -> dict[str, Any]:
    return {
        "versionId": "v2",
        "accessKeyId": "AKIA2",
        "previousKey": {
            "accessKeyId": "AKIA1",
            "state": state,
            "actionAfter": after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def test_grace_period_keeps_the_previous_key_until_it_ends() -> None:
    due = NOW + timedelta(hours=3)
    plan = policies.plan(spec(), observe(status=_with_previous(due)), NOW)
    assert plan.actions == [] and plan.index.previous_key_due == due


def test_grace_period_makes_rotate_now_wait_and_says_until_when() -> None:
    until = NOW + timedelta(hours=3)
    obs = observe(status=_with_previous(until), rotate_now="r2")
    plan = policies.plan(spec(), obs, NOW)
    assert plan.actions == []
    configured = next(c for c in plan.conditions if c.type == "RotationConfigured")
    assert configured.status and configured.reason == Reason.GRACE_PERIOD
    assert "2026-01-10T15:00:00Z" in configured.message
    assert "keyrotor.io/end-grace-period=r2" in configured.message
    assert [e.reason for e in plan.events] == [Reason.GRACE_PERIOD]
    assert plan.recheck_after == pytest.approx(3 * 3600 + 1)
    assert "rotateNowHandled" not in plan.facts


def test_grace_period_ended_early_lets_rotate_now_through() -> None:
    obs = observe(status=_with_previous(NOW + timedelta(hours=3)), rotate_now="r2")
    obs = replace(obs, obj=replace(obs.obj, end_grace="r2"))
    assert kinds(policies.plan(spec(), obs, NOW)) == [RequestRotation]
    other = replace(obs, obj=replace(obs.obj, end_grace="r1"))  # another value: no
    assert policies.plan(spec(), other, NOW).actions == []


def test_grace_period_over_rotate_now_goes_and_the_previous_key_is_retired() -> None:
    obs = observe(status=_with_previous(NOW - timedelta(seconds=1)), rotate_now="r2")
    assert kinds(policies.plan(spec(), obs, NOW)) == [RequestRotation, RetirePreviousKey]


def test_grace_period_of_a_kept_key_is_recorded() -> None:
    obs = observe(
        secret=secret(current_version="v3"),
        key=KeyView("v3", USER, "AKIA3"),
        status={"versionId": "v2", "accessKeyId": "AKIA2"},
    )
    plan = policies.plan(spec(previousKey={"action": "Keep", "after": "2h"}), obs, NOW)
    assert plan.facts["previousKey"]["actionAfter"] == "2026-01-10T14:00:00Z"
    assert plan.index.previous_key_due is None  # nothing to do then; rotations wait until then


@pytest.mark.parametrize(("action", "state"), [("Deactivate", "Inactive"), ("Delete", "Deleted")])
def test_previous_key_is_retired_after_the_grace_period(action: str, state: str) -> None:
    obs = observe(status=_with_previous(NOW - timedelta(seconds=1)))
    plan = policies.plan(spec(previousKey={"action": action}), obs, NOW)
    assert kinds(plan) == [RetirePreviousKey]
    retire = plan.actions[0]
    assert retire.access_key_id == "AKIA1"  # type: ignore[attr-defined]
    assert retire.facts["previousKey"]["state"] == state


def test_previous_key_keep_is_never_retired() -> None:
    obs = observe(status=_with_previous(NOW - timedelta(days=1)))
    assert policies.plan(spec(previousKey={"action": "Keep"}), obs, NOW).actions == []


def test_previous_key_already_retired_is_left_alone() -> None:
    obs = observe(status=_with_previous(NOW - timedelta(days=1), state="Inactive"))
    assert policies.plan(spec(), obs, NOW).actions == []


# --- When the sync loop looks -------------------------------------------------------------------


def test_due_while_the_window_is_open() -> None:
    window = timedelta(hours=2)
    assert scheduled_rotation_due(NOW, window, NOW + timedelta(hours=1))
    assert not scheduled_rotation_due(NOW, window, NOW - timedelta(seconds=1))
    assert not scheduled_rotation_due(NOW, window, NOW + timedelta(hours=3, seconds=1))
    assert not scheduled_rotation_due(None, window, NOW)


def test_schedule_moved_after_the_version_was_mirrored() -> None:
    rotated = secret(last_rotated=NOW)
    assert schedule_moved("2026-01-09T12:00:00Z", rotated)
    assert not schedule_moved("2026-01-10T12:00:00Z", rotated)
    assert needs_decision("v2", "2026-01-09T12:00:00Z", rotated)
    assert not needs_decision("v2", "2026-01-10T12:00:00Z", rotated)
    assert needs_decision("v1", "2026-01-10T12:00:00Z", rotated)


# --- Deletion ---------------------------------------------------------------------------------


def test_deletion_policy_delete_cancels_and_schedules() -> None:
    plan = policies.deletion_plan(
        spec(secretsManager={"deletionPolicy": "Delete"}), secret(), uid=UID
    )
    assert kinds(plan) == [CancelRotation, ScheduleDeletion]


def test_deletion_policy_retain_cancels_rotation_and_keeps_the_secret() -> None:
    plan = policies.deletion_plan(spec(), secret(), uid=UID)
    assert kinds(plan) == [CancelRotation]
    assert "takes it back" in plan.events[0].message


def test_deletion_leaves_a_secret_that_is_not_ours() -> None:
    plan = policies.deletion_plan(spec(), secret(tags={TAG_UID: "uid-2"}), uid=UID)
    assert plan.actions == [] and plan.events == []


def test_target_replaced_after_mirroring_is_a_sync_failure_and_never_overwritten() -> None:
    obs = observe(
        secret=secret(current_version="v3"),
        target=TargetView(exists=True, owned=False),
    )
    plan = policies.plan(spec(), obs, NOW)
    assert plan.ready is None and plan.actions == []
    synced = next(c for c in plan.conditions if c.type == "Synced")
    assert not synced.status and synced.reason == Reason.SYNC_FAILED


# --- Dead keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "what"), [("gone", "deleted"), ("inactive", "deactivated")])
def test_dead_key_is_reported_and_a_rotation_replaces_it(verdict: str, what: str) -> None:
    plan = policies.plan(spec(), observe(dead_key=verdict, status=_with_previous(NOW)), NOW)
    assert kinds(plan) == [RequestRotation]
    heal = plan.actions[0]
    assert heal.token == deterministic_token("heal", UID, "AKIA2")  # type: ignore[attr-defined]
    synced = next(c for c in plan.conditions if c.type == "Synced")
    assert not synced.status and synced.reason == Reason.DEAD_KEY and what in synced.message
    # Requested once: the same dead key is not rotated again.
    again = observe(dead_key=verdict, secret=secret(versions=["v2", heal.token]))  # type: ignore[attr-defined]
    assert policies.plan(spec(), again, NOW).actions == []


def test_dead_key_replaced_leaves_no_grace_period_behind() -> None:
    obs = observe(
        dead_key="gone",
        secret=secret(current_version="v3"),
        key=KeyView("v3", USER, "AKIA3"),
    )
    plan = policies.plan(spec(), obs, NOW)
    assert plan.facts["previousKey"] == {"accessKeyId": "AKIA2", "state": "Deleted"}
    assert plan.facts["accessKeyId"] == "AKIA3"


def test_the_mirrored_keys_creation_time_reaches_the_index_from_the_secret() -> None:
    created = NOW - timedelta(days=3)
    target = TargetView(True, True, "v2", True, True, access_key_id="AKIA2", key_created=created)
    plan = policies.plan(spec(), observe(target=target), NOW)
    assert plan.index.access_key_id == "AKIA2" and plan.index.key_created == created
    stale = replace(target, access_key_id="AKIA1")
    assert policies.plan(spec(), observe(target=stale), NOW).index.key_created is None


def test_rotation_stopped_by_another_active_key_says_which_and_what_to_do() -> None:
    stuck = secret(pending_versions=["v3"], versions=["v2", "v3"])
    old = NOW - timedelta(days=30)
    keys = {"AKIA2": ("Active", old), "AKIAFOREIGN": ("Active", old)}
    made_at = {"v3": NOW - timedelta(seconds=1000)}
    obs = observe(
        secret=stuck, pending_ages={"v3": 1000.0}, pending_created=made_at, user_keys=keys
    )
    plan = policies.plan(spec(), obs, NOW)
    assert kinds(plan) == [ClearPending]
    event = plan.actions[0].event
    assert event is not None and event.reason == Reason.KEY_IN_USE
    assert "AKIAFOREIGN" in event.message and "update-access-key" in event.message
    # Only the mirrored and the previous key: an ordinary stuck rotation.
    ours = observe(
        secret=stuck,
        pending_ages={"v3": 1000.0},
        pending_created=made_at,
        user_keys={"AKIA2": ("Active", old)},
    )
    assert policies.plan(spec(), ours, NOW).actions[0].event.reason == Reason.ROTATION_STUCK  # type: ignore[union-attr]
    # The rotation's own half-made key (newer than its pending version) is not someone else's.
    made = {"AKIA2": ("Active", old), "AKIANEW": ("Active", NOW - timedelta(seconds=900))}
    own = observe(
        secret=stuck, pending_ages={"v3": 1000.0}, pending_created=made_at, user_keys=made
    )
    assert policies.plan(spec(), own, NOW).actions[0].event.reason == Reason.ROTATION_STUCK  # type: ignore[union-attr]


def test_a_stuck_rotations_own_key_is_told_by_its_versions_creation_not_the_decisions_clock() -> (
    None
):
    """A key is someone else's (KeyInUse) only when it is older than the stuck rotation, which
    began when its AWSPENDING version was created. The ages were measured when the decision
    gathered them; the plan's clock comes after the decision's other reads (ListAccessKeys
    retried while IAM throttles, a slow API server), seconds later under load. The rotation's
    start, taken as the plan's clock minus the age, moved by that much, and the rotation's own
    half-made key, made a second after its version, was reported as a foreign key in use (CI
    run 16: no RotationStuck)."""
    stuck = secret(pending_versions=["v3"], versions=["v2", "v3"])
    gathered = NOW - timedelta(seconds=5)  # the plan runs 5 s after the ages were measured
    created = gathered - timedelta(seconds=1000)
    old = NOW - timedelta(days=30)
    own_key = {"AKIA2": ("Active", old), "AKIANEW": ("Active", created + timedelta(seconds=1))}
    obs = observe(
        secret=stuck,
        pending_ages={"v3": 1000.0},
        pending_created={"v3": created},
        user_keys=own_key,
    )
    event = policies.plan(spec(), obs, NOW).actions[0].event
    assert event is not None and event.reason == Reason.ROTATION_STUCK
    # A key older than the version is another's, however late the plan runs.
    foreign = {**own_key, "AKIAFOREIGN": ("Active", created - timedelta(seconds=1))}
    event = policies.plan(spec(), replace(obs, user_keys=foreign), NOW).actions[0].event
    assert event is not None and event.reason == Reason.KEY_IN_USE
    assert "AKIAFOREIGN" in event.message and "AKIANEW" not in event.message
    # When the version's creation is not known, which key the rotation made is not known
    # either: cleared as stuck, with no claim that a key is someone else's.
    unknown = replace(obs, pending_ages={"v3": None}, pending_created={}, user_keys=foreign)
    event = policies.plan(spec(), unknown, NOW).actions[0].event
    assert event is not None and event.reason == Reason.ROTATION_STUCK
