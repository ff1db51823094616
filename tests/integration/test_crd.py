"""The AccessKeyRotation CRD and the install manifests.

The first part needs no server: the schema is structural, every field is described (so
`kubectl explain` teaches it), nothing under spec has a server-side default, and deploy/ renders.
The second part (marked ``kube``) installs the CRD in the real API server and proves what the
schema and its CEL rules accept and refuse, that the status subresource and printer columns work,
and that deploy/base/rbac.yaml grants the operator what it needs.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.spec_rows import (
    AFTER_VERSUS_INTERVAL,
    INVALID_SCHEDULES,
    INVALID_TARGET_METADATA,
    VALID_SCHEDULES,
    VALID_TARGET_METADATA,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "keyrotor.io_accesskeyrotations.yaml"
RBAC_PATH = ROOT / "deploy" / "base" / "rbac.yaml"
EXAMPLE_PATH = ROOT / "deploy" / "examples" / "accesskeyrotation.yaml"
HELM_CHART = ROOT / "deploy" / "helm" / "keyrotor"
HELM_CRD_PATH = HELM_CHART / "crds" / CRD_PATH.name
HELM_RULES_PATH = HELM_CHART / "files" / "operator-rules.yaml"

GROUP = "keyrotor.io"
VERSION = "v1alpha1"
PLURAL = "accesskeyrotations"
OPERATOR_USER = "system:serviceaccount:keyrotor-system:keyrotor"

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def crd_version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` with its path, the way `kubectl explain` names fields."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


# --------------------------------------------------------------------------------------------
# Offline: no server needed.
# --------------------------------------------------------------------------------------------


def test_crd_names_scope_and_subresources() -> None:
    crd = load_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "AccessKeyRotation",
        "listKind": "AccessKeyRotationList",
        "plural": PLURAL,
        "singular": "accesskeyrotation",
        "shortNames": ["akr"],
        "categories": ["keyrotor"],
    }
    version = crd_version(crd)
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_every_field_is_described() -> None:
    root = crd_version(load_crd())["schema"]["openAPIV3Schema"]
    undescribed = [
        path
        for path, node in schema_nodes(root, "accesskeyrotation")
        # metadata is Kubernetes' own ObjectMeta; the server documents it.
        if path != "accesskeyrotation.metadata" and not str(node.get("description", "")).strip()
    ]
    assert undescribed == []


def test_schema_is_structural() -> None:
    """Every node has a type, or says explicitly that it keeps unknown fields."""
    root = crd_version(load_crd())["schema"]["openAPIV3Schema"]
    untyped = [
        path
        for path, node in schema_nodes(root, "accesskeyrotation")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []
    # Only status.effective keeps unknown fields; status as a whole is pruned, so kopf must keep
    # its bookkeeping in annotations.
    preserving = [
        path
        for path, node in schema_nodes(root, "accesskeyrotation")
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == ["accesskeyrotation.status.effective"]


def test_no_server_side_defaults_anywhere() -> None:
    """A default makes the stored object differ from the applied one: GitOps drift forever."""
    root = crd_version(load_crd())["schema"]["openAPIV3Schema"]
    defaulted = [
        path for path, node in schema_nodes(root, "accesskeyrotation") if "default" in node
    ]
    assert defaulted == []


def test_every_spec_default_is_named_in_its_description() -> None:
    spec = crd_version(load_crd())["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = {
        "rotation.interval": "90d",
        "secretsManager.secretName": "keyrotor/<cluster-name>/<namespace>/<name>",
        "secretsManager.deletionPolicy": "Retain",
        "secretsManager.recoveryWindowDays": "Default 7",
        "target.secretName": "the name of this object",
        "target.profile": "default",
        "previousKey.action": "Deactivate",
        "previousKey.after": "24h",
        "suspend": "false",
    }
    for dotted, expected in fields.items():
        node = spec
        for part in dotted.split("."):
            node = node["properties"][part]
        assert expected in node["description"], dotted


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in crd_version(load_crd())["additionalPrinterColumns"]}
    assert {n: c["jsonPath"] for n, c in columns.items() if not c.get("priority")} == {
        "User": ".spec.iamUser",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Key": ".status.accessKeyId",
        "Last Rotation": ".status.lastRotationTime",
        "Next Rotation": ".status.nextRotationTime",
        "Age": ".metadata.creationTimestamp",
    }
    for name in ("Last Rotation", "Next Rotation", "Age"):
        assert columns[name]["type"] == "date"


def test_example_object_matches_the_crd() -> None:
    example = next(d for d in yaml.safe_load_all(EXAMPLE_PATH.read_text()) if d)
    assert example["apiVersion"] == f"{GROUP}/{VERSION}"
    assert example["kind"] == "AccessKeyRotation"
    spec_schema = crd_version(load_crd())["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(example["spec"]) <= set(spec_schema["properties"])


def test_helm_chart_ships_the_same_crd_and_operator_rules() -> None:
    """Helm can only read files inside the chart: its copies must not drift from the originals."""
    if not HELM_CRD_PATH.exists():
        pytest.skip("no Helm chart")
    assert HELM_CRD_PATH.read_text() == CRD_PATH.read_text()
    base = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(RBAC_PATH.read_text())
        if d and d["kind"] == "ClusterRole"
    }
    assert yaml.safe_load(HELM_RULES_PATH.read_text()) == base["keyrotor"]["rules"]
    restart = HELM_CHART / "files" / "restart-rules.yaml"
    assert yaml.safe_load(restart.read_text()) == base["keyrotor-restart-workloads"]["rules"]
    overlay = ROOT / "deploy" / "overlays" / "namespaced" / "namespaced-rbac.yaml"
    namespaced = {
        (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(overlay.read_text())
    }
    files = HELM_CHART / "files"
    assert (
        yaml.safe_load((files / "namespaced-rules.yaml").read_text())
        == namespaced[("Role", "keyrotor")]["rules"]
    )
    assert (
        yaml.safe_load((files / "namespaced-cluster-rules.yaml").read_text())
        == namespaced[("ClusterRole", "keyrotor-namespaced")]["rules"]
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not found")
def test_kustomize_base_renders() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "base")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    assert docs[("CustomResourceDefinition", f"{PLURAL}.{GROUP}")]["spec"] == load_crd()["spec"]
    assert ("Namespace", "keyrotor-system") in docs
    assert docs[("ServiceAccount", "keyrotor")]["metadata"]["namespace"] == "keyrotor-system"
    binding = docs[("ClusterRoleBinding", "keyrotor")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "keyrotor", "namespace": "keyrotor-system"}
    ]

    deployment = docs[("Deployment", "keyrotor")]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "keyrotor"
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == ["keyrotor", "run"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KEYROTOR_METRICS_PORT"] == str(ports["metrics"])
    assert env["KEYROTOR_HEALTH_PORT"] == str(ports["health"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    config_map_name = container["envFrom"][0]["configMapRef"]["name"]
    config = next(
        d for (kind, name), d in docs.items() if kind == "ConfigMap" and name == config_map_name
    )
    assert "KEYROTOR_CLUSTER_NAME" in config["data"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


# --------------------------------------------------------------------------------------------
# Against the real API server.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_crd(kube_apiserver: Any, kube_admin_api: Any) -> dict[str, Any]:
    """The CRD from crds/ as the server holds it, brought up to date and served. Never deleted:
    the API server is shared by the session and other tests' objects depend on it."""
    from kubernetes import client

    kube_apiserver.install_crds(CRD_PATH)
    crd = client.ApiextensionsV1Api(kube_admin_api).read_custom_resource_definition(
        load_crd()["metadata"]["name"]
    )
    served: dict[str, Any] = kube_admin_api.sanitize_for_serialization(crd)
    return served


class Objects:
    """AccessKeyRotation objects in one test namespace, through the admin client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def body(self, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AccessKeyRotation",
            "metadata": {"name": name or f"akr-{uuid.uuid4().hex[:8]}"},
            "spec": spec,
        }

    def create(self, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        created: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.body(spec, name)
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return obj

    def patch(self, name: str, patch: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        patched: dict[str, Any] = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch, _content_type=content_type
        )
        return patched

    def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type=MERGE_PATCH,
        )
        return patched


def refusal(call: Callable[[], Any]) -> str:
    """The API server's message for a request that must be refused as invalid (422)."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 422, caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    return message


@pytest.fixture
def objects(kube_admin_api: Any, namespace: str, installed_crd: dict[str, Any]) -> Objects:
    return Objects(kube_admin_api, namespace)


FULL_SPEC: dict[str, Any] = {
    "iamUser": "billing-exporter",
    "rotation": {"interval": "30d", "window": "2h"},
    "secretsManager": {
        "secretName": "keyrotor/test/team-billing/billing-exporter",
        "kmsKeyId": "alias/keyrotor",
        "deletionPolicy": "Delete",
        "recoveryWindowDays": 14,
    },
    "target": {
        "secretName": "billing-exporter-aws",
        "profile": "billing",
        "labels": {"team": "billing"},
        "annotations": {"example.com/owner": "billing"},
    },
    "restartOnRotation": [
        {"kind": "Deployment", "name": "billing-exporter"},
        {"kind": "StatefulSet", "name": "billing-exporter"},
    ],
    "previousKey": {"action": "Delete", "after": "90m"},
    "suspend": False,
}


@pytest.mark.kube
class TestSchema:
    def test_minimal_object_is_stored_exactly_as_sent(self, objects: Objects) -> None:
        created = objects.create({"iamUser": "billing-exporter"})
        assert created["spec"] == {"iamUser": "billing-exporter"}
        assert "status" not in created

    def test_full_object_is_stored_exactly_as_sent(self, objects: Objects) -> None:
        created = objects.create(copy.deepcopy(FULL_SPEC))
        assert created["spec"] == FULL_SPEC

    def test_the_documented_example_is_accepted_unchanged(self, objects: Objects) -> None:
        example = next(d for d in yaml.safe_load_all(EXAMPLE_PATH.read_text()) if d)
        created = objects.create(copy.deepcopy(example["spec"]))
        assert created["spec"] == example["spec"]

    def test_schedule_is_accepted(self, objects: Objects) -> None:
        spec = {"iamUser": "u", "rotation": {"schedule": "cron(0 4 1 * ? *)", "window": "3h"}}
        assert objects.create(copy.deepcopy(spec))["spec"] == spec

    def test_interval_and_schedule_together_are_refused(self, objects: Objects) -> None:
        message = refusal(
            lambda: objects.create(
                {"iamUser": "u", "rotation": {"interval": "30d", "schedule": "rate(30 days)"}}
            )
        )
        assert "spec.rotation" in message
        assert "rotation.interval and rotation.schedule are mutually exclusive" in message

    @pytest.mark.parametrize("interval", ["4h", "5h", "1d", "90d", "24000h", "1000d", "0004h"])
    def test_interval_in_range_is_accepted(self, objects: Objects, interval: str) -> None:
        # previousKey.after must be shorter than the interval (the default 24h is not).
        spec = {"iamUser": "u", "rotation": {"interval": interval}, "previousKey": {"after": "1h"}}
        created = objects.create(spec)
        assert created["spec"]["rotation"] == {"interval": interval}

    @pytest.mark.parametrize("interval", ["0h", "1h", "3h", "0d", "1001d", "24001h", "999999d"])
    def test_interval_out_of_range_is_refused(self, objects: Objects, interval: str) -> None:
        message = refusal(
            lambda: objects.create({"iamUser": "u", "rotation": {"interval": interval}})
        )
        assert "spec.rotation.interval" in message
        assert "rotation.interval must be between 4h and 1000d" in message

    @pytest.mark.parametrize("interval", ["30", "30m", "2w", "d", "-5d", "1.5d"])
    def test_malformed_interval_is_refused_by_the_pattern(
        self, objects: Objects, interval: str
    ) -> None:
        message = refusal(
            lambda: objects.create({"iamUser": "u", "rotation": {"interval": interval}})
        )
        assert "spec.rotation.interval" in message
        assert "should match" in message
        # The CEL rule steps aside for malformed values instead of adding an evaluation error.
        assert "evaluation error" not in message

    @pytest.mark.parametrize("window", ["0h", "25h", "2d"])
    def test_window_out_of_range_is_refused(self, objects: Objects, window: str) -> None:
        message = refusal(lambda: objects.create({"iamUser": "u", "rotation": {"window": window}}))
        assert "spec.rotation.window" in message

    @pytest.mark.parametrize("schedule", ["every day", "cron()", "rate 30 days"])
    def test_malformed_schedule_is_refused(self, objects: Objects, schedule: str) -> None:
        message = refusal(
            lambda: objects.create({"iamUser": "u", "rotation": {"schedule": schedule}})
        )
        assert "spec.rotation.schedule" in message

    @pytest.mark.parametrize("days", [7, 30])
    def test_recovery_window_in_range_is_accepted(self, objects: Objects, days: int) -> None:
        created = objects.create({"iamUser": "u", "secretsManager": {"recoveryWindowDays": days}})
        assert created["spec"]["secretsManager"] == {"recoveryWindowDays": days}

    @pytest.mark.parametrize("days", [0, 6, 31])
    def test_recovery_window_out_of_range_is_refused(self, objects: Objects, days: int) -> None:
        message = refusal(
            lambda: objects.create({"iamUser": "u", "secretsManager": {"recoveryWindowDays": days}})
        )
        assert "spec.secretsManager.recoveryWindowDays" in message
        assert "recoveryWindowDays must be between 7 and 30" in message

    def test_iam_user_with_every_allowed_character_is_accepted(self, objects: Objects) -> None:
        user = "Svc_user+tag=a,b.c@d-1"
        assert objects.create({"iamUser": user})["spec"]["iamUser"] == user

    @pytest.mark.parametrize("user", ["", "has space", "slash/user", "ünïcode", "x" * 65])
    def test_bad_iam_user_is_refused(self, objects: Objects, user: str) -> None:
        message = refusal(lambda: objects.create({"iamUser": user}))
        assert "spec.iamUser" in message

    def test_missing_iam_user_is_refused(self, objects: Objects) -> None:
        message = refusal(lambda: objects.create({"suspend": True}))
        assert "spec.iamUser" in message
        assert "Required value" in message

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            (
                {"secretsManager": {"deletionPolicy": "Orphan"}},
                "spec.secretsManager.deletionPolicy",
            ),
            ({"previousKey": {"action": "Revoke"}}, "spec.previousKey.action"),
            (
                {"restartOnRotation": [{"kind": "Pod", "name": "x"}]},
                "spec.restartOnRotation[0].kind",
            ),
        ],
    )
    def test_bad_enum_is_refused(self, objects: Objects, spec: dict[str, Any], field: str) -> None:
        message = refusal(lambda: objects.create({"iamUser": "u", **spec}))
        assert field in message
        assert "Unsupported value" in message

    def test_restart_target_needs_kind_and_name_and_is_unique(self, objects: Objects) -> None:
        message = refusal(
            lambda: objects.create({"iamUser": "u", "restartOnRotation": [{"kind": "Deployment"}]})
        )
        assert "spec.restartOnRotation[0].name" in message
        duplicate = [{"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "a"}]
        message = refusal(lambda: objects.create({"iamUser": "u", "restartOnRotation": duplicate}))
        assert "Duplicate value" in message
        # Same name, other kind: a different workload.
        both = [{"kind": "Deployment", "name": "a"}, {"kind": "DaemonSet", "name": "a"}]
        assert (
            objects.create({"iamUser": "u", "restartOnRotation": both})["spec"]["restartOnRotation"]
            == both
        )

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            ({"previousKey": {"after": "1w"}}, "spec.previousKey.after"),
            ({"target": {"secretName": "Not_A_Secret_Name"}}, "spec.target.secretName"),
            ({"target": {"profile": "bad]profile"}}, "spec.target.profile"),
            ({"target": {"labels": {"a": 1}}}, "spec.target.labels.a"),
            ({"secretsManager": {"secretName": "has space"}}, "spec.secretsManager.secretName"),
            ({"suspend": "yes"}, "spec.suspend"),
        ],
    )
    def test_bad_values_are_refused(
        self, objects: Objects, spec: dict[str, Any], field: str
    ) -> None:
        message = refusal(lambda: objects.create({"iamUser": "u", **spec}))
        assert field in message

    def test_unknown_spec_fields_are_not_stored(self, objects: Objects) -> None:
        created = objects.create({"iamUser": "u", "rotationInterval": "30d"})
        assert created["spec"] == {"iamUser": "u"}


def _spec(rotation: dict[str, Any], after: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"iamUser": "u", "rotation": rotation, **extra}
    if after is not None:
        spec["previousKey"] = {"after": after}
    return spec


# parse_spec's message for a value that fails the field's pattern; the API server says "should
# match" (its own words for a pattern).
_PATTERN_PHRASE = "rate(N hours|days) or cron(...)"


@pytest.mark.kube
class TestValidation:
    """Issue 8, "validate where it is cheapest": the rows of tests/spec_rows.py, which
    tests/unit/test_model.py runs through parse_spec, accepted and refused alike by the server."""

    @pytest.mark.parametrize("schedule", VALID_SCHEDULES)
    def test_valid_schedules_are_accepted(self, objects: Objects, schedule: str) -> None:
        created = objects.create(_spec({"schedule": schedule}, "1h"))
        assert created["spec"]["rotation"] == {"schedule": schedule}

    @pytest.mark.parametrize(("schedule", "phrase"), INVALID_SCHEDULES)
    def test_invalid_schedules_are_refused(
        self, objects: Objects, schedule: str, phrase: str
    ) -> None:
        message = refusal(lambda: objects.create(_spec({"schedule": schedule}, "1h")))
        assert "spec.rotation.schedule" in message
        assert ("should match" if phrase == _PATTERN_PHRASE else phrase) in message, message
        assert "evaluation error" not in message

    @pytest.mark.parametrize(("labels", "annotations"), VALID_TARGET_METADATA)
    def test_valid_labels_and_annotations_are_accepted(
        self, objects: Objects, labels: dict[str, str], annotations: dict[str, str]
    ) -> None:
        target = {"labels": labels, "annotations": annotations}
        created = objects.create(_spec({}, target=target))
        assert created["spec"]["target"] == target

    @pytest.mark.parametrize(("labels", "annotations", "field"), INVALID_TARGET_METADATA)
    def test_invalid_labels_and_annotations_are_refused(
        self, objects: Objects, labels: dict[str, str], annotations: dict[str, str], field: str
    ) -> None:
        target = {"labels": labels, "annotations": annotations}
        message = refusal(lambda: objects.create(_spec({}, target=target)))
        assert field in message, message
        assert "evaluation error" not in message

    @pytest.mark.parametrize("kind", ["label", "annotation"])
    def test_a_bad_key_gets_the_rule_in_the_message(self, objects: Objects, kind: str) -> None:
        """The message cannot name the key: a messageExpression that filters the map's keys
        (which have no length bound) is over the API server's CEL cost budget."""
        target = {f"{kind}s": {"good": "v", "bad key": "v"}}
        message = refusal(lambda: objects.create(_spec({}, target=target)))
        assert f"spec.target.{kind}s" in message
        assert f"target.{kind}s: every key must be an optional DNS subdomain prefix" in message

    @pytest.mark.parametrize(("rotation", "after", "valid"), AFTER_VERSUS_INTERVAL)
    def test_previous_key_after_must_be_shorter_than_the_interval(
        self, objects: Objects, rotation: dict[str, Any], after: str | None, valid: bool
    ) -> None:
        spec = _spec(rotation, after)
        if valid:
            assert objects.create(copy.deepcopy(spec))["spec"] == spec
            return
        message = refusal(lambda: objects.create(spec))
        assert "spec.previousKey.after" in message
        assert "must be shorter than the rotation interval" in message, message
        if after is None:
            assert "24h, the default" in message

    @pytest.mark.parametrize("after", ["1001d", "86400001s", "9999999999d"])
    def test_previous_key_after_is_at_most_1000_days(self, objects: Objects, after: str) -> None:
        message = refusal(lambda: objects.create(_spec({}, after)))
        assert "previousKey.after must be at most 1000d" in message
        assert "evaluation error" not in message

    def test_an_update_that_shortens_the_interval_below_the_grace_is_refused(
        self, objects: Objects
    ) -> None:
        name = objects.create(_spec({"interval": "30d"}))["metadata"]["name"]
        message = refusal(lambda: objects.patch(name, {"spec": {"rotation": {"interval": "12h"}}}))
        assert "previousKey.after (24h, the default) must be shorter" in message
        assert objects.get(name)["spec"]["rotation"] == {"interval": "30d"}


@pytest.mark.kube
class TestUpdates:
    def test_iam_user_is_immutable(self, objects: Objects) -> None:
        name = objects.create({"iamUser": "first-user"})["metadata"]["name"]
        message = refusal(lambda: objects.patch(name, {"spec": {"iamUser": "second-user"}}))
        assert "spec.iamUser" in message
        assert "iamUser is immutable" in message
        assert objects.get(name)["spec"]["iamUser"] == "first-user"

    def test_other_fields_can_change(self, objects: Objects) -> None:
        name = objects.create({"iamUser": "u", "rotation": {"interval": "30d"}})["metadata"]["name"]
        patched = objects.patch(
            name,
            {
                "spec": {
                    "rotation": {"interval": None, "schedule": "rate(10 days)"},
                    "secretsManager": {"deletionPolicy": "Delete"},
                    "suspend": True,
                }
            },
        )
        assert patched["spec"] == {
            "iamUser": "u",
            "rotation": {"schedule": "rate(10 days)"},
            "secretsManager": {"deletionPolicy": "Delete"},
            "suspend": True,
        }
        assert patched["metadata"]["generation"] == 2

    @pytest.mark.parametrize(
        ("before", "after"),
        [
            ("keyrotor/a", "keyrotor/b"),  # renamed
            (None, "keyrotor/b"),  # the default replaced by a name
            ("keyrotor/a", None),  # a name dropped for the default
            ("keyrotor/a", ""),
        ],
    )
    def test_secrets_manager_secret_name_is_immutable(
        self, objects: Objects, before: str | None, after: str | None
    ) -> None:
        spec: dict[str, Any] = {"iamUser": "u", "secretsManager": {"deletionPolicy": "Retain"}}
        if before is not None:
            spec["secretsManager"]["secretName"] = before
        name = objects.create(spec)["metadata"]["name"]
        message = refusal(
            lambda: objects.patch(name, {"spec": {"secretsManager": {"secretName": after}}})
        )
        assert "spec.secretsManager.secretName" in message
        assert "secretsManager.secretName is immutable" in message

    def test_secrets_manager_secret_name_may_be_restated(self, objects: Objects) -> None:
        """Unset and "" both mean the default; re-applying the same name is no change."""
        name = objects.create({"iamUser": "u"})["metadata"]["name"]
        objects.patch(name, {"spec": {"secretsManager": {"secretName": ""}}})
        objects.patch(name, {"spec": {"secretsManager": None}})
        named = objects.create({"iamUser": "u", "secretsManager": {"secretName": "keyrotor/x"}})
        patched = objects.patch(
            named["metadata"]["name"],
            {"spec": {"secretsManager": {"secretName": "keyrotor/x", "kmsKeyId": "alias/k"}}},
        )
        assert patched["spec"]["secretsManager"] == {
            "secretName": "keyrotor/x",
            "kmsKeyId": "alias/k",
        }


STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "Key AKIAEXAMPLE is mirrored into Secret billing-exporter-aws",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
        {
            "type": "Synced",
            "status": "True",
            "reason": "Synced",
            "message": "",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
    ],
    "secretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:keyrotor/x-AbCdEf",
    "lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:keyrotor-test-rotation",
    "accessKeyId": "AKIAEXAMPLE",
    "versionId": "2b1f0000-0000-0000-0000-000000000000",
    "lastRotationTime": "2026-01-02T03:04:05Z",
    "nextRotationTime": "2026-02-01T03:04:05Z",
    "lastSyncTime": "2026-01-02T03:05:00Z",
    "previousKey": {
        "accessKeyId": "AKIAPREVIOUS",
        "state": "Inactive",
        "actionAfter": "2026-01-03T03:04:05Z",
    },
    "rotateNowHandled": "2026-01-02",
    "effective": {"rotation": {"interval": "90d"}, "target": {"secretName": "x", "anything": [1]}},
}


@pytest.mark.kube
class TestStatus:
    def test_status_is_written_through_the_subresource_only(self, objects: Objects) -> None:
        name = objects.create({"iamUser": "u"})["metadata"]["name"]
        # Through the main resource, status is ignored.
        ignored = objects.patch(name, {"status": {"accessKeyId": "AKIAIGNORED"}})
        assert "status" not in ignored
        # Through /status, the full status is kept as written, spec changes are ignored, and
        # the generation does not move.
        written = objects.patch_status(name, copy.deepcopy(STATUS))
        assert written["status"] == STATUS
        assert written["metadata"]["generation"] == 1
        spec_via_status = objects.api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            objects.namespace,
            PLURAL,
            name,
            {"spec": {"iamUser": "other"}},
            _content_type=MERGE_PATCH,
        )
        assert spec_via_status["spec"] == {"iamUser": "u"}

    def test_unknown_status_fields_are_pruned_but_effective_is_kept(self, objects: Objects) -> None:
        """Status stays clean: kopf keeps its progress in kopf.keyrotor.io/ annotations."""
        name = objects.create({"iamUser": "u"})["metadata"]["name"]
        written = objects.patch_status(
            name, {"kopf": {"progress": {"x": {}}}, "effective": {"free": {"form": True}}}
        )
        assert written["status"] == {"effective": {"free": {"form": True}}}

    @pytest.mark.parametrize(
        "status",
        [
            {"conditions": [{"type": "Ready", "status": "Maybe"}]},
            {"conditions": [{"type": "Ready"}]},
            {"previousKey": {"state": "Gone"}},
            {"lastRotationTime": "yesterday"},
            {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Ready", "status": "False"},
                ]
            },
        ],
    )
    def test_bad_status_is_refused(self, objects: Objects, status: dict[str, Any]) -> None:
        name = objects.create({"iamUser": "u"})["metadata"]["name"]
        refusal(lambda: objects.patch_status(name, status))

    def test_printer_columns_are_served(
        self, objects: Objects, kube_admin_api: Any, installed_crd: dict[str, Any]
    ) -> None:
        columns = [
            (c["name"], c["jsonPath"])
            for c in crd_version(installed_crd)["additionalPrinterColumns"]
        ]
        assert columns == [
            (c["name"], c["jsonPath"]) for c in crd_version(load_crd())["additionalPrinterColumns"]
        ]
        name = objects.create({"iamUser": "billing-exporter"})["metadata"]["name"]
        objects.patch_status(name, copy.deepcopy(STATUS))
        # What `kubectl get akr` shows: the server renders the table.
        response = kube_admin_api.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{objects.namespace}/{PLURAL}/{name}",
            "GET",
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        table = json.loads(response.data)
        headers = [c["name"] for c in table["columnDefinitions"]]
        assert headers == [
            "Name",
            "User",
            "Ready",
            "Reason",
            "Key",
            "Last Rotation",
            "Next Rotation",
            "Age",
        ]
        (row,) = table["rows"]
        cells = dict(zip(headers, row["cells"], strict=True))
        assert cells["Name"] == name
        assert cells["User"] == "billing-exporter"
        assert cells["Ready"] == "True"
        assert cells["Reason"] == "Ready"
        assert cells["Key"] == "AKIAEXAMPLE"


# --------------------------------------------------------------------------------------------
# The operator's RBAC, as the API server's authorizer sees it.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_rbac(kube_apiserver: Any) -> None:
    """deploy/base/rbac.yaml applied alone (server-side apply: idempotent, shared)."""
    kube_apiserver.apply_yaml(RBAC_PATH)


def operator_may(
    api_client: Any,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str = "team-a",
    subresource: str = "",
) -> bool:
    from kubernetes import client

    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=OPERATOR_USER,
                groups=[
                    "system:serviceaccounts",
                    "system:serviceaccounts:keyrotor-system",
                    "system:authenticated",
                ],
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource,
                    namespace=namespace,
                ),
            )
        )
    )
    return bool(review.status.allowed)


@pytest.mark.kube
def test_operator_rbac_grants_what_the_operator_needs(
    kube_admin_api: Any, operator_rbac: None
) -> None:
    # RBAC is evaluated without the resources existing, so the CRD need not be installed.
    needed = [
        *[(v, PLURAL, GROUP, "") for v in ("get", "list", "watch", "patch")],
        ("patch", PLURAL, GROUP, "status"),
        ("update", PLURAL, GROUP, "finalizers"),
        *[(v, "secrets", "", "") for v in ("get", "list", "watch", "create", "update")],
        ("create", "events", "", ""),
        *[(v, "leases", "coordination.k8s.io", "") for v in ("get", "create", "update")],
    ]
    refused = [
        n for n in needed if not operator_may(kube_admin_api, n[0], n[1], n[2], subresource=n[3])
    ]
    assert refused == []
    cluster_wide = [
        *[(v, "customresourcedefinitions", "apiextensions.k8s.io") for v in ("list", "watch")],
    ]
    refused_cluster_wide = [
        n for n in cluster_wide if not operator_may(kube_admin_api, *n, namespace="")
    ]
    assert refused_cluster_wide == []


@pytest.mark.kube
def test_operator_rbac_grants_no_more(kube_admin_api: Any, operator_rbac: None) -> None:
    excess = [
        ("create", PLURAL, GROUP, ""),  # users create the objects, not the operator
        ("delete", PLURAL, GROUP, ""),
        ("update", PLURAL, GROUP, ""),
        ("update", PLURAL, GROUP, "status"),
        ("patch", "secrets", "", ""),
        ("delete", "secrets", "", ""),
        ("patch", "events", "", ""),
        ("create", "events", "events.k8s.io", ""),
        # Workloads only where a namespace bound keyrotor-restart-workloads (none here).
        ("patch", "deployments", "apps", ""),
        ("get", "deployments", "apps", ""),
        ("delete", "deployments", "apps", ""),
        ("update", "deployments", "apps", ""),
        ("create", "pods", "", ""),
        ("get", "configmaps", "", ""),
        ("create", "serviceaccounts", "", "token"),
        ("update", "customresourcedefinitions", "apiextensions.k8s.io", ""),
        ("delete", "namespaces", "", ""),
        ("list", "namespaces", "", ""),
        ("escalate", "clusterroles", "rbac.authorization.k8s.io", ""),
    ]
    allowed = [
        n for n in excess if operator_may(kube_admin_api, n[0], n[1], n[2], subresource=n[3])
    ]
    assert allowed == []


@pytest.mark.kube
def test_operator_identity_can_work_with_the_objects(
    objects: Objects, kube_operator_api: Any, operator_rbac: None
) -> None:
    """The real calls, as the operator's identity: watchable list across namespaces, status
    writes, finalizer and annotation patches; but creating objects is for users."""
    from kubernetes.client.exceptions import ApiException

    name = objects.create({"iamUser": "u"})["metadata"]["name"]
    operator = Objects(kube_operator_api, objects.namespace)
    listed = operator.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert name in [o["metadata"]["name"] for o in listed["items"]]
    operator.patch(
        name,
        {
            "metadata": {
                "finalizers": ["keyrotor.io/finalizer"],
                "annotations": {"kopf.keyrotor.io/last-handled-configuration": "{}"},
            }
        },
    )
    written = operator.patch_status(name, {"observedGeneration": 1, "accessKeyId": "AKIAEXAMPLE"})
    assert written["status"] == {"observedGeneration": 1, "accessKeyId": "AKIAEXAMPLE"}
    with pytest.raises(ApiException) as caught:
        operator.create({"iamUser": "u"})
    assert caught.value.status == 403
    # Let the namespace go: drop the finalizer again (no operator runs here to do it).
    operator.patch(name, {"metadata": {"finalizers": None}})
    objects.api.delete_namespaced_custom_object(GROUP, VERSION, objects.namespace, PLURAL, name)
