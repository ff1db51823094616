"""keyrotor's claims map without any network (keyrotor.claims.ClaimsMap): what a decision sees of
which objects want which IAM user, before and after kopf's events and a second list."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from keyrotor.claims import ClaimsMap, Listed, claim_of, listing_due
from keyrotor.errors import NotReadyError
from keyrotor.shards import LabelSelector, Shard

CREATED = "2026-01-01T00:00:00Z"


def body(
    name: str,
    user: str,
    *,
    uid: str | None = None,
    namespace: str = "ns",
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "creationTimestamp": CREATED,
            "labels": labels or {},
        },
        "spec": {"iamUser": user},
        "status": status or {},
    }


def listed(claims: ClaimsMap, *bodies: dict[str, Any]) -> Listed:
    out: Listed = {}
    for b in bodies:
        found = claim_of(b, claims.shard)
        assert found is not None
        out[found[0]] = (found[1], found[2])
    return out


def fill(claims: ClaimsMap, *bodies: dict[str, Any]) -> None:
    """The start-up list."""
    since = claims.begin_listing()
    claims.listed(since, listed(claims, *bodies), None)


def uids(claims: ClaimsMap, user: str) -> set[str]:
    return {c.uid for c in claims.claims_for(user)}


HOLDING = {"secretArn": "arn:x", "conditions": [{"type": "Ready", "reason": "Ready"}]}


def test_no_decision_reads_the_map_before_it_was_filled() -> None:
    claims = ClaimsMap()
    claims.observe(body("a", "svc"), deleted=False)  # kopf's events alone are not the whole
    with pytest.raises(NotReadyError):
        claims.claims_for("svc")
    fill(claims, body("a", "svc"))
    assert uids(claims, "svc") == {"uid-a"}


def test_a_claim_says_who_wants_the_user_in_any_spelling_and_whether_it_holds_it() -> None:
    shard = Shard(name="b", selector=LabelSelector.parse("shard=b"))
    claims = ClaimsMap(shard)
    fill(
        claims,
        body("held", "Svc", labels={"shard": "b"}, status=HOLDING),
        body("elsewhere", "SVC", labels={"shard": "a"}),
        body("other", "another"),
    )
    by_name = {c.name: c for c in claims.claims_for("svc")}
    assert set(by_name) == {"held", "elsewhere"}
    assert by_name["held"].holding and by_name["held"].in_shard
    assert not by_name["elsewhere"].holding and not by_name["elsewhere"].in_shard
    assert by_name["held"].created == CREATED and by_name["held"].namespace == "ns"
    refused = {"secretArn": "arn:x", "conditions": [{"type": "Ready", "reason": "Conflict"}]}
    claims.observe(body("held", "svc", labels={"shard": "b"}, status=refused), deleted=False)
    assert not {c.name: c for c in claims.claims_for("svc")}["held"].holding


def test_kopf_events_move_and_remove_claims() -> None:
    claims = ClaimsMap()
    fill(claims, body("a", "one"), body("b", "one"))
    claims.observe(body("a", "two"), deleted=False)  # its spec now names another user
    assert uids(claims, "one") == {"uid-b"}
    assert uids(claims, "two") == {"uid-a"}
    claims.observe(body("b", "one"), deleted=True)
    assert claims.claims_for("one") == ()
    claims.observe(body("c", "one"), deleted=False)  # created after the list
    assert uids(claims, "one") == {"uid-c"}
    assert len(claims) == 2
    assert claims.unwatched() == 0  # kopf has reported every object now


def test_an_object_deleted_between_the_start_up_list_and_kopfs_is_dropped_by_the_next_list() -> (
    None
):
    claims = ClaimsMap()
    gone, alive = body("gone", "svc"), body("alive", "svc")
    fill(claims, gone, alive)  # start-up list
    assert claims.unwatched() == 2
    claims.observe(alive, deleted=False)  # kopf's list: "gone" was deleted in between
    assert claims.unwatched() == 1
    assert uids(claims, "svc") == {"uid-gone", "uid-alive"}  # still a claimant: never too few
    since = claims.begin_listing()
    outcome = claims.listed(since, listed(claims, alive), None)
    assert (outcome.removed, outcome.added) == (1, 0)
    assert uids(claims, "svc") == {"uid-alive"}
    assert claims.unwatched() == 0


def test_a_second_list_keeps_what_kopf_reported_after_it_began() -> None:
    claims = ClaimsMap()
    fill(claims, body("old", "svc"))
    since = claims.begin_listing()
    # While the list is under way: kopf reports a new object and a change (holding now).
    claims.observe(body("new", "svc"), deleted=False)
    claims.observe(body("old", "svc", status=HOLDING), deleted=False)
    claims.listed(since, listed(claims, body("old", "svc")), None)  # taken before both
    by_name = {c.name: c for c in claims.claims_for("svc")}
    assert set(by_name) == {"old", "new"}
    assert by_name["old"].holding  # kopf's word is the newer one


def test_an_object_deleted_while_the_list_was_under_way_does_not_come_back() -> None:
    claims = ClaimsMap()
    doomed = body("doomed", "svc")
    fill(claims, doomed)
    since = claims.begin_listing()
    claims.observe(doomed, deleted=True)
    claims.listed(since, listed(claims, doomed), None)  # the list was taken before the delete
    assert claims.claims_for("svc") == ()


def test_a_list_of_some_namespaces_says_nothing_about_the_others() -> None:
    claims = ClaimsMap()
    fill(claims, body("a", "svc", namespace="team-a"), body("b", "svc", namespace="team-b"))
    since = claims.begin_listing()
    claims.listed(since, {}, ["team-a"])
    assert uids(claims, "svc") == {"uid-b"}


def test_the_list_updates_what_kopf_last_said_before_it_began() -> None:
    claims = ClaimsMap()
    fill(claims, body("a", "svc"))
    claims.observe(body("a", "svc"), deleted=False)
    since = claims.begin_listing()
    claims.listed(since, listed(claims, body("a", "renamed", status=HOLDING)), None)
    assert claims.claims_for("svc") == ()
    (claim,) = claims.claims_for("renamed")
    assert claim.holding
    assert claims.unwatched() == 0  # kopf had reported it: still its object


def test_a_body_without_uid_is_ignored() -> None:
    claims = ClaimsMap()
    claims.observe({"metadata": {"name": "x"}, "spec": {"iamUser": "svc"}}, deleted=False)
    fill(claims)
    assert claims.claims_for("svc") == ()


@pytest.mark.parametrize(
    ("unwatched", "seen", "left", "full_due", "due"),
    [
        (0, 0, 0, False, False),  # kopf reported every object
        (5, 9, 0, False, False),  # kopf is still working through its list
        (5, 5, 0, False, True),  # no longer falling: what is left may be gone
        (5, 5, 5, False, False),  # the last list left these: alive, kopf will report them
        (5, None, 0, False, False),  # the first look
        (0, 0, 0, True, True),  # the periodic list
    ],
)
def test_when_to_list_again(
    unwatched: int, seen: int | None, left: int, full_due: bool, due: bool
) -> None:
    assert listing_due(unwatched=unwatched, seen=seen, left=left, full_due=full_due) is due


def test_readers_never_miss_a_claimant_while_others_change() -> None:
    """Decisions read from many threads while kopf's events change the map: the one object
    that does not change is in every answer, and no reader fails."""
    claims = ClaimsMap()
    fill(claims, body("steady", "svc", status=HOLDING))
    stop = threading.Event()
    failures: list[BaseException] = []
    answers = [0]

    def churn() -> None:
        i = 0
        while not stop.is_set():
            name = f"churn-{i % 50}"
            claims.observe(body(name, "svc"), deleted=i % 3 == 0)
            claims.observe(body(name, f"other-{i % 7}"), deleted=False)
            i += 1

    def read() -> None:
        try:
            for _ in range(2000):
                assert "uid-steady" in uids(claims, "SVC")
                answers[0] += 1
        except BaseException as exc:  # reported below
            failures.append(exc)

    writer = threading.Thread(target=churn)
    readers = [threading.Thread(target=read) for _ in range(4)]
    writer.start()
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    stop.set()
    writer.join()
    assert failures == []
    assert answers[0] == 8000
