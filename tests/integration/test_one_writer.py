"""One writer per object: the sync loop, a reconcile and a Secret repair acting on one object at
the same time end in one consistent outcome (no duplicate Events, no lost status field).

The operator's own modules run in this process (no kopf), against the real API server (as the
operator's RBAC identity) and the AWS emulator.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor import claims, errors, reconcile, sync
from keyrotor.aws import policies
from keyrotor.installation import Installation, Target
from keyrotor.k8s import objects
from keyrotor.k8s.client import KubeApis
from keyrotor.k8s.events import post_event
from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from tests.fixtures.aws import emulator_clients

pytestmark = pytest.mark.kube


@pytest.fixture
def runtime(aws: Any, operator_rbac: Any, kube_operator_api: Any) -> Iterator[Runtime]:
    settings = Settings(cluster_name=f"w{uuid.uuid4().hex[:8]}", stuck_after=120)
    clients = emulator_clients(aws)
    kube = KubeApis(
        core=client.CoreV1Api(kube_operator_api),
        custom=client.CustomObjectsApi(kube_operator_api),
        apps=client.AppsV1Api(kube_operator_api),
    )
    # The operator creates the rotation role only with its permissions boundary, which an
    # administrator creates once (keyrotor policy --document boundary).
    params = policies.PolicyParams(
        cluster_name=settings.cluster_name, region=aws.region, account_id=aws.account_id
    )
    aws.client("iam").create_policy(
        PolicyName=policies.boundary_name(settings.cluster_name),
        PolicyDocument=json.dumps(policies.permissions_boundary(params)),
    )
    installation = Installation(settings, clients, Target(aws.account_id, "aws"))
    yield Runtime(
        settings=settings,
        aws=clients,
        kube=kube,
        installation=installation,
        emit=partial(post_event, kube),
    )


def _object(kube_admin_api: Any, namespace: str, user: str, rt: Runtime) -> None:
    """The object, then the operator's start-up list of the claims (keyrotor.claims)."""
    client.CustomObjectsApi(kube_admin_api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AccessKeyRotation",
            "metadata": {"name": "app"},
            "spec": {"iamUser": user, "previousKey": {"action": "Keep"}},
        },
    )
    claims.resync(rt.kube, rt.claims, (namespace,))


def _status(rt: Runtime, namespace: str) -> dict[str, Any]:
    return dict((objects.get_object(rt.kube, namespace, "app") or {}).get("status") or {})


def _events(kube_admin_api: Any, namespace: str) -> list[tuple[str, str]]:
    items = client.CoreV1Api(kube_admin_api).list_namespaced_event(namespace).items
    return [(e.reason, e.message) for e in items]


def _all_at_once(*calls: Callable[[], None]) -> None:
    barrier = threading.Barrier(len(calls))
    failures: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def test_sync_loop_reconcile_and_repair_at_once_agree(
    runtime: Runtime, aws: Any, kube_admin_api: Any, namespace: str
) -> None:
    rt = runtime
    user = f"user-{uuid.uuid4().hex[:10]}"
    aws.create_iam_user(user, tags={"keyrotor.io/namespaces": namespace})
    _object(kube_admin_api, namespace, user, rt)
    reconcile.converge(rt, namespace, "app")  # claim, installation, secret, first rotation
    aws.wait_for_rotations(timeout=60)
    reconcile.converge(rt, namespace, "app")  # the first key mirrored
    first = _status(rt, namespace)
    assert first.get("accessKeyId"), first

    for round_ in range(3):
        # A rotation from outside, and a hand edit of the mirrored Secret, both waiting.
        aws.client("secretsmanager").rotate_secret(SecretId=first["secretArn"])
        aws.wait_for_rotations(timeout=60)
        core = client.CoreV1Api(kube_admin_api)
        core.patch_namespaced_secret("app", namespace, {"data": {"AWS_ACCESS_KEY_ID": "ZWRpdA=="}})
        edited = core.read_namespaced_secret("app", namespace).to_dict()
        before = _status(rt, namespace)
        events_before = _events(kube_admin_api, namespace)

        _all_at_once(
            sync.SyncLoop(rt).sweep,
            lambda: reconcile.converge(rt, namespace, "app"),
            partial(sync.target_secret_changed, rt, namespace, "app", edited, deleted=False),
        )

        after = _status(rt, namespace)
        new = [e for e in _events(kube_admin_api, namespace) if e not in events_before]
        # Exactly one Event for the rotation, none for a repair of an edit it overwrote anyway.
        mirrored = [m for r, m in new if r == "Synced" and "new key" in m]
        assert len(mirrored) == 1, (round_, new)
        assert len(new) == len(set(new)), new
        # Every status field is there and tells one story.
        assert after["versionId"] != before["versionId"]
        assert after["accessKeyId"] != before["accessKeyId"]
        assert after["previousKey"]["accessKeyId"] == before["accessKeyId"]
        for field in ("secretArn", "lambdaArn", "lastSyncTime", "effective", "lastRotationTime"):
            assert after.get(field), (field, after)
        assert after["accessKeyId"] in mirrored[0]
        secret = core.read_namespaced_secret("app", namespace)
        assert secret.metadata.annotations["keyrotor.io/version-id"] == after["versionId"]


def test_status_written_from_a_stale_read_is_refused(
    runtime: Runtime, aws: Any, kube_admin_api: Any, namespace: str
) -> None:
    rt = runtime
    user = f"user-{uuid.uuid4().hex[:10]}"
    aws.create_iam_user(user)  # not authorized: one decision, no AWS writes
    _object(kube_admin_api, namespace, user, rt)
    stale = objects.get_object(rt.kube, namespace, "app")
    assert stale is not None
    client.CustomObjectsApi(kube_admin_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "app", {"metadata": {"labels": {"touched": "yes"}}}
    )
    with pytest.raises(errors.ConflictError):
        objects.patch_status(
            rt.kube,
            namespace,
            "app",
            {"lastSyncTime": "2026-01-01T00:00:00Z"},
            resource_version=stale["metadata"]["resourceVersion"],
        )
    # A decision reads again: it writes from the fresh object.
    reconcile.converge(rt, namespace, "app")
    status = _status(rt, namespace)
    assert status["conditions"][0]["reason"] == "NotAuthorized"
    assert "lastSyncTime" not in status
    try:
        client.CustomObjectsApi(kube_admin_api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "app"
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_events_of_a_decision_that_lost_its_status_write_are_still_posted(
    runtime: Runtime, aws: Any, kube_admin_api: Any, namespace: str, monkeypatch: Any
) -> None:
    """A decision acts, then its status write meets a real change to the object (409): it is
    decided again from the fresh object, and the Events of what the first one did are posted
    all the same, once (the second decision finds the rotation requested and requests none)."""
    rt = runtime
    user = f"user-{uuid.uuid4().hex[:10]}"
    aws.create_iam_user(user, tags={"keyrotor.io/namespaces": namespace})
    _object(kube_admin_api, namespace, user, rt)
    reconcile.converge(rt, namespace, "app")
    aws.wait_for_rotations(timeout=60)
    reconcile.converge(rt, namespace, "app")
    arn = _status(rt, namespace)["secretArn"]
    custom = client.CustomObjectsApi(kube_admin_api)
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "app",
        {"metadata": {"annotations": {"keyrotor.io/rotate-now": "1"}}},
    )
    rotations_before = len(aws.rotations_of(arn))
    real_patch_status = objects.patch_status
    edits = []

    def patch_status_after_an_edit(*args: Any, **kwargs: Any) -> Any:
        if not edits:  # someone edits the object between the decision's read and its write
            edits.append(
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    "app",
                    {"metadata": {"labels": {"edited": "yes"}}},
                )
            )
        return real_patch_status(*args, **kwargs)

    monkeypatch.setattr(objects, "patch_status", patch_status_after_an_edit)
    reconcile.converge(rt, namespace, "app")

    assert edits, "the status write never ran"
    requested = [
        m
        for r, m in _events(kube_admin_api, namespace)
        if r == "RotationRequested" and "rotate-now" in m
    ]
    assert len(requested) == 1, _events(kube_admin_api, namespace)
    assert _status(rt, namespace)["rotateNowHandled"] == "1"
    aws.wait_for_rotations(timeout=60)
    assert len(aws.rotations_of(arn)) == rotations_before + 1  # requested once
