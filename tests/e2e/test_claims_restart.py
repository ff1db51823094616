"""Claims across a restart: the operator starts over objects that already exist, and its claims
map (keyrotor.claims, filled by one list before any decision) tells a live claim from a stale
one from the first decision on."""

from __future__ import annotations

import pytest

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

CLAIM = "keyrotor.io/claimed-by"
FILLERS = 20  # objects listed between the newcomer and the holder (kopf lists by name)


def test_restart_never_takes_a_live_claim_for_stale(keyrotor: Harness) -> None:
    ns = keyrotor.namespace()
    held_user = keyrotor.iam_user(namespaces=ns)
    stale_user = keyrotor.iam_user(namespaces=ns)
    holder = keyrotor.create(ns, "z-holder", {"iamUser": held_user})
    keyrotor.create(ns, "z-gone", {"iamUser": stale_user})
    before = keyrotor.wait_ready(ns, "z-holder")["status"]
    keyrotor.wait_ready(ns, "z-gone")
    keyrotor.aws.wait_for_rotations()
    keys_before = keyrotor.user_keys(held_user)
    keyrotor.operator.stop()

    # While the operator is down: an object that wants the held user, sorted (and so listed
    # and handled) before its holder; objects in between; and the other user's object deleted
    # without its finalizer, which leaves a claim that is stale indeed.
    keyrotor.create(ns, "a-newcomer", {"iamUser": held_user.upper()})
    for i in range(FILLERS):
        keyrotor.create(ns, f"m-filler-{i:02d}", {"iamUser": f"no-such-user-{i}"})
    keyrotor.patch(ns, "z-gone", {"metadata": {"finalizers": None}})
    keyrotor.delete(ns, "z-gone")
    keyrotor.wait(lambda: keyrotor.get(ns, "z-gone") is None, what="z-gone deleted")
    keyrotor.create(ns, "b-taker", {"iamUser": stale_user})

    keyrotor.start_operator()
    keyrotor.wait_condition(ns, "a-newcomer", "Ready", "False", "Conflict")
    taker = keyrotor.wait_ready(ns, "b-taker")  # the stale claim was taken: the restart decided
    assert keyrotor.user_tags(stale_user)[CLAIM] == (
        f"{keyrotor.installation_id}/{taker['metadata']['uid']}"
    )

    # The live claim held: the holder still rotates its user, the newcomer made nothing.
    assert keyrotor.user_tags(held_user)[CLAIM] == (
        f"{keyrotor.installation_id}/{holder['metadata']['uid']}"
    )
    after = keyrotor.wait_ready(ns, "z-holder")["status"]
    assert after["accessKeyId"] == before["accessKeyId"]
    assert keyrotor.user_keys(held_user) == keys_before
    newcomer = keyrotor.get(ns, "a-newcomer") or {}
    assert "secretArn" not in (newcomer.get("status") or {})
    assert (keyrotor.condition(newcomer, "Ready") or {}).get("reason") == "Conflict"
    reasons = keyrotor.event_reasons(ns, "a-newcomer")
    assert not {"RotationEnabled", "RotationRequested", "Synced"} & set(reasons), reasons
