"""Issue 8, case 8: bad input is refused where it is cheapest, before anything exists in AWS.

Before, invalid ``target.labels`` keys were accepted by the API server; the operator then made an
IAM key and the Secrets Manager secret, failed to write the Secret, and reported ``SyncFailed``
with the bare message ``ApiException``; schedule expressions were not checked at all. Now the
CRD refuses them (and ``parse_spec`` checks the same rules again before the first write): the
object is never stored, so no secret, no key and no rotation is made for it, while an object
next to it works as usual. The full rule tables are in tests/integration/test_crd.py and
tests/unit/test_model.py.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

# Every AWS call that would create or change something for an object.
WRITES = (
    "CreateSecret",
    "TagResource",
    "RotateSecret",
    "PutSecretValue",
    "UpdateSecretVersionStage",
    "CreateAccessKey",
    "DeleteAccessKey",
    "UpdateAccessKey",
    "TagUser",
)


def _refused(keyrotor: Harness, ns: str, name: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as refused:
        keyrotor.create(ns, name, spec)
    assert refused.value.status == 422, refused.value.body
    assert keyrotor.get(ns, name) is None
    return str(json.loads(refused.value.body)["message"])


def _writes(keyrotor: Harness) -> Counter[str]:
    return Counter(c.operation for c in keyrotor.aws.calls.snapshot() if c.operation in WRITES)


def _nothing_in_aws_for(keyrotor: Harness, ns: str, name: str, user: str) -> None:
    sm = keyrotor.aws.client("secretsmanager")
    secret_name = f"keyrotor/{keyrotor.cluster_name}/{ns}/{name}"
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.describe_secret(SecretId=secret_name)
    assert keyrotor.user_keys(user) == {}
    assert not any(
        r.secret_arn.split(":")[-1].startswith(secret_name) for r in keyrotor.aws.rotations
    )
    assert keyrotor.secret(ns, name) is None


def test_bad_input_is_refused_before_anything_is_made_in_aws(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    # An object that works, so the operator is known to be up and acting in this namespace.
    good_user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "good", {"iamUser": good_user, "target": {"labels": {"team": "a"}}})
    good = keyrotor.wait_ready(ns, "good")
    keyrotor.aws.wait_for_rotations(timeout=60)
    before = _writes(keyrotor)

    user = keyrotor.iam_user(namespaces=ns)
    # Invalid label key and value (the case the issue saw), and annotation key.
    message = _refused(
        keyrotor, ns, "bad-labels", {"iamUser": user, "target": {"labels": {"bad key": "v"}}}
    )
    assert "spec.target.labels" in message and "every key must be" in message
    message = _refused(
        keyrotor, ns, "bad-value", {"iamUser": user, "target": {"labels": {"a": "x" * 64}}}
    )
    assert "spec.target.labels.a" in message
    message = _refused(
        keyrotor, ns, "bad-note", {"iamUser": user, "target": {"annotations": {"-x": "ok"}}}
    )
    assert "spec.target.annotations" in message and "every key must be" in message
    # A cron expression AWS would refuse (five fields), and a rate under four hours.
    message = _refused(
        keyrotor, ns, "bad-cron", {"iamUser": user, "rotation": {"schedule": "cron(0 4 * * ?)"}}
    )
    assert "spec.rotation.schedule" in message and "six fields" in message
    message = _refused(
        keyrotor, ns, "bad-rate", {"iamUser": user, "rotation": {"schedule": "rate(2 hours)"}}
    )
    assert "between 4 hours and 1000 days" in message
    # A grace period that the next rotation would cut short, given and by default.
    message = _refused(
        keyrotor,
        ns,
        "long-grace",
        {"iamUser": user, "rotation": {"interval": "7d"}, "previousKey": {"after": "7d"}},
    )
    assert "spec.previousKey.after" in message
    assert "previousKey.after (7d) must be shorter than the rotation interval (7d)" in message
    message = _refused(
        keyrotor, ns, "short-rate", {"iamUser": user, "rotation": {"interval": "12h"}}
    )
    assert "previousKey.after (24h, the default) must be shorter" in message

    for name in ("bad-labels", "bad-value", "bad-note", "bad-cron", "bad-rate", "long-grace"):
        _nothing_in_aws_for(keyrotor, ns, name, user)

    # An update to a working object is refused the same way; it keeps its spec, Secret and key.
    with pytest.raises(ApiException) as refused:
        keyrotor.patch(ns, "good", {"spec": {"target": {"labels": {"team": "a", "no/pe/x": "v"}}}})
    assert refused.value.status == 422
    with pytest.raises(ApiException) as refused:
        keyrotor.patch(ns, "good", {"spec": {"rotation": {"schedule": "cron(30 4 1 * ? *)"}}})
    assert refused.value.status == 422
    after = keyrotor.get(ns, "good")
    assert after is not None and after["metadata"]["generation"] == good["metadata"]["generation"]
    assert keyrotor.condition(after, "Ready")["status"] == "True"
    secret = keyrotor.secret(ns, "good")
    assert secret is not None and secret.metadata.labels["team"] == "a"
    assert keyrotor.user_keys(good_user) == {good["status"]["accessKeyId"]: "Active"}

    # Not one AWS write happened for any of it.
    assert _writes(keyrotor) == before
