"""Two shards in event mode (issue 10): each shard has its own EventBridge rule and SQS queue,
so each receives every event of the installation; a rotation keyrotor did not start reaches the
Secret through the shard that serves the object, and the other shard's copy of the event is
handled (deleted) without a look. The sweep is an hour: only events can find the rotations."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube]

EVENT_MODE = ("--event-mode", "--sync-interval", "3600")
LABEL = "keyrotor.io/shard"
SHARDS = ("a", "b")
VERSION_ID = "keyrotor.io/version-id"


@pytest.fixture(scope="module")
def shards(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:
    """One installation in event mode, two shards: a serves shard=a, b serves shard=b."""
    harness = Harness(
        aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"), extra_args=EVENT_MODE
    )
    for shard in SHARDS:
        harness.start_operator(
            "--shard", shard, "--selector", f"{LABEL}={shard}", "--metrics-port", str(PORTS[shard])
        )
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()


PORTS = {shard: free_port() for shard in SHARDS}


def _secret_events(shard: str, outcome: str) -> float:
    """keyrotor_secret_events_total{outcome} on one shard's /metrics."""
    url = f"http://127.0.0.1:{PORTS[shard]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "keyrotor_secret_events_total" and sample.labels["outcome"] == outcome
    )


def _queue(keyrotor: Harness, shard: str) -> str:
    sqs, events = keyrotor.aws.client("sqs"), keyrotor.aws.client("events")
    name = f"keyrotor-{keyrotor.cluster_name}_{shard}-events"
    url = keyrotor.wait(
        lambda: next(iter(sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", [])), None),
        what=f"shard {shard}'s event queue",
    )
    rule = f"keyrotor-{keyrotor.cluster_name}_{shard}-secrets"
    keyrotor.wait(
        lambda: (
            events.list_targets_by_rule(Rule=rule)["Targets"]
            if rule in [r["Name"] for r in events.list_rules(NamePrefix=rule)["Rules"]]
            else None
        ),
        what=f"shard {shard}'s event rule and its target",
    )
    return str(url)


def _mirrored(keyrotor: Harness, ns: str, name: str) -> str | None:
    secret = keyrotor.secret(ns, name)
    return None if secret is None else (secret.metadata.annotations or {}).get(VERSION_ID)


def _queue_empty(keyrotor: Harness, url: str) -> bool:
    attributes = keyrotor.aws.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return set(attributes.values()) == {"0"}


def test_each_shard_receives_every_event_and_mirrors_only_its_own(shards: Harness) -> None:
    keyrotor = shards
    urls = {shard: _queue(keyrotor, shard) for shard in SHARDS}
    ns = keyrotor.namespace("ev")
    status = {}
    for shard in SHARDS:
        name = f"app-{shard}"
        user = keyrotor.iam_user(namespaces=ns)
        body = {
            "apiVersion": "keyrotor.io/v1alpha1",
            "kind": "AccessKeyRotation",
            "metadata": {"name": name, "labels": {LABEL: shard}},
            "spec": {"iamUser": user},
        }
        keyrotor.custom.create_namespaced_custom_object(
            "keyrotor.io", "v1alpha1", ns, "accesskeyrotations", body
        )
        status[shard] = dict(keyrotor.wait_ready(ns, name)["status"])
        keyrotor.wait(
            lambda name=name, shard=shard: (
                _mirrored(keyrotor, ns, name) == status[shard]["versionId"]
            ),
            what=f"{name} mirrored",
        )
    for url in urls.values():  # the first keys' events, handled by both shards
        keyrotor.wait(lambda url=url: _queue_empty(keyrotor, url), what="queues drained")

    for shard, other in zip(SHARDS, reversed(SHARDS), strict=True):
        name = f"app-{shard}"
        seen = {e.metadata.name for e in keyrotor.events(ns, name)}
        start = len(keyrotor.aws.calls)
        checked, ignored = _secret_events(shard, "checked"), _secret_events(other, "ignored")
        sm = keyrotor.aws.client("secretsmanager")
        new_version = sm.rotate_secret(SecretId=status[shard]["secretArn"])["VersionId"]
        keyrotor.wait(
            lambda name=name, new_version=new_version: _mirrored(keyrotor, ns, name) == new_version,
            what=f"{name}'s new version, through an event",
        )
        keyrotor.aws.wait_for_rotations()
        for url in urls.values():  # each shard got its copy and deleted it
            keyrotor.wait(lambda url=url: _queue_empty(keyrotor, url), what="queues drained")
        operations = [c.operation for c in keyrotor.aws.calls.snapshot()[start:] if c.step is None]
        assert "ListSecrets" not in operations  # no sweep found it: the event did
        assert operations.count("GetSecretValue") == 1  # read once, by its own shard only
        assert operations.count("ReceiveMessage") >= 2 and "DeleteMessage" in operations
        # Its shard looked (checked); the other shard had its own copy and let it go (ignored).
        assert _secret_events(shard, "checked") > checked
        assert _secret_events(other, "ignored") > ignored
        since = [e for e in keyrotor.events(ns, name) if e.metadata.name not in seen]
        assert since and {e.reporting_instance for e in since} == {f"keyrotor-{shard}"}
        # The other shard's object did not move.
        other_status = (keyrotor.get(ns, f"app-{other}") or {})["status"]
        assert other_status["versionId"] == _mirrored(keyrotor, ns, f"app-{other}")
