"""Deleting an AccessKeyRotation: release the claim, apply the deletion policy, post Events.

Runs under the object's lock, like every other path that acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyrotor import policies
from keyrotor.aws import secrets
from keyrotor.executor import Done, execute
from keyrotor.k8s import objects
from keyrotor.model import FINALIZER, SpecError
from keyrotor.observation import object_view
from keyrotor.outcome import ReleaseClaim
from keyrotor.reconcile import parse
from keyrotor.runtime import Runtime
from keyrotor.status import post_events
from keyrotor.tenancy import claim_value


def finalize(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Errors propagate: kopf keeps the finalizer and tries again."""
    obj = object_view(body)
    with rt.index.lock(obj.namespace, obj.name):
        rt.index.remove(obj.namespace, obj.name)
        _release_and_apply_policy(rt, body)
        if rt.settings.shard.finalizer != FINALIZER:
            # An object from before sharding still carries the unsharded operator's finalizer,
            # which nobody else removes now: its claim and secret were this shard's to finish.
            objects.remove_finalizer(rt.kube, dict(body), FINALIZER)


def _release_and_apply_policy(rt: Runtime, body: Mapping[str, Any]) -> None:
    obj = object_view(body)
    try:
        spec = parse(rt, body)
    except SpecError:
        return  # never valid: nothing of ours can exist in AWS
    release = ReleaseClaim(iam_user=spec.iam_user, value=claim_value(rt.claim_identity, obj.uid))
    observed = secrets.describe(rt.aws.secretsmanager, spec.secret_name)
    plan = policies.deletion_plan(spec, observed, uid=obj.uid)
    done = Done()
    execute(rt, obj, [release, *plan.actions], None, done)
    post_events(rt, body, [*done.events, *plan.events])
