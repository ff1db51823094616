"""The push Service's EndpointSlice, the pure parts (keyrotor.k8s.endpoint_slices): the wanted
slice, its address type, what counts as a difference, what is foreign; and the settings that
turn it on. The writes against a real API server are in tests/e2e/test_event_push_service.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from keyrotor.cli import build_parser, settings_from_args
from keyrotor.k8s.endpoint_slices import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    PushEndpoint,
    address_type,
    differs,
    is_foreign,
    updated_slice,
    wanted_slice,
)
from keyrotor.settings import SettingsError

ENDPOINT = PushEndpoint(
    namespace="keyrotor-system",
    service="keyrotor-events",
    ip="10.1.2.3",
    port=8082,
    pod_name="keyrotor-7d9f-abcde",
)


def as_stored(body: dict[str, Any]) -> dict[str, Any]:
    """The slice as the API server returns it: metadata it adds, unset conditions as None."""
    stored = copy.deepcopy(body)
    stored["metadata"].update(resourceVersion="42", uid="u", generation=1, managedFields=[{}])
    for endpoint in stored["endpoints"]:
        endpoint["conditions"].update(serving=None, terminating=None)
    return stored


def test_the_wanted_slice_sends_the_service_to_this_pod_alone() -> None:
    body = wanted_slice(ENDPOINT)
    assert body["metadata"] == {
        "name": "keyrotor-events",
        "namespace": "keyrotor-system",
        "labels": {SERVICE_NAME_LABEL: "keyrotor-events", MANAGED_BY_LABEL: MANAGED_BY},
    }
    assert body["addressType"] == "IPv4"
    assert body["endpoints"] == [
        {
            "addresses": ["10.1.2.3"],
            "conditions": {"ready": True},
            "targetRef": {
                "kind": "Pod",
                "name": "keyrotor-7d9f-abcde",
                "namespace": "keyrotor-system",
            },
        }
    ]
    assert body["ports"] == [{"name": "push", "port": 8082, "protocol": "TCP"}]


def test_without_a_pod_name_the_endpoint_has_no_target_ref() -> None:
    body = wanted_slice(PushEndpoint("ns", "svc", "10.0.0.1", 80))
    assert "targetRef" not in body["endpoints"][0]


@pytest.mark.parametrize(
    ("ip", "kind", "written"),
    [
        ("10.1.2.3", "IPv4", "10.1.2.3"),
        ("fd00::1", "IPv6", "fd00::1"),
        ("fd00:0:0::0001", "IPv6", "fd00::1"),  # the API server takes the canonical form only
        ("2001:db8::a", "IPv6", "2001:db8::a"),
    ],
)
def test_address_type_and_canonical_address(ip: str, kind: str, written: str) -> None:
    assert address_type(ip) == kind
    body = wanted_slice(PushEndpoint("ns", "svc", ip, 80))
    assert body["addressType"] == kind
    assert body["endpoints"][0]["addresses"] == [written]


def test_the_same_slice_as_stored_does_not_differ() -> None:
    wanted = wanted_slice(ENDPOINT)
    stored = as_stored(wanted)
    stored["metadata"]["labels"]["team"] = "platform"  # someone else's label: not ours to judge
    assert not differs(stored, wanted)
    del stored["ports"][0]["protocol"]  # TCP is the default
    assert not differs(stored, wanted)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["endpoints"][0].update(addresses=["10.9.9.9"]),  # another replica's IP
        lambda s: s["endpoints"][0]["conditions"].update(ready=False),
        lambda s: s["endpoints"][0]["targetRef"].update(name="keyrotor-old-pod"),
        lambda s: s["endpoints"].append(copy.deepcopy(s["endpoints"][0])),
        lambda s: s.update(endpoints=[]),
        lambda s: s.update(endpoints=None),
        lambda s: s["ports"][0].update(port=9999),
        lambda s: s["ports"][0].update(name="http"),
        lambda s: s.update(addressType="IPv6"),
        lambda s: s["metadata"]["labels"].update({SERVICE_NAME_LABEL: "other"}),
        lambda s: s["metadata"]["labels"].pop(SERVICE_NAME_LABEL),
    ],
    ids=[
        "other-ip",
        "not-ready",
        "other-pod",
        "two-endpoints",
        "no-endpoints",
        "endpoints-null",
        "other-port",
        "other-port-name",
        "address-type",
        "other-service",
        "no-service-label",
    ],
)
def test_what_sends_traffic_elsewhere_differs(change: Any) -> None:
    wanted = wanted_slice(ENDPOINT)
    stored = as_stored(wanted)
    change(stored)
    assert differs(stored, wanted)


def test_the_update_keeps_the_version_and_others_labels() -> None:
    wanted = wanted_slice(ENDPOINT)
    stored = as_stored(
        wanted_slice(PushEndpoint("keyrotor-system", "keyrotor-events", "10.9.9.9", 1))
    )
    stored["metadata"]["labels"]["team"] = "platform"
    body = updated_slice(stored, wanted)
    assert body["metadata"]["resourceVersion"] == "42"  # a concurrent write makes it a conflict
    assert body["metadata"]["labels"]["team"] == "platform"
    assert "managedFields" not in body["metadata"]
    assert not differs(body, wanted)
    assert stored["endpoints"][0]["addresses"] == ["10.9.9.9"]  # the observed body is untouched


def test_the_service_owns_the_slice_once_it_exists() -> None:
    owned = wanted_slice(ENDPOINT, service_uid="svc-uid")
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "keyrotor-events", "uid": "svc-uid"}
    ]
    assert "ownerReferences" not in wanted_slice(ENDPOINT)["metadata"]
    unowned = as_stored(wanted_slice(ENDPOINT))
    assert differs(unowned, owned)  # the Service appeared: the slice gets its owner
    assert not differs(as_stored(owned), wanted_slice(ENDPOINT))  # no Service: owners not judged
    recreated = wanted_slice(ENDPOINT, service_uid="new-uid")
    assert differs(as_stored(owned), recreated)  # the Service was recreated
    stored = as_stored(owned)
    stored["metadata"]["ownerReferences"].append(
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "d"}
    )
    body = updated_slice(stored, recreated)
    assert [o["uid"] for o in body["metadata"]["ownerReferences"]] == ["d", "new-uid"]
    assert not differs(body, recreated)


@pytest.mark.parametrize(
    ("labels", "foreign"),
    [
        ({MANAGED_BY_LABEL: MANAGED_BY}, False),
        ({MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}, True),
        ({MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io"}, True),
        ({}, True),
        (None, True),
    ],
)
def test_only_a_slice_managed_by_keyrotor_is_its_own(
    labels: dict[str, str] | None, foreign: bool
) -> None:
    assert is_foreign({"metadata": {"name": "keyrotor-events", "labels": labels}}) is foreign


PUSH = [
    "run",
    "--event-mode",
    "--event-delivery",
    "push",
    "--event-push-port",
    "8082",
    "--event-push-url",
    "https://keyrotor.example.com/events",
    "--event-push-role-arn",
    "arn:aws:iam::123456789012:role/keyrotor-push",
]


@pytest.fixture
def push_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("KEYROTOR_EVENT_PUSH_TOKEN", "t" * 64)
    for name in ("POD_IP", "POD_NAME", "POD_NAMESPACE", "KEYROTOR_EVENT_PUSH_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_service_flag_and_the_downward_api(push_env: pytest.MonkeyPatch) -> None:
    assert settings_from_args(build_parser().parse_args(PUSH)).event_push_service is None
    push_env.setenv("POD_IP", "10.1.2.3")
    push_env.setenv("POD_NAME", "keyrotor-abc")
    push_env.setenv("POD_NAMESPACE", "keyrotor-system")
    args = build_parser().parse_args([*PUSH, "--event-push-service", "keyrotor-events"])
    settings = settings_from_args(args)
    assert settings.event_push_service == "keyrotor-events"
    assert (settings.pod_ip, settings.pod_name, settings.pod_namespace) == (
        "10.1.2.3",
        "keyrotor-abc",
        "keyrotor-system",
    )
    push_env.setenv("KEYROTOR_EVENT_PUSH_SERVICE", "from-env")
    assert settings_from_args(build_parser().parse_args(PUSH)).event_push_service == "from-env"


@pytest.mark.parametrize(
    ("argv", "pod_ip", "says"),
    [
        ([*PUSH, "--event-push-service", "keyrotor-events"], None, "needs this pod's IP in POD_IP"),
        ([*PUSH, "--event-push-service", "keyrotor-events"], "pod", "POD_IP 'pod'"),
        ([*PUSH, "--event-push-service", "keyrotor-events"], "127.0.0.2", "loopback"),
        ([*PUSH, "--event-push-service", "keyrotor-events"], "::1", "loopback"),
        ([*PUSH, "--event-push-service", "Keyrotor_Events"], "10.1.2.3", "a Service name"),
        (["run", "--event-push-service", "keyrotor-events"], "10.1.2.3", "only used with"),
    ],
)
def test_bad_service_settings_say_what_is_wrong(
    push_env: pytest.MonkeyPatch, argv: list[str], pod_ip: str | None, says: str
) -> None:
    if pod_ip is not None:
        push_env.setenv("POD_IP", pod_ip)
    with pytest.raises(SettingsError, match=says) as raised:
        settings_from_args(build_parser().parse_args(argv))
    assert "\n" not in str(raised.value)
