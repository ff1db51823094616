"""``keyrotor status`` and ``keyrotor rotate`` as a person runs them: a separate process with a
kubeconfig, against the real API server, with the operator running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.fixtures.operator import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def keyrotor_cli(
    *args: str, kubeconfig: Path | str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KEYROTOR_"))}
    env["HOME"] = str(Path(kubeconfig).parent)  # no ~/.kube/config to fall back on
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [sys.executable, "-m", "keyrotor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyrotor: ")
    return lines[0]


@pytest.fixture(scope="module")
def admin_kubeconfig(keyrotor: Harness) -> Path:
    return Path(keyrotor.kube.admin_kubeconfig)


def kubeconfig_with_namespace(source: Path, namespace: str, folder: Path) -> Path:
    config = yaml.safe_load(source.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    path = folder / f"ns-{namespace}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_status_of_a_ready_object(
    keyrotor: Harness, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    ns = keyrotor.namespace("cmd")
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    obj = keyrotor.wait_ready(ns, "app")
    keyrotor.wait(lambda: "Synced" in keyrotor.event_reasons(ns, "app"), what="the Synced Event")

    result = keyrotor_cli("status", "app", "-n", ns, kubeconfig=admin_kubeconfig)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    status = obj["status"]
    assert f"Name:          app\nNamespace:     {ns}\nIAM user:      {user}" in out
    assert "  Ready               True" in out
    assert "  RotationConfigured  True   RotationEnabled" in out
    assert f"Access key id:    {status['accessKeyId']}" in out
    assert f"Version:          {status['versionId']}" in out
    assert f"Secret:           {ns}/app" in out
    assert f"Secrets Manager:  {status['secretArn']}" in out
    assert "Schedule:         rate(90 days)" in out
    assert re.search(r"Next rotation:    \S+ \(in (89|90)d\)", out), out
    events = out.split("Events:\n", 1)[1].split("Next:\n", 1)[0]
    assert "Normal   Synced" in events and "RotationRequested" in events
    assert f"keyrotor rotate app -n {ns} --wait" in out.split("Next:\n", 1)[1]
    # No secret material, ever.
    secret = keyrotor.secret_data(keyrotor.secret(ns, "app"))  # type: ignore[arg-type]
    assert secret["AWS_SECRET_ACCESS_KEY"] not in out

    # -n defaults to the kubeconfig context's namespace, as kubectl's does.
    config = kubeconfig_with_namespace(admin_kubeconfig, ns, tmp_path)
    defaulted = keyrotor_cli("status", "app", kubeconfig=config)
    assert defaulted.returncode == 0, defaulted.stderr
    assert f"Name:          app\nNamespace:     {ns}\n" in defaulted.stdout


def test_status_says_what_to_do(keyrotor: Harness, admin_kubeconfig: Path) -> None:
    ns = keyrotor.namespace("cmd")
    user = keyrotor.iam_user()  # not tagged for this namespace
    keyrotor.create(ns, "refused", {"iamUser": user})
    keyrotor.wait_condition(ns, "refused", "Ready", "False", "NotAuthorized")
    out = keyrotor_cli("status", "refused", "-n", ns, kubeconfig=admin_kubeconfig).stdout
    assert "  Ready               False  NotAuthorized" in out
    assert f"aws iam tag-user --user-name {user}" in out  # the condition's own message
    assert "Warning  NotAuthorized" in out
    assert "tag the IAM user, or start keyrotor with --allow" in out.split("Next:\n", 1)[1]

    keyrotor.create(ns, "paused", {"iamUser": keyrotor.iam_user(namespaces=ns), "suspend": True})
    keyrotor.wait_condition(ns, "paused", "Ready", "False", "Suspended")
    out = keyrotor_cli("status", "paused", "-n", ns, kubeconfig=admin_kubeconfig).stdout
    assert "Suspended:     yes" in out
    assert f"kubectl patch akr paused -n {ns} --type merge" in out


def test_rotate_and_wait_mirrors_a_new_working_key(
    keyrotor: Harness, admin_kubeconfig: Path
) -> None:
    ns = keyrotor.namespace("cmd")
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    before = keyrotor.wait_ready(ns, "app")["status"]
    keyrotor.aws.wait_for_rotations()

    result = keyrotor_cli("rotate", "app", "-n", ns, "--wait", kubeconfig=admin_kubeconfig)
    assert result.returncode == 0, (result.stdout, result.stderr)
    after = (keyrotor.get(ns, "app") or {})["status"]
    value = (keyrotor.get(ns, "app") or {})["metadata"]["annotations"]["keyrotor.io/rotate-now"]
    assert after["rotateNowHandled"] == value
    assert after["accessKeyId"] != before["accessKeyId"]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"rotation requested: keyrotor.io/rotate-now={value} on {ns}/app"
    assert lines[-1] == (
        f"new key {after['accessKeyId']} (version {after['versionId']}) mirrored into "
        f"Secret {ns}/app"
    )
    data = keyrotor.secret_data(keyrotor.secret(ns, "app"))  # type: ignore[arg-type]
    assert data["AWS_ACCESS_KEY_ID"] == after["accessKeyId"]
    arn = keyrotor.caller_arn(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
    assert arn.endswith(f":user/{user}")
    assert len(keyrotor.aws.rotations_of(after["secretArn"])) == 2  # first key, this one

    # Without --wait: the annotation is set to a fresh value and the command returns.
    again = keyrotor_cli("rotate", "app", "-n", ns, kubeconfig=admin_kubeconfig)
    assert again.returncode == 0, again.stderr
    second = (keyrotor.get(ns, "app") or {})["metadata"]["annotations"]["keyrotor.io/rotate-now"]
    assert second != value and second in again.stdout


def test_rotate_wait_stops_on_an_object_that_needs_a_person(
    keyrotor: Harness, admin_kubeconfig: Path
) -> None:
    ns = keyrotor.namespace("cmd")
    keyrotor.create(ns, "paused", {"iamUser": keyrotor.iam_user(namespaces=ns), "suspend": True})
    keyrotor.wait_condition(ns, "paused", "Ready", "False", "Suspended")
    result = keyrotor_cli(
        "rotate", "paused", "-n", ns, "--wait", "--timeout", "120", kubeconfig=admin_kubeconfig
    )
    line = one_line_error(result)
    assert line.startswith(f"keyrotor: {ns}/paused cannot rotate: Suspended:")


def test_rotate_wait_times_out_with_what_it_saw(keyrotor: Harness, admin_kubeconfig: Path) -> None:
    ns = keyrotor.namespace("cmd")
    user = keyrotor.iam_user(namespaces=ns)
    keyrotor.create(ns, "app", {"iamUser": user})
    keyrotor.wait_ready(ns, "app")
    keyrotor.aws.wait_for_rotations()
    # Secrets Manager refuses every rotation request for a while: the request stays unhandled.
    keyrotor.aws.faults.fail("RotateSecret", error="LimitExceededException", times=10**6)
    try:
        result = keyrotor_cli(
            "rotate", "app", "-n", ns, "--wait", "--timeout", "3", kubeconfig=admin_kubeconfig
        )
    finally:
        keyrotor.aws.faults.clear()
    line = one_line_error(result)
    assert line.startswith(f"keyrotor: timed out after 3s waiting for the new key of {ns}/app")
    assert f"keyrotor status app -n {ns}" in line


def test_readable_errors(keyrotor: Harness, admin_kubeconfig: Path, tmp_path: Path) -> None:
    ns = keyrotor.namespace("cmd")
    for command in ("status", "rotate"):
        missing = keyrotor_cli(command, "nothing-here", "-n", ns, kubeconfig=admin_kubeconfig)
        assert one_line_error(missing) == (
            f"keyrotor: AccessKeyRotation {ns}/nothing-here not found"
        )

    no_config = keyrotor_cli("status", "app", "-n", ns, kubeconfig=tmp_path / "absent")
    assert one_line_error(no_config).startswith("keyrotor: no Kubernetes configuration:")

    # An identity without RBAC on AccessKeyRotations: a ServiceAccount token from the real
    # TokenRequest API.
    core = keyrotor.core
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody",
        ns,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    config: dict[str, Any] = yaml.safe_load(admin_kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    nobody = tmp_path / "nobody.kubeconfig"
    nobody.write_text(yaml.safe_dump(config))
    forbidden = keyrotor_cli("rotate", "app", "-n", ns, kubeconfig=nobody)
    line = one_line_error(forbidden)
    assert line.startswith("keyrotor: forbidden: ")
    assert f"system:serviceaccount:{ns}:nobody" in line and "accesskeyrotations" in line

    unreachable = dict(config)
    unreachable["clusters"] = [
        {**c, "cluster": {**c["cluster"], "server": "https://127.0.0.1:1"}}
        for c in config["clusters"]
    ]
    path = tmp_path / "unreachable.kubeconfig"
    path.write_text(yaml.safe_dump(unreachable))
    down = keyrotor_cli("status", "app", "-n", ns, kubeconfig=path)
    assert one_line_error(down).startswith("keyrotor: cannot reach the Kubernetes API server")
