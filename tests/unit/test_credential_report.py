"""The credential report parser and key_state, on reports in AWS's documented format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from keyrotor.aws.credential_report import (
    ROOT_USER,
    CredentialReport,
    CredentialReportError,
    key_state,
    parse_report,
)

HEADER = (
    "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,"
    "password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,"
    "access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,"
    "access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,"
    "access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,"
    "cert_1_last_rotated,cert_2_active,cert_2_last_rotated"
)
ROOT = (
    "<root_account>,arn:aws:iam::123456789012:root,2014-09-01T22:28:48+00:00,not_supported,"
    "2024-05-01T10:00:00+00:00,not_supported,not_supported,true,false,N/A,N/A,N/A,N/A,"
    "false,N/A,N/A,N/A,N/A,false,N/A,false,N/A"
)
# Two keys: the first inactive and never used, the second active, used from us-east-1 by s3.
BILLING = (
    "billing,arn:aws:iam::123456789012:user/billing,2020-01-02T03:04:05+00:00,false,N/A,N/A,"
    "N/A,false,false,2024-01-10T12:00:00+00:00,N/A,N/A,N/A,"
    "true,2024-04-01T08:30:15+00:00,2024-05-02T09:00:00+00:00,us-east-1,s3,false,N/A,false,N/A"
)
# No key at all; a password that was never used.
CONSOLE = (
    "console,arn:aws:iam::123456789012:user/console,2021-06-07T08:09:10+00:00,true,"
    "no_information,2021-06-07T08:09:10+00:00,N/A,true,false,N/A,N/A,N/A,N/A,"
    "false,N/A,N/A,N/A,N/A,false,N/A,false,N/A"
)
GENERATED = datetime(2024, 5, 3, tzinfo=UTC)


def report(*rows: str, header: str = HEADER, generated: datetime = GENERATED) -> CredentialReport:
    return parse_report(("\n".join([header, *rows]) + "\n").encode(), generated)


def test_rows_are_typed_and_the_root_user_is_marked() -> None:
    parsed = report(ROOT, BILLING, CONSOLE)
    assert parsed.generated == GENERATED
    root, billing, console = parsed.rows
    assert root.user == ROOT_USER and root.is_root and root.present_keys == ()
    assert root.arn == "arn:aws:iam::123456789012:root"
    assert not billing.is_root
    assert billing.user_creation_time == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    first, second = billing.keys
    assert (first.slot, first.active, first.last_used_date) == (1, False, None)
    assert first.last_rotated == datetime(2024, 1, 10, 12, tzinfo=UTC)
    assert (first.last_used_region, first.last_used_service) == (None, None)
    assert (second.slot, second.active) == (2, True)
    assert second.last_rotated == datetime(2024, 4, 1, 8, 30, 15, tzinfo=UTC)
    assert second.last_used_date == datetime(2024, 5, 2, 9, tzinfo=UTC)
    assert (second.last_used_region, second.last_used_service) == ("us-east-1", "s3")
    assert console.present_keys == ()
    assert [key.present for key in console.keys] == [False, False]


def test_columns_are_read_by_name_so_order_and_new_columns_do_no_harm() -> None:
    columns = HEADER.split(",")
    values = BILLING.split(",")
    order = list(reversed(range(len(columns))))
    header = ",".join([columns[i] for i in order] + ["a_new_column"])
    row = ",".join([values[i] for i in order] + ["whatever"])
    (billing,) = report(row, header=header).rows
    assert billing.user == "billing"
    assert billing.keys[1].last_used_service == "s3"


def test_upper_case_booleans_and_z_times_are_accepted() -> None:
    row = BILLING.replace("true,2024-04-01T08:30:15+00:00", "TRUE,2024-04-01T08:30:15Z")
    (billing,) = report(row).rows
    assert billing.keys[1].active
    assert billing.keys[1].last_rotated == datetime(2024, 4, 1, 8, 30, 15, tzinfo=UTC)


def test_times_in_other_offsets_become_utc() -> None:
    row = BILLING.replace("2024-04-01T08:30:15+00:00", "2024-04-01T10:30:15+02:00")
    (billing,) = report(row).rows
    assert billing.keys[1].last_rotated == datetime(2024, 4, 1, 8, 30, 15, tzinfo=UTC)


def test_a_missing_column_is_named() -> None:
    header = HEADER.replace("access_key_2_last_rotated", "something_else")
    with pytest.raises(CredentialReportError, match="access_key_2_last_rotated"):
        report(BILLING, header=header)


@pytest.mark.parametrize(
    ("old", "new", "column"),
    [
        ("true,2024-04-01T08:30:15+00:00", "yes,2024-04-01T08:30:15+00:00", "access_key_2_active"),
        ("2024-04-01T08:30:15+00:00", "last tuesday", "access_key_2_last_rotated"),
    ],
)
def test_a_bad_value_is_named(old: str, new: str, column: str) -> None:
    with pytest.raises(CredentialReportError, match=column):
        report(BILLING.replace(old, new))


def test_a_byte_order_mark_is_ignored() -> None:
    content = ("\ufeff" + HEADER + "\n" + BILLING + "\n").encode()
    assert parse_report(content, GENERATED).rows[0].user == "billing"


# key_state: one row per answer -------------------------------------------------------------------

FIRST = datetime(2024, 1, 10, 12, tzinfo=UTC)  # billing's inactive key
SECOND = datetime(2024, 4, 1, 8, 30, 15, tzinfo=UTC)  # billing's active key


@pytest.mark.parametrize(
    ("user", "created", "state"),
    [
        ("billing", SECOND, "active"),
        ("billing", FIRST, "inactive"),
        # CreateDate carries microseconds and may come in another zone: matched to the second
        ("billing", SECOND + timedelta(microseconds=481_000), "active"),
        ("billing", SECOND.astimezone(timezone(timedelta(hours=-5))), "active"),
        ("billing", SECOND.replace(tzinfo=None), "active"),  # naive means UTC
        ("BILLING", SECOND, "active"),  # IAM user names are unique regardless of case
        ("billing", SECOND - timedelta(seconds=1), "gone"),  # deleted before the report
        ("console", FIRST, "gone"),  # the user has no key at all
        ("deleted-user", SECOND, "user-gone"),
        ("billing", GENERATED + timedelta(minutes=5), "unknown"),  # newer than the report
        ("deleted-user", GENERATED, "unknown"),  # created in the report's second
    ],
)
def test_key_state(user: str, created: datetime, state: str) -> None:
    assert key_state(report(ROOT, BILLING, CONSOLE), user, created) == state


def test_key_state_with_two_keys_of_one_second_and_different_states_is_unknown() -> None:
    same = BILLING.replace("2024-01-10T12:00:00+00:00", "2024-04-01T08:30:15+00:00")
    assert key_state(report(same), "billing", SECOND) == "unknown"
    both_active = same.replace("false,false,2024-04-01", "false,true,2024-04-01")
    assert key_state(report(both_active), "billing", SECOND) == "active"
