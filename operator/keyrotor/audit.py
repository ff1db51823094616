"""``keyrotor audit``'s verdicts and output: pure functions of a credential report. No I/O.

The rules auditors apply to access keys:

- AWS Security Hub control IAM.3 ("IAM users' access keys should be rotated every 90 days or
  less", https://docs.aws.amazon.com/securityhub/latest/userguide/iam-controls.html#iam-3), the
  same as CIS AWS Foundations ("Ensure access keys are rotated every 90 days or less"): an
  *active* key older than the maximum age is a violation; inactive keys are not judged.
- IAM.4 ("IAM root user access key should not exist"): any active key of the root user.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from keyrotor.aws.credential_report import CredentialReport, to_second
from keyrotor.aws.inventory import ManagedBy

DEFAULT_MAX_AGE_DAYS = 90
Verdict = Literal["ok", "violation", "inactive"]
COLUMNS = (
    "user",
    "slot",
    "state",
    "age_days",
    "last_rotated",
    "last_used",
    "managed_by",
    "verdict",
    "rule",
)


@dataclass(frozen=True)
class Finding:
    """One access key, as the credential report shows it, and the verdict on it."""

    user: str
    arn: str
    slot: int
    active: bool
    last_rotated: datetime
    age: timedelta
    last_used: datetime | None
    last_used_service: str | None
    managed_by: tuple[str, ...]  # "<cluster>/<namespace>/<name>", "(rotation off)" if retained
    verdict: Verdict
    rule: str | None  # "IAM.3", "IAM.4" for a violation

    @property
    def age_days(self) -> int:
        return self.age.days


def judge(
    report: CredentialReport,
    managed: Mapping[str, Sequence[ManagedBy]],
    *,
    now: datetime,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> list[Finding]:
    """Every key of every user (the root user included), judged by IAM.3 and IAM.4."""
    limit = timedelta(days=max_age_days)
    findings = []
    for row in report.rows:
        owners = tuple(
            m.label + ("" if m.rotation_enabled else " (rotation off)")
            for m in managed.get(row.user.casefold(), ())
        )
        for key in row.present_keys:
            assert key.last_rotated is not None  # present_keys
            age = max(timedelta(0), to_second(now) - key.last_rotated)
            verdict: Verdict = "inactive"
            rule = None
            if key.active and row.is_root:
                verdict, rule = "violation", "IAM.4"
            elif key.active and age > limit:
                verdict, rule = "violation", "IAM.3"
            elif key.active:
                verdict = "ok"
            findings.append(
                Finding(
                    user=row.user,
                    arn=row.arn,
                    slot=key.slot,
                    active=key.active,
                    last_rotated=key.last_rotated,
                    age=age,
                    last_used=key.last_used_date,
                    last_used_service=key.last_used_service,
                    managed_by=owners,
                    verdict=verdict,
                    rule=rule,
                )
            )
    return findings


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _cells(finding: Finding) -> dict[str, str]:
    return {
        "user": finding.user,
        "slot": str(finding.slot),
        "state": "Active" if finding.active else "Inactive",
        "age_days": str(finding.age_days),
        "last_rotated": _iso(finding.last_rotated) or "",
        "last_used": _iso(finding.last_used) or "never",
        "managed_by": ", ".join(finding.managed_by) or "-",
        "verdict": finding.verdict.upper(),
        "rule": finding.rule or "",
    }


def summary(findings: Sequence[Finding], report: CredentialReport, max_age_days: int) -> str:
    violations = [f for f in findings if f.verdict == "violation"]
    managed = sum(1 for f in findings if f.managed_by)
    return (
        f"{len(findings)} access keys ({managed} managed by keyrotor); violations: "
        f"{len(violations)} (IAM.3: active keys older than {max_age_days} days; IAM.4: root user "
        f"keys); credential report generated {_iso(report.generated)}"
    )


def render_table(findings: Sequence[Finding], report: CredentialReport, max_age_days: int) -> str:
    headers = [c.upper().replace("_", " ") for c in COLUMNS]
    rows = [[_cells(f)[c] for c in COLUMNS] for f in findings]
    widths = [max(len(x) for x in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join([*lines, "", summary(findings, report, max_age_days)]) + "\n"


def render_csv(findings: Sequence[Finding]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for finding in findings:
        cells = _cells(finding)
        cells["last_used"] = _iso(finding.last_used) or ""
        cells["managed_by"] = ";".join(finding.managed_by)
        cells["verdict"] = finding.verdict
        writer.writerow(cells)
    return out.getvalue()


def render_json(findings: Sequence[Finding], report: CredentialReport, max_age_days: int) -> str:
    document = {
        "generatedTime": _iso(report.generated),
        "maxAgeDays": max_age_days,
        "violations": sum(1 for f in findings if f.verdict == "violation"),
        "keys": [
            {
                "user": f.user,
                "arn": f.arn,
                "slot": f.slot,
                "state": "Active" if f.active else "Inactive",
                "ageDays": f.age_days,
                "lastRotated": _iso(f.last_rotated),
                "lastUsed": _iso(f.last_used),
                "lastUsedService": f.last_used_service,
                "managedBy": list(f.managed_by),
                "verdict": f.verdict,
                "rule": f.rule,
            }
            for f in findings
        ],
    }
    return json.dumps(document, indent=2) + "\n"
