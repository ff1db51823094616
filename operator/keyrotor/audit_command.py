"""``keyrotor audit``: every IAM user's access keys from the credential report, judged by IAM.3.

Exit codes: 0 no violation, 1 at least one violation, 2 the audit could not be made (usage, AWS
error, report not ready before ``--wait`` ran out). AWS credentials and endpoint come from
boto3's chain, as for ``keyrotor run``; the caller needs ``iam:GenerateCredentialReport``,
``iam:GetCredentialReport`` and ``secretsmanager:ListSecrets``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from keyrotor import audit
from keyrotor.aws.clients import AwsClients, error_message
from keyrotor.aws.credential_report import (
    REGENERATION_AGE,
    CredentialReport,
    CredentialReportError,
    fetch_report,
)
from keyrotor.aws.inventory import managed_users

EXIT_OK, EXIT_VIOLATION, EXIT_ERROR = 0, 1, 2
POLL_SECONDS = 2.0


class AuditError(RuntimeError):
    """The audit could not be made; ``str()`` is one line for people."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="list every IAM user's access keys with age and verdict (IAM.3); exit 1 on a "
        "violation",
        description=(
            "Read IAM's credential report (generating it when needed), list every user's "
            "access keys with age, last rotation, last use, state and the keyrotor object "
            "that manages them, and judge them by AWS Security Hub IAM.3 / CIS (active keys "
            "older than --max-age-days) and IAM.4 (root user keys). Exit 0: no violation; "
            "1: violations; 2: the audit could not be made."
        ),
    )
    parser.add_argument(
        "--max-age-days",
        type=_positive_int,
        default=audit.DEFAULT_MAX_AGE_DAYS,
        help="an active key older than this many days is a violation (default 90)",
    )
    parser.add_argument(
        "--output", choices=["table", "json", "csv"], default="table", help="default table"
    )
    parser.add_argument(
        "--wait",
        type=_positive_int,
        default=120,
        metavar="SECONDS",
        help="how long to wait for IAM to generate the report (default 120)",
    )
    parser.add_argument(
        "--max-report-age",
        type=_positive_int,
        default=int(REGENERATION_AGE.total_seconds() // 3600),
        metavar="HOURS",
        help="use an existing report up to this old, else generate one (default 4, as AWS)",
    )
    parser.add_argument(
        "--region",
        default=os.environ.get("KEYROTOR_REGION"),
        help="the region of keyrotor's secrets (KEYROTOR_REGION; default: boto3's chain)",
    )


def wait_for_report(clients: AwsClients, *, wait: float, max_age: timedelta) -> CredentialReport:
    deadline = time.monotonic() + wait
    while True:
        report = fetch_report(clients.iam, now=datetime.now(UTC), max_age=max_age)
        if report is not None:
            return report
        if time.monotonic() >= deadline:
            raise AuditError(
                f"IAM had not finished generating the credential report after {wait:.0f}s; "
                "run again later, or with a longer --wait"
            )
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def main(args: argparse.Namespace) -> int:
    try:
        clients = AwsClients.create(args.region)
        report = wait_for_report(
            clients, wait=args.wait, max_age=timedelta(hours=args.max_report_age)
        )
        managed = managed_users(clients.secretsmanager)
    except AuditError as exc:
        print(f"keyrotor audit: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ClientError as exc:
        print(f"keyrotor audit: {error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except (BotoCoreError, CredentialReportError) as exc:
        print(f"keyrotor audit: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    findings = audit.judge(report, managed, now=datetime.now(UTC), max_age_days=args.max_age_days)
    if args.output == "json":
        sys.stdout.write(audit.render_json(findings, report, args.max_age_days))
    elif args.output == "csv":
        sys.stdout.write(audit.render_csv(findings))
    else:
        sys.stdout.write(audit.render_table(findings, report, args.max_age_days))
    violated = any(f.verdict == "violation" for f in findings)
    return EXIT_VIOLATION if violated else EXIT_OK
