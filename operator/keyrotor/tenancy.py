"""Tenancy: who may claim an IAM user, and which object holds the claim. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from keyrotor.conditions import find_condition
from keyrotor.model import NAMESPACES_TAG, ConditionType, Reason
from keyrotor.shards import installation_of


def namespaces_from_tag(value: str) -> set[str]:
    return {part for part in re.split(r"[,\s]+", value) if part}


def authorization_problem(
    *, namespace: str, iam_user: str, user_tags: Mapping[str, str], allowed_by_flag: bool
) -> str | None:
    """None when namespace may claim iam_user; otherwise a message that says what to add."""
    if allowed_by_flag:
        return None
    listed = namespaces_from_tag(user_tags.get(NAMESPACES_TAG, ""))
    if "*" in listed or namespace in listed:
        return None
    current = user_tags.get(NAMESPACES_TAG)
    hint = (
        f"the tag is {current!r}; add {namespace!r} to it"
        if current is not None
        else f"add the tag {NAMESPACES_TAG}={namespace}"
    )
    return (
        f"IAM user {iam_user!r} does not allow namespace {namespace!r}: {hint} on the IAM user "
        f"(aws iam tag-user --user-name {iam_user} --tags Key={NAMESPACES_TAG},Value=...), "
        f"or start keyrotor with --allow {namespace}:{iam_user}"
    )


@dataclass(frozen=True)
class Claim:
    """One object's claim on an IAM user, as held in the in-memory index."""

    namespace: str
    name: str
    uid: str
    created: str  # creationTimestamp; the oldest claim wins
    holding: bool = False  # already admitted: it has a secret and is not refused as a Conflict
    # Served by this process's shard. Objects of other shards count as alive (their claims are
    # never stale), but only this shard's objects compete for a free user here: across shards
    # the claim tag, written once and read back, decides.
    in_shard: bool = True


def holds_claim(status: Mapping[str, Any]) -> bool:
    """The object already works for its IAM user (its status says so)."""
    ready = find_condition(status.get("conditions"), ConditionType.READY)
    refused = ready is not None and ready.get("reason") == Reason.CONFLICT
    return bool(status.get("secretArn")) and not refused


def conflicting_claim(me: Claim, claims: Sequence[Claim]) -> Claim | None:
    """The claim that wins over mine for the same IAM user, if any.

    A claim already held wins, then the oldest, then the lowest uid. creationTimestamp has
    one-second resolution: without the first rule, an object created in the same second as the
    one already at work could win by its uid and both would rotate the same user.
    """
    me = next((c for c in claims if c.uid == me.uid), me)  # the index knows whether I hold it
    others = [c for c in claims if c.uid != me.uid and c.in_shard]
    winner = min([me, *others], key=lambda c: (not c.holding, c.created, c.uid))
    return None if winner.uid == me.uid else winner


class ClaimDecision(Enum):
    MINE = "Mine"  # the user's claim tag names this object
    FREE = "Free"  # no claim, or a stale one of this installation (shard): may be taken
    # This very object's claim, written by another shard of this installation before the
    # object's labels moved it here: taken over (the other shard no longer serves it).
    MOVED = "Moved"
    TAKEN = "Taken"  # another live object (or another installation) holds it


def installation_id(cluster_name: str, cluster_uid: str) -> str:
    """Unique per cluster without configuration: the kube-system namespace's uid, with the
    cluster name as a readable label. Two clusters that share a name never share an id."""
    return f"{cluster_name}@{cluster_uid}" if cluster_uid else cluster_name


def claim_value(installation: str, uid: str) -> str:
    return f"{installation}/{uid}"


def claim_decision(*, mine: str, held: str | None, live_uids: set[str]) -> ClaimDecision:
    """Read the IAM user's claim tag. It is the authority on who rotates the user: the
    in-memory index cannot see objects that are not indexed yet, nor other installations.

    ``mine`` and ``held`` are ``<identity>/<object uid>``; an identity is the installation id,
    with ``:<shard>`` for a shard (keyrotor.shards). Only a claim of my own identity can be
    stale; another shard's claim is never taken, except the one that names this very object
    (object uids are unique): its labels moved it here (MOVED). It is taken once the shard that
    wrote it has let the object go (refusals.refuse_until_released: its finalizer is off)."""
    if held == mine:
        return ClaimDecision.MINE
    if held is None:
        return ClaimDecision.FREE
    held_identity, _, held_uid = held.rpartition("/")
    my_identity, _, my_uid = mine.rpartition("/")
    if held_identity == my_identity and held_uid not in live_uids:
        return ClaimDecision.FREE  # its object is gone (deleted without its finalizer)
    if held_uid == my_uid and installation_of(held_identity) == installation_of(my_identity):
        return ClaimDecision.MOVED
    return ClaimDecision.TAKEN
