"""keyrotor audit's verdicts (IAM.3, IAM.4) and output, from a parsed report: no network."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from keyrotor import audit
from keyrotor.aws.credential_report import CredentialReport, KeySlot, ReportRow
from keyrotor.aws.inventory import ManagedBy

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
NO_KEY = KeySlot(slot=2, active=False, last_rotated=None, last_used_date=None)


def report_with(age: timedelta, *, active: bool = True, user: str = "svc") -> CredentialReport:
    key = KeySlot(slot=1, active=active, last_rotated=NOW - age, last_used_date=None)
    arn = "arn:aws:iam::123456789012:" + ("root" if user == "<root_account>" else f"user/{user}")
    row = ReportRow(user=user, arn=arn, user_creation_time=None, keys=(key, NO_KEY))
    return CredentialReport(generated=NOW, rows=(row,))


@pytest.mark.parametrize(
    ("age", "active", "verdict", "rule"),
    [
        (timedelta(days=1), True, "ok", None),
        (timedelta(days=89), True, "ok", None),
        (timedelta(days=90), True, "ok", None),  # "90 days or less"
        (timedelta(days=90, seconds=1), True, "violation", "IAM.3"),
        (timedelta(days=91), True, "violation", "IAM.3"),
        (timedelta(days=400), True, "violation", "IAM.3"),
        (timedelta(days=400), False, "inactive", None),  # IAM.3 judges active keys only
    ],
)
def test_iam3_active_keys_older_than_the_maximum_age(
    age: timedelta, active: bool, verdict: str, rule: str | None
) -> None:
    (finding,) = audit.judge(report_with(age, active=active), {}, now=NOW)
    assert (finding.verdict, finding.rule, finding.age_days) == (verdict, rule, age.days)


def test_max_age_days_is_the_limit() -> None:
    (finding,) = audit.judge(report_with(timedelta(days=31)), {}, now=NOW, max_age_days=30)
    assert finding.verdict == "violation"


def test_iam4_any_active_root_key_is_a_violation() -> None:
    (finding,) = audit.judge(report_with(timedelta(days=1), user="<root_account>"), {}, now=NOW)
    assert (finding.verdict, finding.rule) == ("violation", "IAM.4")


def test_managed_keys_name_their_objects_and_a_retained_secret_says_rotation_is_off() -> None:
    managed = {
        "svc": [
            ManagedBy("prod", "team-a", "svc", "keyrotor/prod/team-a/svc", True),
            ManagedBy("old", "team-b", "svc", "keyrotor/old/team-b/svc", False),
        ]
    }
    (finding,) = audit.judge(report_with(timedelta(days=1), user="SVC"), managed, now=NOW)
    assert finding.managed_by == ("prod/team-a/svc", "old/team-b/svc (rotation off)")


def test_outputs_agree() -> None:
    report = report_with(timedelta(days=91))
    findings = audit.judge(report, {}, now=NOW)
    document = json.loads(audit.render_json(findings, report, 90))
    assert document["violations"] == 1
    assert document["keys"][0]["lastRotated"] == "2025-03-02T12:00:00Z"
    assert document["keys"][0]["lastUsed"] is None
    (row,) = csv.DictReader(io.StringIO(audit.render_csv(findings)))
    assert (row["user"], row["age_days"], row["verdict"], row["rule"]) == (
        "svc",
        "91",
        "violation",
        "IAM.3",
    )
    table = audit.render_table(findings, report, 90).splitlines()
    assert table[1].split()[-2:] == ["VIOLATION", "IAM.3"]
    assert table[-1].startswith("1 access keys (0 managed by keyrotor); violations: 1")
