"""The operator's memory with many objects at steady state, and the sweep's duration (issue 10).
A stage of ``tests.bench.run`` (``--which memory``); figures in RESULTS.md, meaning in README.md.

Bringing 10,000 objects up through the rotation Lambda would take the emulator hours, so the
objects are **seeded** in the state the operator leaves them in, and the operator then runs as
usual over all of them:

1. The operator starts with no object: *idle* RSS.
2. One object (the *template*) is applied and made Ready by the operator, as usual. Its object
   (kopf's annotation and the finalizer, its status), its IAM user's tags (namespaces, claim),
   its secret (tags, rotation rules and Lambda) and its mirrored Secret are what every seeded
   object copies, with its own name, uid, user, ARN, version and key.
3. The operator is stopped. For each count N (cumulative), N objects in all: the objects are
   created in Kubernetes (``spec.iamUser`` only, as in the scale stage, plus the template's
   annotation and finalizer), and for each, through the emulator's own API: the IAM user with
   the template's tags (its own claim), an access key, the secret created as the operator
   creates it (the user name only, in the initial version derived from the object's uid) then
   given the key as AWSCURRENT (``PutSecretValue``: the initial version becomes AWSPREVIOUS, as
   after the first rotation), rotation configured with the template's Lambda and rules
   (``RotateSecret`` without rotating), the mirrored Secret written by the operator's own
   ``mirror_secret``, and the template's status. What differs from a real first rotation: the
   key was not made by the Lambda, and the secret has no ``LastRotatedDate``.
4. The operator starts again, as after a restart or a failover: kopf lists all N objects and
   runs each one's reconcile (``resume``: it finds everything in place), the sync loop sweeps
   all N secrets every ``--memory-sync-interval`` (default 60 s). The bench waits until every
   object was reconciled (N reconciles started, as counted by their first call, ``GetUser``,
   and none running or queued), then for two more sweeps, sampling RSS every 5 s.

Figures per N: *peak* (``VmHWM`` of this start: the resume of N objects at once), *steady*
(``VmRSS`` after the two sweeps), the last sweep's duration
(``keyrotor_sync_last_sweep_duration_seconds``), seconds from start to all reconciled, and the
operator's AWS calls per object in that time. With ``--memory-accounts`` the operator also
reports glibc's and pymalloc's accounts (memory in use, memory kept free) and its live objects
by type, when idle and at steady state (``tests/bench/tracing/sitecustomize.py``, SIGUSR2).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi
from prometheus_client.parser import text_string_to_metric_families

from keyrotor.k8s.client import KubeApis
from keyrotor.k8s.secrets import Owner, mirror_secret
from keyrotor.model import GROUP, KIND, PLURAL, VERSION
from keyrotor.observation import initial_version_id
from tests.bench.run import PRODUCTION_ARGS, Metrics, free_port, proc_status, say

if TYPE_CHECKING:
    from tests.bench.run import Bench
    from tests.fixtures.operator import Harness

TRACING = Path(__file__).resolve().parent / "tracing"
# Each seeded object is one pipeline (its object, then its AWS state, then its Secret and
# status) on one of these threads. The emulator takes its requests one at a time, so the AWS
# part is serial whatever the number; the API server's writes overlap it (4 threads took 30
# minutes for 10,000 objects, 17 of them for the objects alone, made before any AWS call).
SEED_THREADS = 24
SAMPLE_EVERY_S = 5.0


def _scrape(port: int) -> dict[str, float]:
    """The few of the operator's metrics this stage reads."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out: dict[str, float] = {"calls": 0.0, "GetUser": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keyrotor_aws_api_calls_total":
                out["calls"] += sample.value
                if sample.labels["operation"] == "GetUser":
                    out["GetUser"] += sample.value
            elif (
                sample.name == "keyrotor_objects_in_flight"
                and sample.labels.get("path") == "reconcile"
            ):
                out["reconciling"] = sample.value
            elif sample.name in (
                "keyrotor_sync_sweeps_total",
                "keyrotor_sync_last_sweep_duration_seconds",
                "keyrotor_decisions_queued",
            ):
                out[sample.name] = sample.value
    return out


class RssSampler:
    """VmRSS of the operator every few seconds, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (FileNotFoundError, ProcessLookupError):
                return
            self.samples.append((round(time.monotonic() - self._began, 1), round(rss, 1)))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


class Seeder:
    """Objects in the state the operator left the template in (see the module's docstring)."""

    def __init__(self, bench: Bench, harness: Harness, namespace: str, template: str) -> None:
        self.bench = bench
        self.harness = harness
        self.namespace = namespace
        iam = bench.aws.client("iam")
        sm = bench.aws.client("secretsmanager")
        obj = harness.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, template
        )
        self.template = template
        self.template_uid = obj["metadata"]["uid"]
        self.user_tags = {
            t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=template)["Tags"]
        }
        secret = sm.describe_secret(SecretId=obj["status"]["secretArn"])
        self.secret_name = secret["Name"]
        self.secret_tags = {t["Key"]: t["Value"] for t in secret["Tags"]}
        self.secret_description = secret.get("Description", "")
        self.lambda_arn = secret["RotationLambdaARN"]
        self.rules = secret["RotationRules"]
        self.metadata: dict[str, Any] = {
            "annotations": dict(obj["metadata"].get("annotations") or {}),
            "finalizers": list(obj["metadata"].get("finalizers") or []),
        }
        self.status = json.dumps(obj["status"])
        self.template_arn = obj["status"]["secretArn"]
        self.template_version = obj["status"]["versionId"]
        self.template_key = obj["status"]["accessKeyId"]
        self._kube_lock = threading.Lock()
        self._kube_apis: KubeApis | None = None

    def _for(self, text: str, name: str, uid: str) -> str:
        """The template's value for another object (its uid, its name and user)."""
        return text.replace(self.template_uid, uid).replace(self.template, name)

    def create_object(self, name: str) -> str:
        """The AccessKeyRotation object, with kopf's annotations and the finalizer the operator
        added to the template: its uid."""
        body = self._kube().custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {
                    "name": name,
                    "annotations": {
                        k: v.replace(self.template, name)
                        for k, v in self.metadata["annotations"].items()
                    },
                    "finalizers": self.metadata["finalizers"],
                },
                "spec": {"iamUser": name},
            },
        )
        return str(body["metadata"]["uid"])

    def aws_and_secret(self, name: str, uid: str) -> None:
        iam = self._client("iam")
        sm = self._client("secretsmanager")
        tags = {k: self._for(v, name, uid) for k, v in self.user_tags.items()}
        iam.create_user(UserName=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        secret_name = self._for(self.secret_name, name, uid)
        arn = sm.create_secret(
            Name=secret_name,
            ClientRequestToken=initial_version_id(uid),
            SecretString=json.dumps({"username": name}),
            Description=self._for(self.secret_description, name, uid),
            Tags=[
                {"Key": k, "Value": self._for(v, name, uid)} for k, v in self.secret_tags.items()
            ],
        )["ARN"]
        version = str(uuid.uuid4())
        sm.put_secret_value(
            SecretId=arn,
            ClientRequestToken=version,
            SecretString=json.dumps(
                {
                    "username": name,
                    "accesskey": key["AccessKeyId"],
                    "secretkey": key["SecretAccessKey"],
                }
            ),
            VersionStages=["AWSCURRENT"],
        )
        sm.rotate_secret(
            SecretId=arn,
            RotationLambdaARN=self.lambda_arn,
            RotationRules=self.rules,
            RotateImmediately=False,
        )
        mirror_secret(
            self._kube(),
            namespace=self.namespace,
            name=name,
            owner=Owner(api_version=f"{GROUP}/{VERSION}", kind=KIND, name=name, uid=uid),
            version_id=version,
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
            profile="default",
            labels={},
            annotations={},
            key_created=key["CreateDate"],
        )
        status = (
            self._for(self.status, name, uid)
            .replace(self.template_arn, arn)
            .replace(self.template_version, version)
            .replace(self.template_key, key["AccessKeyId"])
        )
        self._kube().custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": json.loads(status)}
        )

    _clients = threading.local()

    def _client(self, service: str) -> Any:
        """One boto3 client per seeding thread and service."""
        clients = self._clients.__dict__.setdefault("by_service", {})
        if service not in clients:
            clients[service] = self.bench.aws.client(service)
        return clients[service]

    def _kube(self) -> KubeApis:
        """One Kubernetes connection pool for all seeding threads, a connection each."""
        with self._kube_lock:
            if self._kube_apis is None:
                configuration = copy.copy(self.harness.api.configuration)
                configuration.connection_pool_maxsize = SEED_THREADS
                api = ApiClient(configuration)
                self._kube_apis = KubeApis(
                    core=CoreV1Api(api), custom=CustomObjectsApi(api), apps=AppsV1Api(api)
                )
            return self._kube_apis

    def seed_one(self, name: str) -> None:
        self.aws_and_secret(name, self.create_object(name))

    def seed(self, names: list[str]) -> None:
        done = 0
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=SEED_THREADS) as pool:
            for _ in pool.map(self.seed_one, names):
                done += 1
                if done % 1000 == 0:
                    say(f"      seeded {done}/{len(names)} in {time.monotonic() - began:.0f}s")


def _start(
    harness: Harness, sync_interval: float, accounts: Path | None, extra_args: tuple[str, ...]
) -> int:
    """The operator, as the other stages start it; its metrics port."""
    port = free_port()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BENCH_MEMORY_DUMP")}
    if accounts is not None:  # read by tests/bench/tracing/sitecustomize.py in the operator
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(TRACING), saved["PYTHONPATH"]])
        )
        os.environ["BENCH_MEMORY_DUMP"] = str(accounts)
    try:
        harness.start_operator(
            *PRODUCTION_ARGS,
            "--metrics-port",
            str(port),
            "--sync-interval",
            f"{sync_interval:g}",
            *extra_args,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    Metrics(port).wait_up(timeout=300)
    return port


def _accounts(pid: int, path: Path) -> str:
    """glibc's and pymalloc's accounts from the operator (SIGUSR2; see sitecustomize.py)."""
    pattern = f"{path.name}.{pid}.*.holders"
    before = set(path.parent.glob(pattern))
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(path.parent.glob(pattern)) - before
        if new:
            time.sleep(1)  # written in one go; let it finish
            return next(iter(new)).read_text()
        time.sleep(0.5)
    return "(no answer)"


def _ready_count(harness: Harness, namespace: str) -> int:
    items = harness.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sum(
        1
        for obj in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )
    )


def _measure(
    bench: Bench,
    harness: Harness,
    namespace: str,
    total: int,
    sync_interval: float,
    accounts: Path | None,
    extra_args: tuple[str, ...],
) -> dict[str, Any]:
    began = time.monotonic()
    port = _start(harness, sync_interval, accounts, extra_args)
    pid = harness.operator.pid
    assert pid is not None
    sampler = RssSampler(pid)
    try:
        deadline = began + 600 + total * 0.5
        last_report = 0.0
        # Every reconcile starts with GetUser: all N ran once none is running or queued (the
        # decision queue, keyrotor.decisions) and N were made.
        while (now := _scrape(port))["GetUser"] < total or (
            now.get("reconciling", 1) > 0 or now.get("keyrotor_decisions_queued", 0) > 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {now['GetUser']:.0f}/{total} reconciled")
            if not harness.operator.running():
                raise RuntimeError(f"operator exited; see {harness.operator.log_path}")
            if time.monotonic() - last_report > 30:
                say(
                    f"      {now['GetUser']:.0f}/{total} reconciled, "
                    f"RSS {proc_status(pid)['VmRSS']:.0f} MiB"
                )
                last_report = time.monotonic()
            time.sleep(2)
        resumed = time.monotonic() - began
        at_ready = now
        ready = _ready_count(harness, namespace)
        # Two full sweeps over all N after every object was reconciled.
        first = at_ready.get("keyrotor_sync_sweeps_total", 0.0)
        while _scrape(port).get("keyrotor_sync_sweeps_total", 0.0) < first + 2:
            time.sleep(2)
        time.sleep(SAMPLE_EVERY_S * 2)
        steady = _scrape(port)
        status = proc_status(pid)
    finally:
        samples = sampler.stop()
    result: dict[str, Any] = {
        "objects": total,
        "resumed_s": round(resumed, 1),
        "ready_after_resume": ready,
        "peak_rss_mib": round(status["VmHWM"], 1),
        "steady_rss_mib": round(status["VmRSS"], 1),
        "last_sweep_s": steady.get("keyrotor_sync_last_sweep_duration_seconds"),
        "calls_to_resume_per_object": round(at_ready["calls"] / total, 2),
        "calls_in_two_sweeps": steady["calls"] - at_ready["calls"],
        "operator_cpu_s": status["cpu_s"],
        "rss_samples": samples[:: max(1, len(samples) // 30)],
    }
    if accounts is not None:
        result["accounts"] = _accounts(pid, accounts).splitlines()[:12]
    say(
        f"    N={total}: all reconciled {resumed:.0f}s after start ({ready} Ready); RSS peak "
        f"{result['peak_rss_mib']:.0f} MiB, steady {result['steady_rss_mib']:.0f} MiB; last "
        f"sweep {result['last_sweep_s'] or float('nan'):.2f}s; "
        f"{result['calls_to_resume_per_object']} AWS calls "
        "per object"
    )
    harness.operator.stop()
    return result


def bench_memory(
    bench: Bench,
    counts: list[int],
    sync_interval: float,
    accounts: bool = False,
    extra_args: tuple[str, ...] = (),
) -> None:
    say(
        f"\n== 7. Memory at steady state (N = {counts}, --sync-interval {sync_interval:g}) "
        f"{' '.join(extra_args)}"
    )
    dump = bench.log_dir / "memory" / "accounts" if accounts else None
    harness, _metrics = bench.harness(
        "memory", "--sync-interval", f"{sync_interval:g}", *extra_args
    )
    out: dict[str, Any] = {
        "sync_interval": sync_interval,
        "operator_args": list(extra_args),
        "runs": [],
    }
    try:
        harness.operator.stop()  # again, so that the idle figure is from a start like the others
        if dump is not None:
            dump.parent.mkdir(parents=True, exist_ok=True)
        _start(harness, sync_interval, dump, extra_args)
        pid = harness.operator.pid
        assert pid is not None
        time.sleep(20)
        idle = proc_status(pid)
        out["idle_rss_mib"] = round(idle["VmRSS"], 1)
        if dump is not None:
            out["idle_accounts"] = _accounts(pid, dump).splitlines()[:12]
        say(f"    idle: RSS {idle['VmRSS']:.0f} MiB")
        namespace = harness.namespace("bench-memory")
        (template,) = bench.users(harness, namespace, "tpl", 1)
        bench.apply(harness, namespace, [template])
        harness.wait_ready(namespace, template, timeout=300)
        bench.aws.wait_for_rotations(timeout=120)
        harness.operator.stop()
        seeder = Seeder(bench, harness, namespace, template)
        have = 0
        for n in sorted(counts):
            names = [f"m{i:05d}-{harness.cluster_name}" for i in range(have, n - 1)]
            seeded = time.monotonic()
            seeder.seed(names)
            have = n - 1
            say(f"    seeded {len(names)} objects in {time.monotonic() - seeded:.0f}s")
            out["runs"].append(
                _measure(bench, harness, namespace, n, sync_interval, dump, extra_args)
            )
    finally:
        for process in harness.operators:
            process.stop()
        # N objects with finalizers: finalizing them all would take longer than the stage; the
        # namespace goes with the API server at the end of the run.
        bench.aws.wait_for_rotations(timeout=120)
        reset = f"{bench.aws.endpoint_url}/moto-api/reset"
        request = urllib.request.Request(reset, method="POST")  # noqa: S310 (loopback)
        urllib.request.urlopen(request, timeout=60).close()  # noqa: S310 (loopback)
    bench.results["memory"] = out
