"""keyrotor benchmark: AWS calls at steady state, sync latency, and 200 objects to Ready.

Runs the operator as in production (``keyrotor run`` in its own process, with its RBAC identity)
against the real kube-apiserver and the AWS emulator, the same pieces the end-to-end tests use.
Not part of the test suite; run on purpose:

    .venv/bin/python -m tests.bench.run [--objects 200] [--latency-samples 20]
                                        [--which all|calls|latency|scale]

What each figure means is in tests/bench/README.md; measured figures go in RESULTS.md.
The operator's own AWS calls are read from its Prometheus counter
``keyrotor_aws_api_calls_total`` (``--metrics-port``), and cross-checked against the emulator's
call log (calls not made by the in-process rotation Lambda, i.e. without a Lambda step).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import resource
import shlex
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from keyrotor.model import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from keyrotor_sandbox.aws import AwsEmulator, Call, CallLog
from keyrotor_sandbox.kube import KubeApiServer, ensure_binaries
from tests.bench import bench_limits
from tests.bench.emulator_floor import emulator_floor
from tests.fixtures.operator import RBAC, Harness

VERSION_ID = "keyrotor.io/version-id"
DEFAULT_SYNC_INTERVAL = 300.0
DEFAULT_FOCUS_INTERVAL = 2.0
SWEEPS_PER_HOUR = 3600 / DEFAULT_SYNC_INTERVAL  # 12
# Production defaults for everything the harness's FAST_ARGS shortens (flags given later win, so
# a stage may still shorten one on purpose); a 6s stuck-after would clear slow rotations of a big
# batch as "stuck".
PRODUCTION_ARGS = (
    "--sync-interval",
    "300",
    "--focus-interval",
    "2",
    "--stuck-after",
    "900",
    "--recheck-interval",
    "120",
)


def say(text: str = "") -> None:
    print(text, flush=True)


# --- measuring helpers ---------------------------------------------------------------------------


class TimedCallLog(CallLog):
    """The emulator's call log, with the arrival time (time.time()) of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
            self.times.append(time.time())

    def since(self, index: int) -> list[tuple[float, Call]]:
        with self._lock:
            return list(zip(self.times[index:], self._calls[index:], strict=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Metrics:
    """The operator's Prometheus endpoint."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310 (loopback)
            text = response.read().decode()
        calls: Counter[str] = Counter()
        reconciles: Counter[str] = Counter()
        sweeps, first_look = 0.0, None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "keyrotor_aws_api_calls_total":
                    calls[f"{sample.labels['service']}:{sample.labels['operation']}"] += int(
                        sample.value
                    )
                elif sample.name == "keyrotor_sync_sweeps_total":
                    sweeps = sample.value
                elif sample.name == "keyrotor_reconciles_total":
                    reconciles[sample.labels["trigger"]] += int(sample.value)
                elif sample.name == "keyrotor_focus_first_look_seconds":
                    first_look = sample.value
        return {
            "calls": calls,
            "sweeps": int(sweeps),
            "reconciles": reconciles,
            "first_look_s": first_look,
        }

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.scrape()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"no metrics at {self.url}")


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS/VmHWM (MiB) and CPU seconds (user+system) of a process."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def self_usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024}


class SecretWatcher:
    """Watches the mirrored Secrets of one namespace; records when each version id first shows."""

    def __init__(self, core: client.CoreV1Api, namespace: str, selector: str | None = None) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = selector or f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        self.seen: dict[tuple[str, str], float] = {}  # (secret name, version id) -> time.time()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="secret-watch")

    def start(self) -> SecretWatcher:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        selector = self.selector
        while not self._stop.is_set():
            listing = self.core.list_namespaced_secret(self.namespace, label_selector=selector)
            now = time.time()
            for item in listing.items:
                self._note(item, now)
            self._ready.set()
            stream = watch.Watch().stream(
                self.core.list_namespaced_secret,
                self.namespace,
                label_selector=selector,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=60,
            )
            try:
                for event in stream:
                    self._note(event["object"], time.time())
                    if self._stop.is_set():
                        return
            except Exception as exc:  # an expired watch: list again
                logging.getLogger(__name__).debug("watch restarted: %s", exc)

    def _note(self, secret: client.V1Secret, when: float) -> None:
        version = (secret.metadata.annotations or {}).get(VERSION_ID)
        if version:
            self.seen.setdefault((secret.metadata.name, version), when)

    def wait(self, name: str, version: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (name, version) in self.seen:
                return self.seen[(name, version)]
            time.sleep(0.02)
        raise TimeoutError(f"Secret {self.namespace}/{name} never showed version {version}")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "worst": max(values),
        "best": min(values),
        "mean": statistics.fmean(values),
    }


# --- the bench ---------------------------------------------------------------------------------


@dataclass
class Bench:
    aws: AwsEmulator
    kube: KubeApiServer
    log_dir: Path
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def calls(self) -> TimedCallLog:
        assert isinstance(self.aws.calls, TimedCallLog)
        return self.aws.calls

    # -- shared pieces ---------------------------------------------------------------------------

    def harness(self, stage: str, *args: str) -> tuple[Harness, Metrics]:
        port = free_port()
        log_dir = self.log_dir / stage
        log_dir.mkdir(parents=True, exist_ok=True)
        harness = Harness(self.aws, self.kube, log_dir)
        # Other people edit this tree: note what code each stage's operator started from.
        self.results.setdefault("operator_code", {})[stage] = git_state()
        harness.start_operator(*PRODUCTION_ARGS, "--metrics-port", str(port), *args)
        metrics = Metrics(port)
        metrics.wait_up()
        return harness, metrics

    def finish(self, harness: Harness) -> None:
        self.aws.wait_for_rotations(timeout=300)
        harness.stop()
        # moto keeps its state process-wide: start each stage from an empty account.
        reset = f"{self.aws.endpoint_url}/moto-api/reset"
        request = urllib.request.Request(reset, method="POST")  # noqa: S310 (loopback)
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310 (loopback)

    @staticmethod
    def apply(harness: Harness, namespace: str, names: list[str]) -> None:
        for name in names:
            harness.create(namespace, name, {"iamUser": name})

    @staticmethod
    def ready_count(harness: Harness, namespace: str) -> tuple[int, int]:
        items = harness.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
            "items"
        ]
        ready = sum(
            1 for obj in items if (Harness.condition(obj, "Ready") or {}).get("status") == "True"
        )
        return ready, len(items)

    def wait_all_ready(
        self,
        harness: Harness,
        namespace: str,
        total: int,
        timeout: float,
        on_poll: Callable[[], None] = lambda: None,
        interval: float = 0.5,
    ) -> dict[str, float]:
        """Poll until every object is Ready; return when 1, half and all got there (monotonic)."""
        marks: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        last_report = 0.0
        while time.monotonic() < deadline:
            ready, _ = self.ready_count(harness, namespace)
            now = time.monotonic()
            on_poll()
            if ready >= 1:
                marks.setdefault("first", now)
            if ready >= total / 2:
                marks.setdefault("half", now)
            if ready >= total:
                marks["all"] = now
                return marks
            if not harness.operator.running():
                raise RuntimeError(f"operator exited; see {harness.operator.log_path}")
            if now - last_report > 15:
                say(f"    {ready}/{total} Ready")
                last_report = now
            time.sleep(interval)
        raise TimeoutError(f"only {self.ready_count(harness, namespace)} Ready after {timeout}s")

    def users(self, harness: Harness, namespace: str, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}-{i:03d}" for i in range(count)]
        for name in names:
            harness.iam_user(namespaces=namespace, name=f"{name}-{harness.cluster_name}")
        return [f"{name}-{harness.cluster_name}" for name in names]

    # -- 1. AWS calls at steady state ------------------------------------------------------------

    def bench_calls(self, counts: list[int], sweeps: int, sync_interval: float) -> None:
        say(
            f"\n== 1. AWS API calls at steady state "
            f"(N = {counts}, --sync-interval {sync_interval:g})"
        )
        harness, metrics = self.harness("calls", "--sync-interval", f"{sync_interval:g}")
        out: list[dict[str, Any]] = []
        try:
            namespace = harness.namespace("bench-calls")
            have = 0
            for n in counts:
                names = self.users(harness, namespace, f"c{have}", n - have)
                self.apply(harness, namespace, names)
                have = n
                self.wait_all_ready(harness, namespace, n, timeout=60 + 5 * n)
                self.aws.wait_for_rotations(timeout=120)
                out.append(self._steady_window(metrics, n, sweeps, sync_interval))
        finally:
            self.finish(harness)
        self.results["calls"] = {"sync_interval": sync_interval, "runs": out}

    def _steady_window(
        self, metrics: Metrics, n: int, sweeps: int, sync_interval: float
    ) -> dict[str, Any]:
        # Let the first sweep after Ready mirror anything left, then start the window in the
        # middle of an interval, so it holds exactly `sweeps` sweeps.
        start_sweeps = metrics.scrape()["sweeps"]
        while metrics.scrape()["sweeps"] < start_sweeps + 2:
            time.sleep(0.1)
        time.sleep(sync_interval / 2)
        before = metrics.scrape()
        log_start = len(self.calls)
        began = time.monotonic()
        time.sleep(sweeps * sync_interval)
        after = metrics.scrape()
        elapsed = time.monotonic() - began
        in_window = self.calls.since(log_start)
        operator_calls = Counter(
            f"{c.service}:{c.operation}" for _, c in in_window if c.step is None
        )
        lambda_calls = sum(1 for _, c in in_window if c.step is not None)
        delta = after["calls"] - before["calls"]
        swept = after["sweeps"] - before["sweeps"]
        total = sum(delta.values())
        per_sweep = total / swept if swept else math.nan
        per_object_hour = per_sweep * SWEEPS_PER_HOUR / n
        naive = SWEEPS_PER_HOUR  # one GetSecretValue per object per 300s poll
        others = {op: count for op, count in delta.items() if op != "secretsmanager:ListSecrets"}
        result = {
            "objects": n,
            "steady": not others and lambda_calls == 0,
            "window_s": round(elapsed, 1),
            "sweeps": swept,
            "operator_calls": dict(delta),
            "emulator_non_lambda_calls": dict(operator_calls),
            "lambda_calls": lambda_calls,
            "calls_per_sweep": per_sweep,
            "expected_list_secrets_per_sweep": math.ceil(n / 100),
            "calls_per_hour_at_300s": per_sweep * SWEEPS_PER_HOUR,
            "calls_per_object_hour_at_300s": per_object_hour,
            "naive_calls_per_object_hour_at_300s": naive,
            "naive_over_keyrotor": naive / per_object_hour if per_object_hour else math.inf,
        }
        say(
            f"    N={n}: {swept} sweeps in {elapsed:.0f}s, operator calls {dict(delta)} "
            f"(emulator saw {dict(operator_calls)}; Lambda {lambda_calls}); "
            f"{per_sweep:.2f}/sweep -> {per_object_hour:.3f} calls/object/hour at 300s "
            f"(naive {naive:g}: x{result['naive_over_keyrotor']:.0f})"
        )
        return result

    # -- 2. latency from an AWSCURRENT change to the Secret -------------------------------------

    def bench_latency(self, samples: int, sweep_interval: float) -> None:
        say(f"\n== 2. AWSCURRENT change -> updated Secret ({samples} samples each)")
        harness, metrics = self.harness(
            "latency-focus",
            "--sync-interval",
            f"{DEFAULT_SYNC_INTERVAL:g}",
            "--focus-interval",
            f"{DEFAULT_FOCUS_INTERVAL:g}",
        )
        try:
            namespace = harness.namespace("bench-latency")
            (name,) = self.users(harness, namespace, "lat", 1)
            self.apply(harness, namespace, [name])
            obj = harness.wait_ready(namespace, name, timeout=120)
            arn = obj["status"]["secretArn"]
            self.aws.wait_for_rotations(timeout=60)
            watcher = SecretWatcher(harness.core, namespace).start()
            try:
                say(
                    f"    (a) rotate-now, --focus-interval {DEFAULT_FOCUS_INTERVAL:g}s, "
                    f"--sync-interval {DEFAULT_SYNC_INTERVAL:g}s"
                )
                focus = self._latency_rounds(
                    samples,
                    lambda i: harness.annotate(
                        namespace, name, {"keyrotor.io/rotate-now": f"bench-{i}-{time.time()}"}
                    ),
                    watcher,
                    name,
                    arn,
                    jitter=DEFAULT_FOCUS_INTERVAL,
                )
                harness.operator.stop()
                say(
                    f"    (b) RotateSecret outside keyrotor, --sync-interval {sweep_interval:g}s, "
                    f"--focus-interval {DEFAULT_FOCUS_INTERVAL:g}s"
                )
                harness.start_operator(
                    *PRODUCTION_ARGS,
                    "--metrics-port",
                    str(port := free_port()),
                    "--sync-interval",
                    f"{sweep_interval:g}",
                    "--focus-interval",
                    f"{DEFAULT_FOCUS_INTERVAL:g}",
                )
                metrics = Metrics(port)
                metrics.wait_up()
                while metrics.scrape()["sweeps"] < 1:
                    time.sleep(0.2)
                sm = self.aws.client("secretsmanager")
                outside = self._latency_rounds(
                    samples,
                    lambda _i: sm.rotate_secret(SecretId=arn),
                    watcher,
                    name,
                    arn,
                    jitter=sweep_interval,
                )
            finally:
                watcher.stop()
        finally:
            self.finish(harness)
        self.results["latency"] = {
            "rotate_now": {
                "focus_interval": DEFAULT_FOCUS_INTERVAL,
                "sync_interval": DEFAULT_SYNC_INTERVAL,
                **focus,
            },
            "outside_rotation": {
                "focus_interval": DEFAULT_FOCUS_INTERVAL,
                "sync_interval": sweep_interval,
                **outside,
            },
        }

    def _latency_rounds(
        self,
        samples: int,
        trigger: Callable[[int], object],
        watcher: SecretWatcher,
        name: str,
        arn: str,
        jitter: float,
    ) -> dict[str, Any]:
        latencies: list[float] = []
        request_to_secret: list[float] = []
        rotation_times: list[float] = []
        for i in range(samples):
            # A random phase against the operator's loop, so samples are not all alike.
            time.sleep(random.uniform(0, jitter))
            known = len(self.aws.rotations_of(arn))
            log_start = len(self.calls)
            requested = time.time()
            trigger(i)
            deadline = time.monotonic() + 120
            while len(self.aws.rotations_of(arn)) <= known or any(
                r.finished is None for r in self.aws.rotations_of(arn)
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("rotation did not finish")
                time.sleep(0.02)
            rotation = self.aws.rotations_of(arn)[-1]
            if not rotation.succeeded:
                raise RuntimeError(f"rotation failed: {rotation.error}")
            moved = next(
                t
                for t, c in self.calls.since(log_start)
                if c.operation == "UpdateSecretVersionStage" and c.step == "finishSecret"
            )
            shown = watcher.wait(name, rotation.token, timeout=DEFAULT_SYNC_INTERVAL + 60)
            latencies.append(shown - moved)
            request_to_secret.append(shown - requested)
            rotation_times.append(rotation.finished.timestamp() - rotation.started.timestamp())  # type: ignore[union-attr]
            say(
                f"      {i + 1:2d}: AWSCURRENT moved -> Secret {latencies[-1]:6.2f}s "
                f"(request -> Secret {request_to_secret[-1]:6.2f}s, "
                f"rotation {rotation_times[-1]:.2f}s)"
            )
        result: dict[str, Any] = {
            "awscurrent_to_secret_s": summary(latencies),
            "request_to_secret_s": summary(request_to_secret),
            "rotation_s": summary(rotation_times),
            "samples_s": [round(v, 3) for v in latencies],
        }
        lat = result["awscurrent_to_secret_s"]
        say(f"      median {lat['median']:.2f}s, worst {lat['worst']:.2f}s")
        return result

    # -- 3. many objects from apply to Ready -----------------------------------------------------

    def bench_scale(self, count: int, extra_args: tuple[str, ...] = ()) -> None:
        say(f"\n== 3. {count} objects from apply to Ready (production intervals) {extra_args}")
        harness, metrics = self.harness("scale", *extra_args)
        pid = harness.operator.pid
        assert pid is not None
        samples: list[tuple[float, float]] = []
        try:
            namespace = harness.namespace("bench-scale")
            names = self.users(harness, namespace, "s", count)
            floor_users = self.users(harness, namespace, "f", count)  # for the lower bound
            idle = proc_status(pid)
            bench_before = self_usage()
            load_before = os.getloadavg()
            first_call = len(self.calls)
            began = time.monotonic()
            self.apply(harness, namespace, names)
            applied = time.monotonic()
            say(f"    applied {count} objects in {applied - began:.1f}s")

            def sample() -> None:
                samples.append((time.monotonic() - began, proc_status(pid)["VmRSS"]))

            marks = self.wait_all_ready(
                harness, namespace, count, timeout=60 + 10 * count, on_poll=sample, interval=1.0
            )
            status = proc_status(pid)
            bench_after = self_usage()
            load_after = os.getloadavg()
            scraped = metrics.scrape()
            limits = bench_limits.operator_figures(metrics.url)
            limits["busiest_second"] = bench_limits.busiest_second(self.calls.since(first_call))
            self.aws.wait_for_rotations(timeout=120)
            floor = self._emulator_floor(harness, namespace, floor_users)
            handler_runs = harness.operator.logs().count("Handler 'reconcile_object' succeeded")
        finally:
            self.finish(harness)
        result = self._scale_result(
            count, began, applied, marks, idle, status, bench_before, bench_after, samples
        )
        operator_calls, reconciles = scraped["calls"], scraped["reconciles"]
        result.update(
            load_avg_before=load_before,
            load_avg_at_ready=load_after,
            operator_calls=dict(operator_calls),
            operator_calls_per_object=sum(operator_calls.values()) / count,
            operator_calls_per_object_by_operation={
                op: round(n / count, 3) for op, n in operator_calls.most_common()
            },
            reconciles=dict(reconciles),
            reconciles_per_object=sum(reconciles.values()) / count,
            first_look_s=scraped["first_look_s"],
            handler_runs_per_object=handler_runs / count,
            emulator_floor=floor,
            operator_args=list(extra_args),
            limits=limits,
        )
        self._say_scale(result)
        say(bench_limits.summary(limits))
        self.results["scale"] = result

    def _emulator_floor(self, harness: Harness, namespace: str, users: list[str]) -> dict[str, Any]:
        """The emulator alone, same run, same installation: tests/bench/emulator_floor.py."""
        items = harness.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        lambda_arn = items["items"][0]["status"]["lambdaArn"]
        say(f"    the emulator alone: CreateSecret + RotateSecret for {len(users)} more users")
        before = self_usage()
        floor = emulator_floor(
            self.aws,
            cluster=harness.cluster_name,
            users=users,
            lambda_arn=lambda_arn,
            timeout=60 + 10 * len(users),
        )
        floor["bench_process_cpu_s"] = self_usage()["cpu_s"] - before["cpu_s"]
        return floor

    @staticmethod
    def _say_scale(result: dict[str, Any]) -> None:
        count, floor = result["objects"], result["emulator_floor"]
        say(
            f"    all {count} Ready {result['all_ready_s']:.1f}s after the first apply "
            f"(first {result['first_ready_s']:.1f}s, half {result['half_ready_s']:.1f}s); "
            f"the emulator alone: {floor['all_rotated_s']:.1f}s; "
            f"operator peak RSS {result['operator_peak_rss_mib']:.0f} MiB "
            f"(idle {result['operator_idle_rss_mib']:.0f} MiB), operator CPU "
            f"{result['operator_cpu_s']:.0f}s, emulator+bench process CPU "
            f"{result['bench_process_cpu_s']:.0f}s"
        )
        say(
            f"    operator AWS calls per object {result['operator_calls_per_object']:.2f}: "
            f"{result['operator_calls_per_object_by_operation']}"
        )
        say(
            f"    reconciles per object {result['reconciles_per_object']:.2f} "
            f"{result['reconciles']}; kopf handler runs per object "
            f"{result['handler_runs_per_object']:.3f}; the first look of a wait at the end: "
            f"{result.get('first_look_s')} s"
        )

    @staticmethod
    def _scale_result(
        count: int,
        began: float,
        applied: float,
        marks: dict[str, float],
        idle: dict[str, float],
        status: dict[str, float],
        bench_before: dict[str, float],
        bench_after: dict[str, float],
        samples: list[tuple[float, float]],
    ) -> dict[str, Any]:
        return {
            "objects": count,
            "apply_s": applied - began,
            "first_ready_s": marks["first"] - began,
            "half_ready_s": marks["half"] - began,
            "all_ready_s": marks["all"] - began,
            "operator_idle_rss_mib": idle["VmRSS"],
            "operator_peak_rss_mib": status["VmHWM"],
            "operator_rss_at_ready_mib": status["VmRSS"],
            "operator_cpu_s": status["cpu_s"] - idle["cpu_s"],
            "bench_process_cpu_s": bench_after["cpu_s"] - bench_before["cpu_s"],
            "bench_process_maxrss_mib": bench_after["maxrss_mib"],
            "rss_samples": [
                (round(t, 1), round(m, 1)) for t, m in samples[:: max(1, len(samples) // 20)]
            ],
        }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "load_avg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def git_state() -> str:
    """The commit, and whether operator/ differs from it (the operator runs from this tree)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "operator"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' (operator/ modified)' if dirty else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--objects", type=int, default=200, help="objects for the scale run")
    parser.add_argument(
        "--scale-args",
        default="",
        help="more `keyrotor run` flags for the scale run, e.g. '--sync-workers 1'",
    )
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument(
        "--which",
        choices=["all", "calls", "latency", "scale", "events", "sidebyside", "memory"],
        default="all",
        help="sidebyside (14-20 minutes) and memory (depends on --memory-objects) are not "
        "part of all",
    )
    parser.add_argument(
        "--memory-objects",
        default="1000",
        help="object counts for the memory stage, comma separated (cumulative), e.g. "
        "1000,3000,10000",
    )
    parser.add_argument(
        "--memory-sync-interval",
        type=float,
        default=60.0,
        help="keyrotor's --sync-interval in the memory stage (two sweeps are waited for)",
    )
    parser.add_argument(
        "--memory-args",
        default="",
        help="more `keyrotor run` flags for the memory stage, e.g. '--aws-rate iam:read=200'",
    )
    parser.add_argument(
        "--memory-accounts",
        action="store_true",
        help="the memory stage's operator also reports glibc's and pymalloc's accounts",
    )
    parser.add_argument(
        "--sbs-objects", type=int, default=20, help="objects for the side-by-side stage"
    )
    parser.add_argument(
        "--sbs-sync-interval",
        type=float,
        default=60.0,
        help="keyrotor's --sync-interval in the side-by-side stage's sweep mode",
    )
    parser.add_argument(
        "--poller-intervals",
        default="60",
        help="refresh intervals (s) of the per-object poller, comma separated, run side by side",
    )
    parser.add_argument(
        "--events-objects", type=int, default=20, help="objects for the event-mode stage"
    )
    parser.add_argument(
        "--calls-objects",
        default="20,100",
        help="object counts for the steady-state call count, comma separated (cumulative)",
    )
    parser.add_argument("--sweeps", type=int, default=3, help="sweeps per steady-state window")
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=10.0,
        help="short --sync-interval used to observe sweeps (calls) and outside rotations",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:  # the in-process Lambda logs at INFO
        handler.setLevel(logging.WARNING)
    for noisy in ("werkzeug", "lambda_function", "keyrotor_sandbox"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@dataclass
class Stages:
    bench: Bench

    def run(self, args: argparse.Namespace) -> Iterator[str]:
        which = args.which
        if which in ("all", "calls"):
            counts = [int(n) for n in args.calls_objects.split(",") if n]
            self.bench.bench_calls(sorted(counts), args.sweeps, args.sweep_interval)
            yield "calls"
        if which in ("all", "latency"):
            self.bench.bench_latency(args.latency_samples, args.sweep_interval)
            yield "latency"
        if which in ("all", "scale"):
            self.bench.bench_scale(args.objects, tuple(shlex.split(args.scale_args)))
            yield "scale"
        if which in ("all", "events"):
            from tests.bench.bench_event_mode import bench_events

            bench_events(self.bench, args.events_objects, args.latency_samples, args.sweep_interval)
            yield "events"
        if which == "sidebyside":
            from tests.bench.bench_sidebyside import bench_sidebyside

            bench_sidebyside(
                self.bench,
                objects=args.sbs_objects,
                samples=args.latency_samples,
                sync_interval=args.sbs_sync_interval,
                poller_intervals=[float(v) for v in args.poller_intervals.split(",") if v],
            )
            yield "sidebyside"
        if which == "memory":
            from tests.bench.bench_memory import bench_memory

            bench_memory(
                self.bench,
                [int(n) for n in args.memory_objects.split(",") if n],
                args.memory_sync_interval,
                accounts=args.memory_accounts,
                extra_args=tuple(shlex.split(args.memory_args)),
            )
            yield "memory"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    quiet_logs()
    binaries = ensure_binaries()
    log_dir = Path(tempfile.mkdtemp(prefix="keyrotor-bench-"))
    say(f"keyrotor bench: logs in {log_dir}; kube binaries {binaries.directory}")
    results: dict[str, Any] = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    aws = AwsEmulator()
    aws.calls = TimedCallLog()
    started = time.monotonic()
    with aws, KubeApiServer() as kube:
        kube.apply_yaml(RBAC)
        bench = Bench(aws, kube, log_dir, results)
        for stage in Stages(bench).run(args):
            say(f"   ({stage} done at {time.monotonic() - started:.0f}s)")
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    results["total_s"] = time.monotonic() - started
    out = args.out or log_dir / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    say(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
