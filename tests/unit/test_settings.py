"""Configuration is read once; a wrong value names the flag; `keyrotor run` exits with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from keyrotor.cli import build_parser, settings_from_args
from keyrotor.settings import AllowRule, SettingsError


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_CLUSTER_NAME", "prod-eu")
    monkeypatch.setenv("KEYROTOR_ALLOW", "team-a:svc-*,team-b:b")
    args = build_parser().parse_args(["run", "--sync-interval", "5m", "--namespace", "x"])
    settings = settings_from_args(args)
    assert settings.cluster_name == "prod-eu"
    assert settings.sync_interval == 300
    assert settings.namespaces == ("x",)
    assert settings.allow == (AllowRule("team-a", "svc-*"), AllowRule("team-b", "b"))
    assert settings.allow[0].matches("team-a", "svc-billing")
    assert not settings.allow[0].matches("team-b", "svc-billing")
    assert settings.secret_prefix == "keyrotor/prod-eu/"
    assert settings.recheck_interval == 120
    args = build_parser().parse_args(["run", "--recheck-interval", "5s"])
    assert settings_from_args(args).recheck_interval == 5


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "--cluster-name", "Bad_Name"], "--cluster-name"),
        (["run", "--sync-interval", "5"], "--sync-interval"),
        (["run", "--sync-interval", "soon"], "--sync-interval"),
        (["run", "--allow", "no-colon"], "--allow"),
        (["run", "--recheck-interval", "0"], "--recheck-interval"),
        (["run", "--sync-workers", "0"], "--sync-workers"),
        (["run", "--reconcile-workers", "1000"], "--reconcile-workers"),
        (["run", "--aws-rate", "iam:everything=5"], "--aws-rate"),
        (["run", "--aws-rate", "iam:write=0"], "--aws-rate"),
    ],
)
def test_bad_settings_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(SettingsError, match=flag):
        settings_from_args(build_parser().parse_args(argv))


def test_workers_and_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings_from_args(build_parser().parse_args(["run"]))
    assert (defaults.sync_workers, defaults.reconcile_workers, defaults.aws_rates) == (8, 8, ())
    monkeypatch.setenv("KEYROTOR_SYNC_WORKERS", "16")
    monkeypatch.setenv("KEYROTOR_AWS_RATE", "iam:write=5 iam:read=10")
    settings = settings_from_args(build_parser().parse_args(["run", "--reconcile-workers", "4"]))
    assert (settings.sync_workers, settings.reconcile_workers) == (16, 4)
    assert settings.aws_rates == (("iam:write", 5.0), ("iam:read", 10.0))
    args = ["run", "--aws-rate", "secretsmanager:read=100"]  # a flag wins over the variable
    assert settings_from_args(build_parser().parse_args(args)).aws_rates == (
        ("secretsmanager:read", 100.0),
    )


def test_cli_exits_with_one_readable_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyrotor.cli", "run", "--cluster-name", "Bad_Name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keyrotor: --cluster-name")


@pytest.mark.parametrize(
    ("argv", "recheck"),
    [
        (["run", "--event-mode"], 1800),  # the event-mode sweep's default interval
        (["run", "--event-mode", "--sync-interval", "1h"], 3600),
        (["run", "--event-mode", "--sync-interval", "60"], 900),  # never below the installation's
        (["run", "--event-mode", "--sync-interval", "60", "--installation-recheck", "30"], 60),
    ],
)
def test_event_rule_and_queue_are_checked_as_often_as_the_safety_net_sweep(
    argv: list[str], recheck: float
) -> None:
    from keyrotor.event_consumer import recheck_interval

    assert recheck_interval(settings_from_args(build_parser().parse_args(argv))) == recheck


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("true", True), ("YES", True), ("false", False), ("0", False), ("", False)],
)
def test_on_off_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    """KEYROTOR_VERBOSE=false turned verbose logging on (any non-empty value did); every on/off
    setting now reads the environment the same way, in the operator and in `keyrotor policy`."""
    for name in ("VERBOSE", "EVENT_MODE", "LEADER_ELECT"):
        monkeypatch.setenv(f"KEYROTOR_{name}", value)
    args = build_parser().parse_args(["run"])
    assert (args.verbose, args.event_mode, args.leader_elect) == (on, on, on)
    policy = build_parser().parse_args(["policy"])
    assert policy.event_mode is on
