"""KMS keys are allowed per installation (--kms-key): an object that names another key is
refused before anything is written; an allowed key is used, and UpdateSecret is sent only when
the secret's key differs (not on every reconcile)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer
from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


@pytest.fixture(scope="module")
def keys(aws_emulator: AwsEmulator) -> dict[str, str]:
    kms = aws_emulator.client("kms")
    return {
        team: str(kms.create_key(Description=f"keyrotor e2e {team}")["KeyMetadata"]["Arn"])
        for team in ("allowed", "other")
    }


@pytest.fixture(scope="module")
def keyrotor(
    aws_emulator: AwsEmulator,
    operator_rbac: KubeApiServer,
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, str],
) -> Iterator[Harness]:
    harness = Harness(aws_emulator, operator_rbac, tmp_path_factory.mktemp("operator"))
    harness.start_operator("--kms-key", keys["allowed"])
    try:
        yield harness
    finally:
        aws_emulator.wait_for_rotations(timeout=60)
        harness.stop()


def test_another_key_is_refused_and_nothing_is_created(
    keyrotor: Harness, keys: dict[str, str]
) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, "secretsManager": {"kmsKeyId": keys["other"]}})
    obj = keyrotor.wait_condition(ns, "app", "Ready", "False", "KmsKeyNotAllowed")
    message = keyrotor.condition(obj, "Ready")["message"]  # type: ignore[index]
    assert keys["allowed"] in message and "--kms-key" in message
    sm = keyrotor.aws.client("secretsmanager")
    name = f"keyrotor/{keyrotor.cluster_name}/{ns}/app"
    assert not sm.list_secrets(Filters=[{"Key": "name", "Values": [name]}])["SecretList"]
    assert "keyrotor.io/claimed-by" not in {
        t["Key"] for t in keyrotor.aws.client("iam").list_user_tags(UserName=user)["Tags"]
    }


def test_an_allowed_key_is_used_and_not_updated_again(
    keyrotor: Harness, keys: dict[str, str]
) -> None:
    ns = keyrotor.namespace()
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user, "secretsManager": {"kmsKeyId": keys["allowed"]}})
    obj = keyrotor.wait_ready(ns, "app")
    arn = obj["status"]["secretArn"]
    described = keyrotor.aws.client("secretsmanager").describe_secret(SecretId=arn)
    assert described["KmsKeyId"] == keys["allowed"]
    updates = keyrotor.aws.calls.count("UpdateSecret")
    keyrotor.annotate(ns, "app", {"keyrotor.io/rotate-now": "1"})
    keyrotor.wait(
        lambda: (keyrotor.get(ns, "app") or {}).get("status", {}).get("rotateNowHandled") == "1",
        what="rotate-now handled",
    )
    keyrotor.wait_ready(ns, "app")
    assert keyrotor.aws.calls.count("UpdateSecret") == updates
