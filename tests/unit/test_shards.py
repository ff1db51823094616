"""Sharding without any network: which objects a shard serves, its identity in claims, and the
claim rules between shards (keyrotor.shards, keyrotor.tenancy, the planner)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keyrotor import cli, policies, policy_command
from keyrotor.aws import policies as iam_documents
from keyrotor.model import CLAIM_TAG, FINALIZER, NAMESPACES_TAG, Reason, parse_spec
from keyrotor.observation import Context, ObjectView, Observation, UserView
from keyrotor.outcome import TakeClaim
from keyrotor.settings import Settings, SettingsError
from keyrotor.shards import LabelSelector, Shard, installation_of, namespace_matches
from keyrotor.tenancy import Claim, ClaimDecision, claim_decision, conflicting_claim

INSTALLATION = "prod@0f1e-kube-system"
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


# --- Label selectors, as kubectl -l takes them -----------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("shard=a", {"shard": "a"}, True),
        ("shard=a", {"shard": "b"}, False),
        ("shard=a", {}, False),
        ("shard==a", {"shard": "a"}, True),
        ("shard!=a", {"shard": "b"}, True),
        ("shard!=a", {}, True),  # as Kubernetes: a missing label is not equal
        ("shard!=a", {"shard": "a"}, False),
        ("shard in (a, b)", {"shard": "b"}, True),
        ("shard in (a,b)", {"shard": "c"}, False),
        ("shard notin (a,b)", {"shard": "c"}, True),
        ("shard notin (a,b)", {}, True),
        ("shard notin (a,b)", {"shard": "a"}, False),
        ("shard", {"shard": ""}, True),
        ("shard=", {"shard": ""}, True),  # an empty value is a value
        ("shard", {}, False),
        ("!shard", {}, True),
        ("!shard", {"shard": "a"}, False),
        ("team=x,shard in (a,b)", {"team": "x", "shard": "a"}, True),
        ("team=x,shard in (a,b)", {"team": "y", "shard": "a"}, False),
        ("keyrotor.io/shard=a", {"keyrotor.io/shard": "a"}, True),
        ("tier in (gold), !legacy", {"tier": "gold"}, True),
    ],
)
def test_label_selector_matches_as_kubernetes_does(
    selector: str, labels: dict[str, str], matches: bool
) -> None:
    assert LabelSelector.parse(selector).matches(labels) is matches


@pytest.mark.parametrize(
    "selector",
    ["", "=a", "shard in ()", "shard in (a", "shard in (a))", "a b", "shard=a b", "-x"],
)
def test_bad_label_selectors_are_refused(selector: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        LabelSelector.parse(selector)


def test_namespace_patterns_follow_kopf() -> None:
    assert namespace_matches("team-a", ())
    assert namespace_matches("team-a", ("team-*",))
    assert not namespace_matches("ops", ("team-*",))
    assert not namespace_matches("team-x", ("team-*", "!team-x"))
    assert namespace_matches("ops", ("!team-x",))


# --- What one shard serves, and who it is -----------------------------------------------------


def test_unsharded_operator_serves_everything_under_the_installation_id() -> None:
    shard = Shard()
    assert shard.serves("any", None) and shard.serves("any", {"shard": "b"})
    assert shard.identity(INSTALLATION) == INSTALLATION  # an existing install keeps its claims
    assert shard.finalizer == FINALIZER
    assert shard.lease_name("prod") == "keyrotor-prod"


def test_a_shard_serves_its_selector_and_namespaces_under_its_own_identity() -> None:
    shard = Shard("a", LabelSelector.parse("shard=a"), ("team-*",))
    assert shard.serves("team-1", {"shard": "a"})
    assert not shard.serves("team-1", {"shard": "b"})
    assert not shard.serves("ops", {"shard": "a"})
    assert shard.serves_body({"metadata": {"namespace": "team-1", "labels": {"shard": "a"}}})
    assert not shard.serves_body({"metadata": {"namespace": "team-1"}})
    assert shard.identity(INSTALLATION) == f"{INSTALLATION}:a"
    assert installation_of(shard.identity(INSTALLATION)) == INSTALLATION
    assert shard.finalizer == f"{FINALIZER}-a"  # never the default's nor another shard's
    assert shard.lease_name("prod") == "keyrotor-prod.a"


def test_shard_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(
        ["run", "--shard", "a", "--selector", "shard in (a)", "--namespace", "x,y"]
    )
    settings = cli.settings_from_args(args)
    assert settings.shard == Shard("a", LabelSelector.parse("shard in (a)"), ("x", "y"))
    assert settings.lease_name == "keyrotor-default.a"
    monkeypatch.setenv("KEYROTOR_SHARD", "b")
    monkeypatch.setenv("KEYROTOR_SELECTOR", "shard=b")
    settings = cli.settings_from_args(cli.build_parser().parse_args(["run"]))
    assert (settings.shard_name, settings.selector) == ("b", "shard=b")


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"selector": "shard=a"}, "--shard"),  # a selector without its own identity
        ({"shard_name": "A"}, "--shard 'A'"),
        ({"shard_name": "a" * 31}, "--shard"),
        ({"shard_name": "a", "selector": "shard in (a"}, "--selector"),
        ({"shard_name": "s" * 30, "cluster_name": "c" * 17, "event_mode": True}, "too long"),
    ],
)
def test_bad_shard_settings_name_the_flag(values: dict[str, Any], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings(**values)


# --- Claims between shards --------------------------------------------------------------------


def test_a_shard_takes_only_its_own_stale_claims() -> None:
    a, b = f"{INSTALLATION}:a", f"{INSTALLATION}:b"
    mine = f"{a}/uid-1"
    assert claim_decision(mine=mine, held=f"{a}/uid-gone", live_uids=set()) is ClaimDecision.FREE
    # another shard's claim whose object this shard cannot see: never stale here
    assert claim_decision(mine=mine, held=f"{b}/uid-2", live_uids=set()) is ClaimDecision.TAKEN
    assert (
        claim_decision(mine=mine, held=f"{INSTALLATION}/uid-2", live_uids=set())
        is ClaimDecision.TAKEN
    )
    # the unsharded install keeps judging its own claims as before
    plain = f"{INSTALLATION}/uid-1"
    assert claim_decision(mine=plain, held=plain, live_uids=set()) is ClaimDecision.MINE
    assert claim_decision(mine=plain, held=f"{b}/uid-2", live_uids=set()) is ClaimDecision.TAKEN


def test_the_claim_of_this_very_object_moves_with_it_between_shards() -> None:
    mine = f"{INSTALLATION}:b/uid-1"
    for held in (f"{INSTALLATION}:a/uid-1", f"{INSTALLATION}/uid-1"):  # a shard, or unsharded
        assert claim_decision(mine=mine, held=held, live_uids={"uid-1"}) is ClaimDecision.MOVED
    # the same uid in another installation (another cluster) is not this object
    other = "prod@another-cluster:a/uid-1"
    assert claim_decision(mine=mine, held=other, live_uids={"uid-1"}) is ClaimDecision.TAKEN


def test_only_objects_of_this_shard_compete_for_a_free_user() -> None:
    me = Claim("ns", "mine", "uid-1", "2026-01-02T00:00:00Z")
    older_elsewhere = Claim("ns", "older", "uid-0", "2026-01-01T00:00:00Z", in_shard=False)
    assert conflicting_claim(me, [me, older_elsewhere]) is None
    older_here = Claim("ns", "older", "uid-0", "2026-01-01T00:00:00Z")
    assert conflicting_claim(me, [me, older_here]) == older_here


def _observation(held: str | None, identity: str, finalizers: tuple[str, ...] = ()) -> Observation:
    tags = {NAMESPACES_TAG: "*", **({CLAIM_TAG: held} if held else {})}
    return Observation(
        obj=ObjectView(
            namespace="ns",
            name="app",
            uid="uid-1",
            created="2026-01-01T00:00:00Z",
            generation=1,
            resource_version="7",
            rotate_now=None,
            status={},
            finalizers=finalizers,
        ),
        context=Context(
            installation=identity,
            stuck_after=900,
            recheck_interval=120,
            secret_tags={},
            finalizer=f"{FINALIZER}-b",
        ),
        user=UserView("svc", tags),
        claims=(Claim("ns", "app", "uid-1", "2026-01-01T00:00:00Z"),),
    )


SPEC = parse_spec(
    {"iamUser": "svc"}, name="app", namespace="ns", default_secret_name="keyrotor/prod/ns/app"
)
B = f"{INSTALLATION}:b"


@pytest.mark.parametrize(
    "finalizers",
    [(f"{FINALIZER}-b",), (FINALIZER, f"{FINALIZER}-b"), ()],  # let go; from before sharding
)
def test_planner_takes_over_a_moved_claim_once_the_old_shard_let_go(
    finalizers: tuple[str, ...],
) -> None:
    plan = policies.plan(SPEC, _observation(f"{INSTALLATION}:a/uid-1", B, finalizers), NOW)
    take = plan.actions[0]
    assert isinstance(take, TakeClaim) and take.value == f"{B}/uid-1"
    assert take.event is not None and take.event.reason == Reason.SHARD_CHANGED


def test_planner_waits_while_the_old_shard_still_holds_the_object() -> None:
    """Its finalizer says the old shard may still act (not seen the new labels yet, down, or
    overlapping selectors): nothing is taken, and it is looked at again soon."""
    held = (f"{FINALIZER}-a", f"{FINALIZER}-b")
    plan = policies.plan(SPEC, _observation(f"{INSTALLATION}:a/uid-1", B, held), NOW)
    assert plan.actions == [] and plan.ready is not None
    assert plan.ready.reason == Reason.CONFLICT and f"{FINALIZER}-a" in plan.ready.message
    assert plan.recheck_after == 5.0


def test_planner_refuses_another_shards_claim() -> None:
    plan = policies.plan(SPEC, _observation(f"{INSTALLATION}:a/uid-2", B), NOW)
    assert plan.actions == [] and plan.ready is not None
    assert plan.ready.reason == Reason.CONFLICT
    assert plan.recheck_after == 120


# --- Event mode: each shard its own rule and queue, in the operator's policy -------------------


def test_each_shard_has_its_own_event_rule_and_queue() -> None:
    args = cli.build_parser().parse_args(
        [
            "policy",
            "--cluster-name",
            "prod",
            "--region",
            "eu-west-1",
            "--account-id",
            "123456789012",
            "--event-mode",
            "--shard",
            "a",
            "--shard",
            "b",
        ]
    )
    document = iam_documents.operator_policy(policy_command.params_from_args(args))
    by_sid = {s["Sid"]: s["Resource"] for s in document["Statement"]}
    assert by_sid["EnsureItsOwnEventRule"] == [
        "arn:aws:events:eu-west-1:123456789012:rule/keyrotor-prod_a-secrets",
        "arn:aws:events:eu-west-1:123456789012:rule/keyrotor-prod_b-secrets",
    ]
    assert by_sid["EnsureAndConsumeItsOwnEventQueue"] == [
        "arn:aws:sqs:eu-west-1:123456789012:keyrotor-prod_a-events",
        "arn:aws:sqs:eu-west-1:123456789012:keyrotor-prod_b-events",
    ]
