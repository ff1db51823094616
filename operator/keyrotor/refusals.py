"""Refusals: each rule answers "may nothing be done for this object (yet), and why?". Pure.

They run before any action (check, then act): a refused object changes nothing, and its message
says what a person would do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyrotor.kms_keys import kms_key_problem
from keyrotor.model import CLAIM_OBJECT_TAG, CLAIM_TAG, TAG_UID, Reason, Spec
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
    message: str


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
    mine = claim_value(obs.context.cluster_name, obs.obj.uid)
    decision = claim_decision(
        mine=mine, held=tags.get(CLAIM_TAG), live_uids={c.uid for c in obs.claims}
    )
    if decision is not ClaimDecision.FREE:
        return decision, None
    me = Claim(obs.obj.namespace, obs.obj.name, obs.obj.uid, obs.obj.created)
    return decision, conflicting_claim(me, obs.claims)


def refuse_claimed(spec: Spec, obs: Observation) -> Refusal | None:
    """One IAM user, one object: the claim tag on the user decides; when it is free, the oldest
    object that wants the user (the index) takes it."""
    decision, winner = claim_holder(spec, obs)
    if decision is ClaimDecision.MINE or (decision is ClaimDecision.FREE and winner is None):
        return None
    tags = obs.user.tags if obs.user else {}
    held = tags.get(CLAIM_TAG)
    holder = tags.get(CLAIM_OBJECT_TAG) or "?"
    if winner is not None:
        held = claim_value(obs.context.cluster_name, winner.uid)
        holder = f"{winner.namespace}/{winner.name}"
    holder_cluster = (held or "").rpartition("/")[0]
    return Refusal(
        Reason.CONFLICT,
        f"IAM user {spec.iam_user!r} is already claimed by AccessKeyRotation {holder} of keyrotor "
        f"installation {holder_cluster!r} (IAM tag {CLAIM_TAG}={held}); one IAM user is rotated "
        f"by one object",
    )


def refuse_foreign_secret(spec: Spec, obs: Observation) -> Refusal | None:
    """The Secrets Manager secret of that name belongs to another object or to nobody we know."""
    secret = obs.secret
    if secret is None:
        return None
    want = obs.context.secret_tags
    owner = secret.tags.get(TAG_UID)
    if owner is not None and owner != want.get(TAG_UID):
        return Refusal(
            Reason.CONFLICT,
            f"Secrets Manager secret {spec.secret_name} belongs to {TAG_UID}={owner}",
        )
    same = all(secret.tags.get(k) == v for k, v in want.items() if k != TAG_UID)
    if owner is None and secret.tags and not same:
        return Refusal(
            Reason.CONFLICT,
            f"Secrets Manager secret {spec.secret_name} exists and is not managed by this keyrotor "
            f"installation",
        )
    return None


def refuse_key_of_another_user(spec: Spec, obs: Observation) -> Refusal | None:
    if obs.key is not None and obs.key.access_key_id and obs.key.username != spec.iam_user:
        arn = obs.secret.arn if obs.secret else spec.secret_name
        return Refusal(
            Reason.CONFLICT,
            f"secret {arn} holds a key of IAM user {obs.key.username!r}, not {spec.iam_user!r}",
        )
    return None


def refuse_foreign_target(spec: Spec, obs: Observation) -> Refusal | None:
    if obs.target is not None and obs.target.exists and not obs.target.owned:
        return Refusal(
            Reason.CONFLICT,
            f"Secret {obs.obj.namespace}/{spec.target_secret_name} exists and is not managed by "
            f"this AccessKeyRotation; delete it or choose another spec.target.secretName",
        )
    return None


REFUSALS = (
    refuse_kms_key,
    refuse_unknown_user,
    refuse_unauthorized,
    refuse_claimed,
    refuse_foreign_secret,
    refuse_key_of_another_user,
    refuse_foreign_target,
)
