"""Spec validation rows shared by tests/unit/test_model.py (parse_spec) and
tests/integration/test_crd.py (the CRD's schema and CEL rules in the real API server): both must
accept and refuse the same rows, for the same field and reason."""

from __future__ import annotations

from typing import Any

VALID_SCHEDULES: list[Any] = [
    "rate(4 hours)",
    "rate(5 hour)",
    "rate(1 day)",
    "rate(30 days)",
    "rate(1000 days)",
    "cron(0 4 1 * ? *)",
    "cron(0 4/12 * * ? *)",
    "cron(0 0 ? * SUN#1 *)",
    "cron(0 16 L * ? *)",
    "cron(0 8 1/7 JAN-JUN ? *)",
    "cron(0 2 ? * MON-FRI *)",
]
INVALID_SCHEDULES: list[Any] = [
    ("rate(3 hours)", "between 4 hours and 1000 days"),
    ("rate(0 days)", "between 4 hours and 1000 days"),
    ("rate(1001 days)", "between 4 hours and 1000 days"),
    ("rate(9999999999 days)", "between 4 hours and 1000 days"),
    ("rate(99999999999999999999999 hours)", "between 4 hours and 1000 days"),
    ("rate(30 minutes)", "rate(N hours) or rate(N days)"),
    ("rate(1 week)", "rate(N hours) or rate(N days)"),
    ("rate(thirty days)", "rate(N hours) or rate(N days)"),
    ("cron(0 4 1 * ?)", "six fields"),
    ("cron(0 4 1 * ? * *)", "six fields"),
    ("cron(15 4 1 * ? *)", "six fields"),
    ("cron(0 4 1 * ? 2027)", "six fields"),
    ("cron(0 4 1 * 1 *)", "exactly one of Day-of-month and Day-of-week"),
    ("cron(0 4 ? * ? *)", "exactly one of Day-of-month and Day-of-week"),
    ("cron(0 4 1 * ? *) ", "six fields"),
    (" rate(1 day)", "rate(N hours|days) or cron(...)"),
    ("every day", "rate(N hours|days) or cron(...)"),
]
# (labels, annotations): valid keys and values by Kubernetes' rules.
VALID_TARGET_METADATA: list[Any] = [
    ({"app": "billing", "tier": ""}, {}),
    ({"example.com/team": "a-b_c.d", "a": "x" * 63}, {}),
    ({f"{'p' * 253}/{'n' * 63}": "v"}, {"kubectl.kubernetes.io/note": "any text: é, /, spaces"}),
    ({}, {"a.b-c.example/Name_1.x": "", "n": "x" * 1000}),
]
INVALID_TARGET_METADATA: list[Any] = [
    ({"bad key": "v"}, {}, "spec.target.labels"),
    ({"-app": "v"}, {}, "spec.target.labels"),
    ({"n" * 64: "v"}, {}, "spec.target.labels"),
    ({f"{'p' * 254}/n": "v"}, {}, "spec.target.labels"),
    ({"Example.com/n": "v"}, {}, "spec.target.labels"),
    ({"a/b/c": "v"}, {}, "spec.target.labels"),
    ({"/n": "v"}, {}, "spec.target.labels"),
    ({"app": "x" * 64}, {}, "spec.target.labels"),
    ({"app": "has space"}, {}, "spec.target.labels"),
    ({"app": "-dash"}, {}, "spec.target.labels"),
    ({}, {"bad key": "v"}, "spec.target.annotations"),
    ({}, {"example.com/": "v"}, "spec.target.annotations"),
    ({f"k{i}": "v" for i in range(65)}, {}, "spec.target.labels"),
]
# (rotation, previousKey.after or None for the default 24h, valid?)
AFTER_VERSUS_INTERVAL: list[Any] = [
    ({}, None, True),
    ({}, "89d", True),
    ({}, "90d", False),
    ({"interval": "30d"}, "720h", False),
    ({"interval": "30d"}, "719h", True),
    ({"interval": "2d"}, None, True),
    ({"interval": "1d"}, None, False),
    ({"interval": "4h"}, None, False),
    ({"interval": "4h"}, "14399s", True),
    ({"interval": "4h"}, "240m", False),
    ({"schedule": "rate(12 hours)"}, "11h", True),
    ({"schedule": "rate(12 hours)"}, "12h", False),
    ({"schedule": "rate(1 day)"}, None, False),
    ({"schedule": "rate(2 days)"}, None, True),
    ({"schedule": "cron(0 4 * * ? *)"}, "30d", True),  # cron: left to the operator
]
