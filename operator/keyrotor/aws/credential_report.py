"""IAM's credential report: every user's access keys, their state and last use, in O(1) calls.

AWS's format, as documented in "Getting credential reports for your AWS account"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_getting-report.html) and the API
reference (https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetCredentialReport.html):

- ``GenerateCredentialReport`` answers ``State`` ``STARTED`` (a generation began),
  ``INPROGRESS`` or ``COMPLETE``. A report younger than four hours is not generated again: the
  call answers ``COMPLETE`` and the existing report stays.
- ``GetCredentialReport`` answers ``Content`` (CSV; base64 on the wire, bytes in boto3),
  ``GeneratedTime`` and ``ReportFormat`` ``text/csv``, or fails with ``ReportNotPresent`` (410:
  generate one), ``ReportInProgress`` (404: still being generated) or ``ReportExpired`` (410:
  generate a new one). The content is a snapshot as of ``GeneratedTime``: keys created, deleted or
  deactivated later are not in it.
- One CSV row per user, the account's root user first (user ``<root_account>``), with the columns
  ``user, arn, user_creation_time, password_enabled, password_last_used, password_last_changed,
  password_next_rotation, mfa_active``, then for N = 1 and 2 ``access_key_N_active,
  access_key_N_last_rotated, access_key_N_last_used_date, access_key_N_last_used_region,
  access_key_N_last_used_service``, then ``cert_1_active, cert_1_last_rotated, cert_2_active,
  cert_2_last_rotated``. Columns are read by name, so added ones do no harm.
- Values: ``true``/``false``; ISO 8601 times with an offset (``2024-05-01T08:09:10+00:00``), to
  the second; ``N/A`` (no such key, never used, or used before tracking began in April 2015);
  ``not_supported`` (the root user's password columns); ``no_information`` (a password never used).
- ``access_key_N_last_rotated`` is the key's creation time (``CreateDate``); the report holds no
  access key ids, so a key is found by its creation time, to the second (:func:`key_state`).

Getting a report never sleeps: :func:`fetch_report` returns None while one is being generated
("not ready, ask again later"). Calls: one ``GetCredentialReport`` per check, plus one
``GenerateCredentialReport`` (and the next check's Get) when the report is missing or older than
``max_age``, whatever the number of users or objects (a ``max_age`` under AWS's four hours only
adds a Generate per check that answers COMPLETE). :func:`key_created` reads a key's CreateDate
(one ``ListAccessKeys``), to be kept from the time the key is mirrored.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from keyrotor.aws.clients import error_code

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

ROOT_USER = "<root_account>"
# AWS generates a new report only when the last one is older than this.
REGENERATION_AGE = timedelta(hours=4)
NOT_READY_CODES = frozenset({"ReportInProgress"})
ABSENT_CODES = frozenset({"ReportNotPresent", "ReportExpired"})
_NO_VALUE = frozenset({"", "n/a", "not_supported", "no_information"})
_KEY_COLUMNS = ("active", "last_rotated", "last_used_date")
_REQUIRED = ("user", "arn", *(f"access_key_{n}_{c}" for n in (1, 2) for c in _KEY_COLUMNS))

KeyState = Literal["active", "inactive", "gone", "user-gone", "unknown"]


class CredentialReportError(ValueError):
    """The report is not in AWS's documented format (names the column or value)."""


@dataclass(frozen=True)
class KeySlot:
    """One of a user's two access key slots (``access_key_1_*`` or ``access_key_2_*``)."""

    slot: int
    active: bool
    last_rotated: datetime | None  # the key's CreateDate; None: no key in this slot
    last_used_date: datetime | None  # None: never used (or no key)
    last_used_region: str | None = None
    last_used_service: str | None = None

    @property
    def present(self) -> bool:
        return self.last_rotated is not None


@dataclass(frozen=True)
class ReportRow:
    user: str
    arn: str
    user_creation_time: datetime | None
    keys: tuple[KeySlot, KeySlot]

    @property
    def is_root(self) -> bool:
        return self.user == ROOT_USER

    @property
    def present_keys(self) -> tuple[KeySlot, ...]:
        return tuple(key for key in self.keys if key.present)


@dataclass(frozen=True)
class CredentialReport:
    generated: datetime  # GeneratedTime: the content is a snapshot as of then
    rows: tuple[ReportRow, ...]
    _by_name: Mapping[str, ReportRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {row.user.casefold(): row for row in self.rows})

    def row(self, user: str) -> ReportRow | None:
        """The user's row; IAM user names are unique regardless of case."""
        return self._by_name.get(user.casefold())


def to_second(moment: datetime) -> datetime:
    """UTC, to the second: the report's resolution (CreateDate may carry more)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _time(value: str, column: str) -> datetime | None:
    if value.strip().casefold() in _NO_VALUE:
        return None
    try:
        return to_second(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise CredentialReportError(
            f"credential report: {column} is not a time: {value!r}"
        ) from None


def _flag(value: str, column: str) -> bool:
    text = value.strip().casefold()
    if text in ("true", "false"):
        return text == "true"
    if text in _NO_VALUE:
        return False
    raise CredentialReportError(f"credential report: {column} is not true/false: {value!r}")


def _text(value: str | None) -> str | None:
    return None if value is None or value.strip().casefold() in _NO_VALUE else value.strip()


def _slot(record: Mapping[str, str], n: int) -> KeySlot:
    prefix = f"access_key_{n}_"
    return KeySlot(
        slot=n,
        active=_flag(record[prefix + "active"], prefix + "active"),
        last_rotated=_time(record[prefix + "last_rotated"], prefix + "last_rotated"),
        last_used_date=_time(record[prefix + "last_used_date"], prefix + "last_used_date"),
        last_used_region=_text(record.get(prefix + "last_used_region")),
        last_used_service=_text(record.get(prefix + "last_used_service")),
    )


def parse_report(content: bytes | str, generated: datetime) -> CredentialReport:
    """Parse the CSV of GetCredentialReport into typed rows (see the module docstring)."""
    text = content.decode("utf-8-sig") if isinstance(content, bytes) else content
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in _REQUIRED if column not in (reader.fieldnames or [])]
    if missing:
        raise CredentialReportError(f"credential report lacks the column(s) {', '.join(missing)}")
    rows = []
    for record in reader:
        rows.append(
            ReportRow(
                user=record["user"],
                arn=record["arn"],
                user_creation_time=_time(
                    record.get("user_creation_time") or "", "user_creation_time"
                ),
                keys=(_slot(record, 1), _slot(record, 2)),
            )
        )
    return CredentialReport(generated=to_second(generated), rows=tuple(rows))


def fetch_report(
    iam: IAMClient, *, now: datetime, max_age: timedelta = REGENERATION_AGE
) -> CredentialReport | None:
    """The account's credential report, or None while one is being generated (ask again later).

    A report older than ``max_age`` (or none, or an expired one) makes this start a generation
    and return None; AWS generates at most one report per four hours, so a smaller ``max_age``
    still gets the existing report. Never sleeps. Other AWS errors propagate.
    """
    try:
        response = iam.get_credential_report()
    except Exception as exc:
        code = error_code(exc)
        if code in NOT_READY_CODES:
            return None
        if code not in ABSENT_CODES:
            raise
        return _generate_then_get(iam)
    report = parse_report(response["Content"], response["GeneratedTime"])
    if to_second(now) - report.generated <= max_age:
        return report
    # Too old: AWS starts a new one (None: not ready yet) or, within its four hours, keeps it.
    return _generate_then_get(iam, existing=report)


def _generate_then_get(
    iam: IAMClient, existing: CredentialReport | None = None
) -> CredentialReport | None:
    state = iam.generate_credential_report().get("State")
    if state != "COMPLETE":
        return None  # STARTED or INPROGRESS: the next check gets it
    if existing is not None:
        return existing  # not generated again: the report in hand is the current one
    try:
        response = iam.get_credential_report()
    except Exception as exc:
        if error_code(exc) in NOT_READY_CODES | ABSENT_CODES:
            return None
        raise
    return parse_report(response["Content"], response["GeneratedTime"])


def key_created(iam: IAMClient, user: str, access_key_id: str) -> datetime | None:
    """The key's CreateDate (how the report knows it), or None when the user or key is gone.

    One ListAccessKeys: call it once per new key (when it is mirrored) and keep the answer,
    not at every check.
    """
    try:
        keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    created = next((k["CreateDate"] for k in keys if k["AccessKeyId"] == access_key_id), None)
    return to_second(created) if created is not None else None


def key_state(report: CredentialReport, user: str, key_created: datetime) -> KeyState:
    """What the report says of ``user``'s access key created at ``key_created`` (its CreateDate).

    - ``active`` / ``inactive``: the key is in the user's row, with that status;
    - ``gone``: the user's row has no key created then: the key was deleted;
    - ``user-gone``: the report has no row for the user: the user was deleted;
    - ``unknown``: the report cannot tell: it was generated before the key was created (ask
      again after the next report), or two keys of the user were created in the same second
      with different states.
    """
    created = to_second(key_created)
    row = report.row(user)
    matches = {key.active for key in (row.keys if row else ()) if key.last_rotated == created}
    if len(matches) == 1:
        return "active" if matches.pop() else "inactive"
    if matches or created >= report.generated:
        return "unknown"
    return "user-gone" if row is None else "gone"
