"""The key's CreateDate as the rotation Lambda stores it beside the key (issue 10: no
ListAccessKeys per mirrored key), read only when it names the very key it stands beside."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keyrotor.aws.secrets import stored_key_created

KEY = "AKIAEXAMPLE0000001"
WHEN = datetime(2026, 11, 29, 13, 48, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"keycreated": {"accesskey": KEY, "createdate": "2026-11-29T13:48:04Z"}}, WHEN),
        ({"keycreated": {"accesskey": KEY, "createdate": "2026-11-29T14:48:04+01:00"}}, WHEN),
        ({}, None),  # the classic function, an older Lambda: ListAccessKeys instead
        # the previous key's, copied over by a function that keeps the other fields
        (
            {
                "keycreated": {
                    "accesskey": "AKIAPREVIOUS0000001",
                    "createdate": "2026-01-01T00:00:00Z",
                }
            },
            None,
        ),
        ({"keycreated": {"accesskey": KEY, "createdate": "yesterday"}}, None),
        ({"keycreated": {"accesskey": KEY, "createdate": "2026-11-29T13:48:04"}}, None),  # no zone
        ({"keycreated": {"accesskey": KEY, "createdate": 1764424084}}, None),
        ({"keycreated": {"accesskey": KEY}}, None),
        ({"keycreated": "2026-11-29T13:48:04Z"}, None),
        ({"keycreated": [KEY, "2026-11-29T13:48:04Z"]}, None),
    ],
)
def test_the_stored_create_date_counts_only_for_its_own_key(
    value: dict[str, Any], expected: datetime | None
) -> None:
    assert stored_key_created(value, KEY) == expected


def test_no_key_no_date() -> None:
    value = {"keycreated": {"accesskey": "", "createdate": "2026-11-29T13:48:04Z"}}
    assert stored_key_created(value, "") is None
