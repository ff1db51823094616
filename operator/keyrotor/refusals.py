"""Refusals: each rule answers "may nothing be done for this object (yet), and why?". Pure.

They run before any action (check, then act): a refused object changes nothing, and its message
says what a person would do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from keyrotor.kms_keys import kms_key_problem
from keyrotor.mirroring import foreign_target_message, target_is_foreign
from keyrotor.model import (
    ADOPT_TAG,
    CLAIM_OBJECT_TAG,
    CLAIM_TAG,
    FINALIZER,
    TAG_CLUSTER,
    TAG_IAM_USER,
    TAG_INSTALLATION,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    Reason,
    Spec,
)
from keyrotor.observation import Observation
from keyrotor.tenancy import (
    Claim,
    ClaimDecision,
    authorization_problem,
    claim_decision,
    claim_value,
    conflicting_claim,
)


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str  # for the tenant: never another namespace's objects, uids or secret contents
    detail: str = ""  # for the operator log (administrators): who holds what
    recheck: float | None = None  # seconds; default: the recheck interval


# --- Refusals: each says why nothing may be done (yet) ------------------------------------------


def refuse_suspended(spec: Spec) -> Refusal | None:
    if spec.suspend:
        return Refusal(Reason.SUSPENDED, "spec.suspend is true: no rotation and no sync")
    return None


def refuse_kms_key(spec: Spec, obs: Observation) -> Refusal | None:
    """Only the KMS keys the installation allows: one team cannot have its secret encrypted
    with another team's key (the policies grant exactly the allowed keys)."""
    problem = kms_key_problem(spec.kms_key_id, obs.context.kms_keys)
    return Refusal(Reason.KMS_KEY_NOT_ALLOWED, problem) if problem else None


def refuse_unknown_user(spec: Spec, obs: Observation) -> Refusal | None:
    if obs.user is None:
        return Refusal(Reason.USER_NOT_FOUND, f"IAM user {spec.iam_user!r} does not exist")
    return None


def refuse_unauthorized(spec: Spec, obs: Observation) -> Refusal | None:
    problem = authorization_problem(
        namespace=obs.obj.namespace,
        iam_user=spec.iam_user,
        user_tags=obs.user.tags if obs.user else {},
        allowed_by_flag=obs.allowed_by_flag,
    )
    return Refusal(Reason.NOT_AUTHORIZED, problem) if problem else None


def claim_holder(spec: Spec, obs: Observation) -> tuple[ClaimDecision, Claim | None]:
    """Whether the user's claim tag names this object, may be taken by it, or is held."""
    tags = obs.user.tags if obs.user else {}
    mine = claim_value(obs.context.installation, obs.obj.uid)
    decision = claim_decision(
        mine=mine, held=tags.get(CLAIM_TAG), live_uids={c.uid for c in obs.claims}
    )
    if decision is not ClaimDecision.FREE:
        return decision, None
    me = Claim(obs.obj.namespace, obs.obj.name, obs.obj.uid, obs.obj.created)
    return decision, conflicting_claim(me, obs.claims)


def refuse_claimed(spec: Spec, obs: Observation) -> Refusal | None:
    """One IAM user, one object: the claim tag on the user decides; when it is free, the oldest
    object that wants the user (the index) takes it. The message names the holder only when it
    is in the same namespace; the log names it for administrators."""
    decision, winner = claim_holder(spec, obs)
    if decision is ClaimDecision.MOVED:
        return refuse_until_released(obs)
    if decision is ClaimDecision.MINE:
        return None
    if decision is ClaimDecision.FREE and winner is None:
        return None
    tags = obs.user.tags if obs.user else {}
    held = tags.get(CLAIM_TAG)
    holder = tags.get(CLAIM_OBJECT_TAG) or "?"
    if winner is not None:
        held = claim_value(obs.context.installation, winner.uid)
        holder = f"{winner.namespace}/{winner.name}"
    same_namespace = holder.partition("/")[0] == obs.obj.namespace and (
        (held or "").rpartition("/")[0] == obs.context.installation
    )
    by = f"AccessKeyRotation {holder}" if same_namespace else "another AccessKeyRotation"
    return Refusal(
        Reason.CONFLICT,
        f"IAM user {spec.iam_user!r} is already rotated by {by} (IAM tag {CLAIM_TAG}); one IAM "
        f"user is rotated by one object",
        detail=f"IAM user {spec.iam_user} is claimed by {holder} ({CLAIM_TAG}={held})",
    )


SHARD_RELEASE_RECHECK = 5.0  # seconds: the old shard lets go as soon as it sees the new labels


def refuse_until_released(obs: Observation) -> Refusal | None:
    """An object whose labels moved it here from another shard is taken over only once that
    shard has let it go: kopf takes a shard's finalizer off an object its filters no longer
    match, so the old shard's finalizer on the object means it may still act on it (it has not
    seen the new labels yet, it is down, or the two shards' selectors overlap). The unsharded
    operator's finalizer is no hold: it stays on objects from before sharding (see deletion)."""
    holders = sorted(
        f
        for f in obs.obj.finalizers
        if f.startswith(f"{FINALIZER}-") and f != obs.context.finalizer
    )
    if not holders:
        return None
    return Refusal(
        Reason.CONFLICT,
        f"this object's labels moved it from another keyrotor shard, which still holds it "
        f"(finalizer {holders[0]}): it lets go when it sees the new labels; if that shard no "
        f"longer runs, or its selector matches this object too, fix the shards' selectors, or "
        f"remove the finalizer",
        detail=f"waiting for finalizers {holders} to leave before taking over the claim",
        recheck=SHARD_RELEASE_RECHECK,
    )


# --- Which Secrets Manager secret is this object's own -----------------------------------------


class Ownership(Enum):
    ABSENT = "Absent"  # no secret of that name: it may be created (under the namespace's path)
    OWN = "Own"  # this object's tags
    RETAINED = "Retained"  # this installation's, same namespace, name and user: kept by Retain
    HANDED_OVER = "HandedOver"  # an AWS administrator tagged it keyrotor.io/adopt=<ns>/<name>
    FOREIGN = "Foreign"  # another object's, or another installation's
    UNMANAGED = "Unmanaged"  # no keyrotor tags and not handed over: somebody else's secret


KEYROTOR_TAGS = (TAG_CLUSTER, TAG_INSTALLATION, TAG_NAMESPACE, TAG_NAME, TAG_UID, TAG_IAM_USER)


def secret_ownership(obs: Observation) -> Ownership:
    secret, want = obs.secret, obs.context.secret_tags
    if secret is None:
        return Ownership.ABSENT
    have = secret.tags
    if not any(k in have for k in KEYROTOR_TAGS):
        handed = have.get(ADOPT_TAG) == f"{obs.obj.namespace}/{obs.obj.name}"
        return Ownership.HANDED_OVER if handed else Ownership.UNMANAGED
    same_object = all(have.get(k) == want.get(k) for k in (TAG_NAMESPACE, TAG_NAME)) and (
        have.get(TAG_IAM_USER, "").lower() == want.get(TAG_IAM_USER, "").lower()
    )
    if same_object and have.get(TAG_UID) == want.get(TAG_UID):
        return Ownership.OWN  # object uids are unique: made by this object
    if same_object and have.get(TAG_INSTALLATION) == want.get(TAG_INSTALLATION):
        return Ownership.RETAINED
    return Ownership.FOREIGN


def refuse_secret_not_own(spec: Spec, obs: Observation) -> Refusal | None:
    """keyrotor touches only secrets it owns: this object's, the one an earlier object of the
    same namespace, name and user retained, or one an AWS administrator handed over. Anything
    else is refused and left as it was (and its value is never read)."""
    name, ownership = spec.secret_name, secret_ownership(obs)
    handover = (
        f"an AWS administrator can hand an existing secret to this object with the tag "
        f"{ADOPT_TAG}={obs.obj.namespace}/{obs.obj.name} (aws secretsmanager tag-resource "
        f"--secret-id {name} --tags Key={ADOPT_TAG},Value={obs.obj.namespace}/{obs.obj.name})"
    )
    if ownership is Ownership.FOREIGN:
        return Refusal(
            Reason.CONFLICT,
            f"Secrets Manager secret {name} belongs to another AccessKeyRotation; choose another "
            f"spec.secretsManager.secretName",
            detail=f"secret {name} is tagged {dict(obs.secret.tags) if obs.secret else {}}",
        )
    if ownership is Ownership.UNMANAGED:
        return Refusal(
            Reason.NOT_AUTHORIZED,
            f"Secrets Manager secret {name} exists and was not made by keyrotor for this object; "
            f"keyrotor leaves it alone: {handover}",
        )
    outside = not name.startswith(obs.context.namespace_path)
    if ownership is Ownership.ABSENT and outside:
        return Refusal(
            Reason.NOT_AUTHORIZED,
            f"spec.secretsManager.secretName {name!r} is outside this namespace's path "
            f"{obs.context.namespace_path!r}: choose a name under it, or {handover}",
        )
    return None


def refuse_key_of_another_user(spec: Spec, obs: Observation) -> Refusal | None:
    """The secret's username must be the object's IAM user, before anything is written."""
    key = obs.key
    if key is not None and key.username.lower() != spec.iam_user.lower():
        return Refusal(
            Reason.CONFLICT,
            f"Secrets Manager secret {spec.secret_name} holds a key of another IAM user, not "
            f"{spec.iam_user!r}; keyrotor leaves it alone",
            detail=f"secret {spec.secret_name} holds a key of IAM user {key.username!r}",
        )
    return None


def refuse_foreign_target(spec: Spec, obs: Observation) -> Refusal | None:
    """A Secret of the target's name that is not this object's, before anything was mirrored.
    (One that replaced the mirrored Secret later is a sync failure: see mirroring.)"""
    if target_is_foreign(obs) and not obs.obj.status.get("versionId"):
        return Refusal(Reason.CONFLICT, foreign_target_message(spec, obs))
    return None


REFUSALS = (
    refuse_kms_key,
    refuse_unknown_user,
    refuse_unauthorized,
    refuse_claimed,
    refuse_secret_not_own,
    refuse_key_of_another_user,
    refuse_foreign_target,
)
