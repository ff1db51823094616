"""Allowed KMS keys: the pure check that refuses another team's key, and when to UpdateSecret."""

from __future__ import annotations

from typing import Any

import pytest

from keyrotor.kms_keys import kms_key_problem, kms_key_update_needed
from keyrotor.settings import Settings, SettingsError

TEAM_A = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000001"
TEAM_B = "arn:aws:kms:eu-west-1:111122223333:key/bbbbbbbb-0000-0000-0000-000000000002"


@pytest.mark.parametrize(
    ("key", "allowed", "refused"),
    [
        (None, (), False),
        ("", (TEAM_A,), False),
        (TEAM_A, (TEAM_A, TEAM_B), False),
        (TEAM_B, (TEAM_A,), True),
        (TEAM_A, (), True),
        ("alias/team-a", (TEAM_A,), True),  # by its key ARN only: the policies grant ARNs
        (TEAM_A.upper(), (TEAM_A,), True),
    ],
)
def test_kms_key_problem(key: str | None, allowed: tuple[str, ...], refused: bool) -> None:
    problem = kms_key_problem(key, allowed)
    assert (problem is not None) is refused
    if problem:
        assert "spec.secretsManager.kmsKeyId" in problem and "--kms-key" in problem


def test_the_message_says_what_to_do() -> None:
    none_allowed = kms_key_problem(TEAM_B, ())
    assert none_allowed is not None and "remove the field" in none_allowed
    other = kms_key_problem(TEAM_B, (TEAM_A,))
    assert other is not None and TEAM_A in other


@pytest.mark.parametrize(
    ("wanted", "current", "update"),
    [
        (None, None, False),
        (None, TEAM_A, False),  # no key asked for: the secret is left as it is
        (TEAM_A, TEAM_A, False),  # the same key: no UpdateSecret on every reconcile
        (TEAM_A, None, True),
        (TEAM_A, TEAM_B, True),
    ],
)
def test_update_only_when_the_key_differs(
    wanted: str | None, current: str | None, update: bool
) -> None:
    assert kms_key_update_needed(wanted, current) is update


def test_settings_take_key_arns_only() -> None:
    assert Settings(kms_keys=(TEAM_A,)).kms_keys == (TEAM_A,)
    with pytest.raises(SettingsError, match="--kms-key"):
        Settings(kms_keys=("alias/team-a",))


def test_run_reads_kms_keys_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyrotor.cli import build_parser, settings_from_args

    monkeypatch.setenv("KEYROTOR_KMS_KEY", f"{TEAM_A},{TEAM_B}")
    assert settings_from_args(build_parser().parse_args(["run"])).kms_keys == (TEAM_A, TEAM_B)
    args = build_parser().parse_args(["run", "--kms-key", TEAM_B])
    assert settings_from_args(args).kms_keys == (TEAM_B,)


# --- in the planner: refused before anything, and UpdateSecret only when the key differs -------


def _plan(kms_key: str | None, allowed: tuple[str, ...], secret_key: str | None = None) -> Any:
    from dataclasses import replace

    from keyrotor import policies
    from tests.unit.test_policies import NOW, observe, secret, spec

    obs = observe(secret=secret(kms_key_id=secret_key))
    obs = replace(obs, context=replace(obs.context, kms_keys=allowed))
    overrides = {"secretsManager": {"kmsKeyId": kms_key}} if kms_key else {}
    return policies.plan(spec(**overrides), obs, NOW)


def test_another_teams_key_is_refused_on_the_object_and_nothing_is_done() -> None:
    plan = _plan(TEAM_B, (TEAM_A,))
    assert plan.actions == []
    assert plan.ready is not None and plan.ready.reason == "KmsKeyNotAllowed"
    assert TEAM_A in plan.ready.message


def test_an_allowed_key_already_in_use_is_not_updated_again() -> None:
    plan = _plan(TEAM_A, (TEAM_A,), secret_key=TEAM_A)
    assert plan.actions == [] and plan.ready is None


def test_an_allowed_key_not_in_use_yet_is_set_once() -> None:
    from keyrotor.outcome import AdoptSecret

    plan = _plan(TEAM_A, (TEAM_A,), secret_key=None)
    (action,) = plan.actions
    assert isinstance(action, AdoptSecret) and action.kms_key_id == TEAM_A
    assert action.add_tags == {} and not action.restore
