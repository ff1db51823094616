"""Argo CD's view of AccessKeyRotation objects: deploy/argocd/health.lua, run in a real Lua 5.1
(Argo CD's gopher-lua implements 5.1) on objects captured from the real API server while the
operator drives them into each Ready reason it sets, and one whose generation it has not
observed yet. Nothing here is a hand-written status.

The captured bodies are written to the module's temporary folder (captured-objects.json) for
inspection.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor_sandbox.aws import LAMBDA_RETRIES
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "health.lua"
CRD_PATH = ROOT / "crds" / "keyrotor.io_accesskeyrotations.yaml"
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
# Keep a crashed rotation pending while captured; look for dead keys every 2 seconds.
KEYROTOR_ARGS = ("--stuck-after", "60", "--dead-key-check-interval", "2")

# What Argo CD must show for each state the operator reports.
EXPECTED = {
    "Ready": "Healthy",
    "RotationPending": "Progressing",
    "InvalidSpec": "Degraded",
    "NotAuthorized": "Degraded",
    "Conflict": "Degraded",
    "DeadKey": "Degraded",
    "KmsKeyNotAllowed": "Degraded",
    "UserNotFound": "Degraded",
    "AccessDenied": "Degraded",
    "AwsError": "Degraded",
    "Suspended": "Suspended",
    "SyncFailed": "Degraded",
    "GenerationNotObserved": "Progressing",
}


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the health check as Argo CD does: the object as the global ``obj``; a table back."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = python_to_lua(runtime, json.loads(json.dumps(obj)))
    result = runtime.execute(HEALTH_LUA.read_text())
    return {str(k): str(v) for k, v in result.items()}


def python_to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: python_to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([python_to_lua(runtime, v) for v in value])
    return value


class Captured:
    def __init__(self, keyrotor: Harness, folder: Path) -> None:
        self.keyrotor = keyrotor
        self.folder = folder
        self.objects: dict[str, dict[str, Any]] = {}

    def reason(self, ns: str, name: str, reason: str, timeout: float = 90) -> dict[str, Any]:
        """The object as the API server returns it once Ready has this reason for the current
        generation."""

        def probe() -> dict[str, Any] | None:
            obj = self.keyrotor.get(ns, name)
            condition = self.keyrotor.condition(obj, "Ready")
            status = (obj or {}).get("status") or {}
            current = status.get("observedGeneration") == (obj or {})["metadata"]["generation"]
            return obj if condition and condition["reason"] == reason and current else None

        obj = self.keyrotor.wait(probe, timeout, f"{ns}/{name} Ready reason {reason}")
        self.objects[reason] = obj
        return obj

    def save(self) -> None:
        (self.folder / "captured-objects.json").write_text(json.dumps(self.objects, indent=2))


def create_under_older_schema(keyrotor: Harness, ns: str, name: str, spec: dict[str, Any]) -> None:
    """Create the object while the CRD's rules for rotation.schedule are left out, then install
    the CRD from crds/ again: the object stays stored, as one made before a CRD upgrade."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    schedule = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["rotation"]["properties"]["schedule"]
    for rule in ("pattern", "x-kubernetes-validations"):
        schedule.pop(rule, None)
    looser = keyrotor.log_dir / "older-crd.yaml"
    looser.write_text(yaml.safe_dump(crd))
    keyrotor.kube.install_crds(looser)
    try:

        def created() -> bool:
            try:
                keyrotor.create(ns, name, spec)
                return True
            except ApiException as exc:
                assert exc.status == 422, exc.body
                return False  # the looser schema is not in force yet

        keyrotor.wait(created, 30, "the object under the looser schema")
    finally:
        keyrotor.kube.install_crds(CRD_PATH)


@contextlib.contextmanager
def secrets_refused_in(keyrotor: Harness, namespace: str) -> Iterator[None]:
    """While inside: the API server refuses (422) every Secret keyrotor writes in namespace."""
    name = f"keyrotor-test-refuse-{namespace}"
    admission = client.AdmissionregistrationV1Api(keyrotor.api)
    admission.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["secrets"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "object.metadata.namespace != '" + namespace + "'",
                        "message": "Secrets are refused in this namespace (test policy)",
                        "reason": "Invalid",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "objectSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "keyrotor"}}
                },
            },
        }
    )
    try:
        probe = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="probe", labels={"app.kubernetes.io/managed-by": "keyrotor"}
            )
        )

        def in_force() -> bool:
            try:
                keyrotor.core.create_namespaced_secret(namespace, probe)
            except ApiException as exc:
                assert exc.status == 422, exc.body
                return True
            keyrotor.core.delete_namespaced_secret("probe", namespace)
            return False  # the policy is not in force yet

        keyrotor.wait(in_force, 30, "the admission policy in force")
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


@pytest.fixture(scope="module")
def captured(
    keyrotor: Harness, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """Drive objects into every state and capture each from the API server."""
    capture = Captured(keyrotor, tmp_path_factory.mktemp("argocd"))
    aws = keyrotor.aws
    ns = keyrotor.namespace("argo")
    create: Callable[..., dict[str, Any]] = keyrotor.create

    # Ready, then a spec change the operator has not handled yet: the API server's answer to
    # the patch itself is the object with generation 2 and status of generation 1.
    ready_user = keyrotor.iam_user(namespaces=ns)
    create(ns, "ready", {"iamUser": ready_user})
    capture.reason(ns, "ready", "Ready")
    patched = keyrotor.custom.patch_namespaced_custom_object(
        "keyrotor.io",
        "v1alpha1",
        ns,
        "accesskeyrotations",
        "ready",
        {"spec": {"target": {"annotations": {"example.com/changed": "yes"}}}},
    )
    assert patched["metadata"]["generation"] == patched["status"]["observedGeneration"] + 1
    capture.objects["GenerationNotObserved"] = patched

    # Refusals that need a person.
    create(ns, "not-authorized", {"iamUser": keyrotor.iam_user()})
    capture.reason(ns, "not-authorized", "NotAuthorized")
    create(ns, "conflict", {"iamUser": ready_user})
    capture.reason(ns, "conflict", "Conflict")
    create(
        ns,
        "kms-key",
        {
            "iamUser": keyrotor.iam_user(namespaces=ns),
            "secretsManager": {"kmsKeyId": "alias/another-teams-key"},
        },
    )
    capture.reason(ns, "kms-key", "KmsKeyNotAllowed")
    create(ns, "no-user", {"iamUser": f"svc-{uuid.uuid4().hex[:8]}"})
    capture.reason(ns, "no-user", "UserNotFound")
    create(ns, "suspended", {"iamUser": keyrotor.iam_user(namespaces=ns), "suspend": True})
    capture.reason(ns, "suspended", "Suspended")

    # A spec the operator refuses: the first candidate the API server takes (the schema refuses
    # more and more of them; when it takes none, one is stored as under an older schema).
    candidates = [
        {"rotation": {"schedule": "rate(5 minutes)"}},
        {"rotation": {"schedule": "cron(bad"}},
    ]
    invalid_user = keyrotor.iam_user(namespaces=ns)
    for candidate in candidates:
        try:
            create(ns, "invalid", {"iamUser": invalid_user, **candidate})
            break
        except ApiException as exc:
            assert exc.status == 422, exc.body
    else:
        # The schema refuses them all: store one as an object kept from an older, looser
        # CustomResourceDefinition would be (the schedule's rules dropped, then put back).
        create_under_older_schema(
            keyrotor, ns, "invalid", {"iamUser": invalid_user, **candidates[0]}
        )
    capture.reason(ns, "invalid", "InvalidSpec")

    # AWS refuses: a missing permission, then another error.
    for name, error, reason in (
        ("denied", "AccessDeniedException", "AccessDenied"),
        ("aws-error", "LimitExceededException", "AwsError"),
    ):
        aws.faults.fail("CreateSecret", error=error, times=10**6)
        try:
            create(ns, name, {"iamUser": keyrotor.iam_user(namespaces=ns)})
            capture.reason(ns, name, reason)
        finally:
            aws.faults.clear()

    # The first key on its way: every attempt of the Lambda's createSecret crashes, so the
    # rotation stays pending until --stuck-after.
    aws.faults.crash_lambda("createSecret", times=LAMBDA_RETRIES + 1)
    try:
        create(ns, "pending", {"iamUser": keyrotor.iam_user(namespaces=ns)})
        capture.reason(ns, "pending", "RotationPending")
    finally:
        aws.faults.clear()

    # The mirrored key deleted outside keyrotor, found in IAM's credential report. The rotation
    # that replaces it crashes in every attempt, so the object stays in this state to be seen.
    dead_user = keyrotor.iam_user(namespaces=ns)
    create(ns, "dead-key", {"iamUser": dead_user})
    dead_key = capture.reason(ns, "dead-key", "Ready")["status"]["accessKeyId"]
    capture.objects.pop("Ready")
    aws.wait_for_rotations()
    aws.faults.crash_lambda("createSecret", times=LAMBDA_RETRIES + 1)
    try:
        aws.client("iam").delete_access_key(UserName=dead_user, AccessKeyId=dead_key)
        with contextlib.suppress(KeyError):  # no report yet: the next check makes one
            aws.age_credential_report(timedelta(hours=5))  # a new report on the next check
        capture.reason(ns, "dead-key", "DeadKey")
    finally:
        aws.faults.clear()
    capture.reason(ns, "ready", "Ready")  # the Ready sample stays the first object

    # The API server refuses the mirrored Secret: a ValidatingAdmissionPolicy (the API server's
    # own CEL admission) denies keyrotor's Secrets in one namespace.
    refusing = keyrotor.namespace("argo-refuse")
    with secrets_refused_in(keyrotor, refusing):
        create(refusing, "sync-failed", {"iamUser": keyrotor.iam_user(namespaces=refusing)})
        capture.reason(refusing, "sync-failed", "SyncFailed")

    capture.save()
    yield capture.objects


def test_every_state_was_captured(captured: dict[str, dict[str, Any]]) -> None:
    assert set(captured) == set(EXPECTED)


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_health_of_captured_object(captured: dict[str, dict[str, Any]], state: str) -> None:
    obj = captured[state]
    result = health(obj)
    assert result["status"] == EXPECTED[state], (state, result)
    ready = next((c for c in obj["status"]["conditions"] if c["type"] == "Ready"), None)
    assert ready is not None
    if state == "GenerationNotObserved":
        assert str(obj["metadata"]["generation"]) in result["message"]
    elif state != "Ready":
        # Argo CD shows keyrotor's own message, which says what to do.
        assert ready["message"] in result["message"]


def test_object_keyrotor_never_saw_is_progressing(keyrotor: Harness) -> None:
    """Created and read back before any operator could write status (the API server's answer
    to the create)."""
    ns = keyrotor.namespace("argo")
    created = keyrotor.create(ns, "fresh", {"iamUser": keyrotor.iam_user(namespaces=ns)})
    assert "status" not in created
    assert health(created)["status"] == "Progressing"


def test_argocd_cm_snippet_installs_this_lua() -> None:
    config = yaml.safe_load(ARGOCD_CM.read_text())
    assert config["kind"] == "ConfigMap" and config["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.keyrotor.io_AccessKeyRotation"
    assert config["data"][key] == HEALTH_LUA.read_text()
