"""Metrics and health listen on loopback unless told otherwise (flag or environment)."""

from __future__ import annotations

import pytest

from keyrotor.cli import build_parser, settings_from_args
from keyrotor.settings import Settings, SettingsError


def test_loopback_by_default() -> None:
    settings = settings_from_args(build_parser().parse_args(["run"]))
    assert settings.bind_address == "127.0.0.1"
    assert settings.http_url(8081, "/healthz") == "http://127.0.0.1:8081/healthz"


def test_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_BIND_ADDRESS", "10.1.2.3")
    assert settings_from_args(build_parser().parse_args(["run"])).bind_address == "10.1.2.3"
    args = build_parser().parse_args(["run", "--bind-address", "fd00::5"])
    settings = settings_from_args(args)
    assert settings.http_url(8080, "/metrics") == "http://[fd00::5]:8080/metrics"


def test_a_host_name_is_refused() -> None:
    with pytest.raises(SettingsError, match="--bind-address"):
        Settings(bind_address="localhost; rm")


def test_allow_globs_use_only_what_iam_understands() -> None:
    with pytest.raises(SettingsError, match="--allow"):
        settings_from_args(build_parser().parse_args(["run", "--allow", "a:team-[ab]"]))
