"""``keyrotor audit`` names the object that manages a key, from the secrets the operator made."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def test_audit_marks_the_key_of_an_object_as_managed_by_it(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    status = keyrotor.wait_ready(ns, "app")["status"]
    # A report of the last four hours would predate this key: AWS would not make a new one.
    with contextlib.suppress(KeyError):
        keyrotor.aws.age_credential_report(timedelta(hours=5))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KEYROTOR_"))}
    result = subprocess.run(
        [sys.executable, "-m", "keyrotor.cli", "audit", "--output", "json"],
        env={**env, **keyrotor.aws.environ()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # other modules' keys may be judged too
    keys = [k for k in json.loads(result.stdout)["keys"] if k["user"] == user]
    created = keyrotor.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in created] == [status["accessKeyId"]]
    assert len(keys) == 1
    (key,) = keys
    assert key["managedBy"] == [f"{keyrotor.cluster_name}/{ns}/app"]
    assert (key["state"], key["ageDays"], key["verdict"]) == ("Active", 0, "ok")
