"""Leader election flags: read once, in the same forms as the other durations; timings that
cannot work are refused naming the flags."""

from __future__ import annotations

import pytest

from keyrotor.cli import build_parser, settings_from_args
from keyrotor.settings import SettingsError


def test_off_unless_asked() -> None:
    settings = settings_from_args(build_parser().parse_args(["run"]))
    assert settings.leader_elect is False
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (15, 10, 2)


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_LEADER_ELECT", "true")
    monkeypatch.setenv("KEYROTOR_LEADER_ELECTION_NAMESPACE", "keyrotor-system")
    monkeypatch.setenv("KEYROTOR_LEADER_ELECTION_ID", "keyrotor-7d9f-abcde")
    monkeypatch.setenv("KEYROTOR_CLUSTER_NAME", "prod-eu")
    args = build_parser().parse_args(["run", "--leader-election-lease-duration", "30s"])
    settings = settings_from_args(args)
    assert settings.leader_elect is True
    assert settings.leader_election_namespace == "keyrotor-system"
    assert settings.leader_election_id == "keyrotor-7d9f-abcde"
    assert settings.lease_duration == 30
    assert settings.lease_name == "keyrotor-prod-eu"
    assert (
        settings_from_args(build_parser().parse_args(["run", "--no-leader-elect"])).leader_elect
        is False
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--leader-election-lease-duration", "10s"],  # not longer than the renew deadline
        ["--leader-election-renew-deadline", "2s"],  # not longer than 1.2 x the retry period
    ],
)
def test_timings_that_cannot_work_are_refused(argv: list[str]) -> None:
    with pytest.raises(SettingsError, match="--leader-election-lease-duration"):
        settings_from_args(build_parser().parse_args(["run", *argv]))
