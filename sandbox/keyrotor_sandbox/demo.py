"""``keyrotor demo``: the whole rotation loop on this machine, shown as it happens.

Emulated AWS (moto, made to behave like AWS: keyrotor_sandbox.aws) and a real Kubernetes API
server (etcd + kube-apiserver: keyrotor_sandbox.kube), both on loopback; the operator runs as
``keyrotor run`` in its own process with its own RBAC identity. Nothing reaches real AWS.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor.aws import policies
from keyrotor.model import GROUP, PLURAL, VERSION
from keyrotor_sandbox.aws import AwsEmulator
from keyrotor_sandbox.kube import KubeApiServer, repo_root
from keyrotor_sandbox.operator import OperatorProcess

NAMESPACE = "demo"
NAME = "billing-exporter"
IAM_USER = "billing-exporter"
T = TypeVar("T")

DEMO_OBJECT: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "AccessKeyRotation",
    "metadata": {"name": NAME, "namespace": NAMESPACE},
    "spec": {
        "iamUser": IAM_USER,
        "rotation": {"interval": "30d", "window": "2h"},
        "secretsManager": {"deletionPolicy": "Delete", "recoveryWindowDays": 7},
        "target": {"secretName": "billing-exporter-aws", "profile": "default"},
        "restartOnRotation": [{"kind": "Deployment", "name": NAME}],
        "previousKey": {"action": "Deactivate", "after": "5s"},
    },
}


class DemoFailed(RuntimeError):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")


def mask(secret: str) -> str:
    return f"{secret[:4]}{'*' * 12} ({len(secret)} characters, never shown or logged)"


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:  # the in-process Lambda logs at INFO
        handler.setLevel(logging.WARNING)
    for noisy in ("werkzeug", "lambda_function", "keyrotor_sandbox"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        run_demo()
    except DemoFailed as exc:
        print(f"keyrotor demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keyrotor demo: interrupted", file=sys.stderr)
        return 130
    return 0


def run_demo() -> None:
    say("keyrotor demo: the whole rotation loop, on emulated AWS and a real Kubernetes API server.")
    say("Everything listens on 127.0.0.1; nothing reaches real AWS.")
    root = repo_root()
    rbac = root / "deploy" / "base" / "rbac.yaml" if root else None
    if rbac is None or not rbac.exists():
        raise DemoFailed("run the demo from a keyrotor checkout (deploy/base/rbac.yaml not found)")
    workdir = Path(tempfile.mkdtemp(prefix="keyrotor-demo-"))

    step("Starting emulated AWS (moto server on loopback)")
    with AwsEmulator() as aws:
        say(f"    AWS endpoint: {aws.endpoint_url} (account {aws.account_id}, {aws.region})")
        step("Starting etcd and kube-apiserver (built from Go modules on first use)")
        with KubeApiServer(progress=sys.stdout) as kube:
            say(f"    API server:   {kube.url}  (versions {kube.versions})")
            say(f"    kubeconfig:   {kube.admin_kubeconfig}")
            kube.apply_yaml(rbac)
            _demo_loop(aws, kube, workdir)


def _demo_loop(aws: AwsEmulator, kube: KubeApiServer, workdir: Path) -> None:
    api = kube.admin_client()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    apps = client.AppsV1Api(api)

    step(f"Creating IAM user {IAM_USER!r}, tagged keyrotor.io/namespaces={NAMESPACE}")
    aws.create_iam_user(IAM_USER, {"keyrotor.io/namespaces": NAMESPACE})
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    apps.create_namespaced_deployment(NAMESPACE, _deployment())
    say(
        f"    {NAMESPACE} lets keyrotor restart its workloads (RoleBinding to "
        f"keyrotor-restart-workloads)"
    )
    client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
        NAMESPACE,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="keyrotor-restart-workloads"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="keyrotor-restart-workloads",
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="ServiceAccount", name="keyrotor", namespace="keyrotor-system"
                )
            ],
        ),
    )

    step("Giving the operator its AWS identity: `keyrotor policy` documents, and no more")
    aws_environ = _least_privilege_operator(aws)

    step("Starting the operator: keyrotor run --cluster-name demo")
    operator = OperatorProcess(
        kubeconfig=kube.operator_kubeconfig,
        aws_environ=aws_environ,
        args=["--cluster-name", "demo", "--sync-interval", "10", "--focus-interval", "1"],
        log_path=workdir / "operator.log",
    ).start()
    try:
        say(f"    operator log: {operator.log_path}")
        step("Applying the AccessKeyRotation")
        say("    " + yaml.safe_dump(DEMO_OBJECT, sort_keys=False).replace("\n", "\n    ").rstrip())
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, DEMO_OBJECT)
        first = _watch_until_ready(custom, operator)
        first_key, first_secret = _show_secret(core, aws, first)

        step("Rotating now: kubectl annotate akr billing-exporter keyrotor.io/rotate-now=demo-1")
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            NAME,
            {"metadata": {"annotations": {"keyrotor.io/rotate-now": "demo-1"}}},
        )
        second = wait_for(
            lambda: _status_if(custom, lambda s: s.get("accessKeyId") not in (None, first_key)),
            "the rotated key to be mirrored",
        )
        say(f"    new key {second['accessKeyId']} mirrored (version {second['versionId']})")
        second_key, _ = _show_secret(core, aws, second)
        template = apps.read_namespaced_deployment(NAME, NAMESPACE).spec.template.metadata
        say(
            f"    Deployment {NAME} restarted for version "
            f"{(template.annotations or {}).get('keyrotor.io/restarted-for-version')}"
        )

        step("The previous key is deactivated after its grace period (5s here, 24h by default)")
        wait_for(
            lambda: _status_if(
                custom, lambda s: (s.get("previousKey") or {}).get("state") == "Inactive"
            ),
            "the previous key to be deactivated",
        )
        iam = aws.client("iam")
        for key in iam.list_access_keys(UserName=IAM_USER)["AccessKeyMetadata"]:
            role = "current " if key["AccessKeyId"] == second_key else "previous"
            say(f"    {role} {key['AccessKeyId']}: {key['Status']}")
        old_arn = _caller_arn(aws, first_key, first_secret)
        answer = "yes" if old_arn else "no (inactive: refused by STS)"
        say(f"    the old key authenticates: {answer}")
        if old_arn:
            raise DemoFailed("the deactivated key still authenticates")

        step("Events on the object (kubectl describe akr billing-exporter)")
        events = core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={NAME}"
        ).items
        # Event timestamps have one-second resolution; etcd's resourceVersion gives the order.
        for event in sorted(events, key=lambda e: int(e.metadata.resource_version)):
            say(f"    {event.type:8} {event.reason:24} {event.message}")

        step("Deleting the object (deletionPolicy Delete)")
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        wait_for(lambda: _gone(custom), "the object to be finalized")
        arn = second["secretArn"]
        deleted = aws.client("secretsmanager").describe_secret(SecretId=arn).get("DeletedDate")
        say(f"    Secrets Manager secret scheduled for deletion at {deleted}")
        wait_for(
            lambda: _secret_gone(core), "the mirrored Secret to be garbage-collected", timeout=60
        )
        say("    the mirrored Secret went with its owner (garbage collection)")
        aws.wait_for_rotations()
        if aws.denials:
            raise DemoFailed(f"a call outside the IAM policies was refused: {aws.denials[0]}")
        say("    every AWS call of the operator and the Lambda was within their policies")
    finally:
        operator.stop()
        api.close()
    step("Done: emulated AWS and the API server are stopped and their data removed.")


def _least_privilege_operator(aws: AwsEmulator) -> dict[str, str]:
    """As an AWS administrator would: the permissions boundary first, then an identity for the
    operator holding exactly the operator policy. The emulator evaluates the policies of the
    operator and of the rotation role it creates on every call (its fix 13)."""
    params = policies.PolicyParams(
        cluster_name="demo", region=aws.region, account_id=aws.account_id
    )
    iam = aws.client("iam")
    iam.create_policy(
        PolicyName=policies.boundary_name("demo"),
        PolicyDocument=json.dumps(policies.permissions_boundary(params)),
    )
    arn = iam.create_user(UserName="keyrotor-operator")["User"]["Arn"]
    iam.put_user_policy(
        UserName="keyrotor-operator",
        PolicyName="keyrotor-operator",
        PolicyDocument=json.dumps(policies.operator_policy(params)),
    )
    key = iam.create_access_key(UserName="keyrotor-operator")["AccessKey"]
    aws.enforce_iam(arn)
    aws.enforce_iam(params.role_arn)
    actions = len(policies.actions_of(policies.operator_policy(params)))
    say(f"    boundary {params.boundary_arn}")
    say(f"    operator {arn}: {actions} actions, on installation demo's resources only")
    return {
        **aws.environ(),
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def _deployment() -> client.V1Deployment:
    labels = {"app": NAME}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=NAME),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="exporter",
                            image="registry.example/billing-exporter:1",
                            env_from=[
                                client.V1EnvFromSource(
                                    secret_ref=client.V1SecretEnvSource(name="billing-exporter-aws")
                                )
                            ],
                        )
                    ]
                ),
            ),
        ),
    )


def _status_if(custom: Any, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    status = obj.get("status") or {}
    return status if predicate(status) else None


def _secret_gone(core: Any) -> bool:
    try:
        core.read_namespaced_secret("billing-exporter-aws", NAMESPACE)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _gone(custom: Any) -> bool:
    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _watch_until_ready(custom: Any, operator: OperatorProcess) -> dict[str, Any]:
    """Print each condition change until Ready=True."""
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not operator.running():
            raise DemoFailed(f"the operator exited; see {operator.log_path}")
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        status = obj.get("status") or {}
        for condition in status.get("conditions") or []:
            marker = (condition["type"], condition["status"], condition["reason"])
            if marker not in seen:
                seen.add(marker)
                say(
                    f"    {condition['type']:18} {condition['status']:5} {condition['reason']:18} "
                    f"{condition['message']}"
                )
            if condition["type"] == "Ready" and condition["status"] == "True":
                say(f"    secret:  {status.get('secretArn')}")
                say(f"    lambda:  {status.get('lambdaArn')}")
                return dict(status)
        time.sleep(0.3)
    raise DemoFailed("the object did not become Ready in 120s")


def _caller_arn(aws: AwsEmulator, key_id: str, secret: str) -> str | None:
    sts = boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name=aws.region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    try:
        return str(sts.get_caller_identity()["Arn"])
    except Exception:
        return None


def _show_secret(core: Any, aws: AwsEmulator, status: dict[str, Any]) -> tuple[str, str]:
    secret = core.read_namespaced_secret("billing-exporter-aws", NAMESPACE)
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    key_id, secret_key = data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]
    say(f"    Secret {NAMESPACE}/billing-exporter-aws: AWS_ACCESS_KEY_ID={key_id}")
    say(f"        AWS_SECRET_ACCESS_KEY={mask(secret_key)}")
    say(f"        annotations: version-id={secret.metadata.annotations['keyrotor.io/version-id']}")
    arn = _caller_arn(aws, key_id, secret_key)
    if arn is None:
        raise DemoFailed("the mirrored key does not authenticate")
    say(f"    sts get-caller-identity with the mirrored key: {arn}")
    if status.get("accessKeyId") != key_id:
        raise DemoFailed("the Secret does not hold the key named in status")
    return key_id, secret_key
