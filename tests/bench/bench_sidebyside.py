"""Side by side (issue 10): keyrotor in sweep mode and in event mode beside a per-object poller
that follows the usual approach, on the same emulator, API server, objects and rotations. A
stage of ``tests.bench.run`` (``--which sidebyside``); figures in RESULTS.md section 8, meaning
in README.md.

The poller (:class:`Poller`) does what External Secrets Operator does for an ExternalSecret with a
Secrets Manager store: for each object, every refresh interval, ``GetSecretValue`` of
``AWSCURRENT``, and the Kubernetes Secret written when the version changed. One thread per
object: one refresh at once, then at its own random phase on a fixed schedule (no drift), to a
namespace of its own. It runs during both keyrotor phases, so both see the same rotations at the
same time. It is kinder to itself than ESO: no ExternalSecret status write per refresh.

Phases, with N objects Ready (one operator, restarted between the modes):

1. **sweep mode** (``--sync-interval S``, 60 s by default: 20 samples at 300 s take too long; the
   freshness at 300 s is computed from the distribution, uniform over the interval): a steady
   window of exactly three sweeps, then one rotation per object started outside keyrotor
   (``RotateSecret``) at random times over two intervals.
2. **event mode** (``--event-mode``, the sweep at its event-mode default): a steady window of
   120 s, then the same rotations.
3. **event mode by push** (``--event-delivery push``: the emulator's EventBridge POSTs each event
   to the operator's listener on loopback, fix 15): a steady window of 120 s, then the same
   rotations.

Both phases run with ``--installation-recheck 60 --dead-key-check-interval 120`` so that the
periodic checks both modes make show up in the windows; each is counted per occurrence (from the
operator's own counters) and scaled to its default period (900 s, 3600 s). Nothing is left out of
the totals: the calls of an operation none of these explain are scaled by time.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.bench.run import (
    DEFAULT_SYNC_INTERVAL,
    PRODUCTION_ARGS,
    VERSION_ID,
    Metrics,
    SecretWatcher,
    free_port,
    say,
    summary,
)

if TYPE_CHECKING:
    from tests.bench.run import Bench
    from tests.fixtures.operator import Harness

EVENT_MODE_SYNC_INTERVAL = 1800.0  # keyrotor.settings.EVENT_MODE_SYNC_INTERVAL
INSTALLATION_RECHECK = 900.0  # the defaults the periodic checks are scaled to
DEAD_KEY_CHECK = 3600.0
CHECK_ARGS = ("--installation-recheck", "60", "--dead-key-check-interval", "120")
EVENT_IDLE_WINDOW = 120.0
LONG_POLL = "sqs:ReceiveMessage"
LIST_SECRETS = "secretsmanager:ListSecrets"
DEAD_KEY_OPS = ("iam:GenerateCredentialReport", "iam:GetCredentialReport")
INSTALLATION_SERVICES = ("iam", "lambda")
# The event consumer's check of its rule and queue: 3 calls (DescribeRule, ListTargetsByRule,
# GetQueueAttributes; tests/integration/test_event_mode_aws.py) every max(installation recheck,
# sync interval): 1800 s at the defaults. Not in the 120 s window: added by computation.
EVENT_RECHECK_CALLS = {
    "events:DescribeRule": 1,
    "events:ListTargetsByRule": 1,
    "sqs:GetQueueAttributes": 1,
}
# Push delivery's check of its rule, connection and API destination: 4 calls (DescribeRule,
# ListTargetsByRule, DescribeConnection, DescribeApiDestination) every max(installation recheck,
# sync interval), as the queue's; tests/unit/test_event_push.py shows an unchanged token writes
# nothing. Not in the window: added by computation.
PUSH_RECHECK_CALLS = {
    "events:DescribeRule": 1,
    "events:ListTargetsByRule": 1,
    "events:DescribeConnection": 1,
    "events:DescribeApiDestination": 1,
}
PUSH_TOKEN = "bench-" + "0123456789abcdef" * 4
PUSH = "keyrotor event push"
POLLER_LABEL = "bench-poller"
POLL = "secretsmanager:GetSecretValue"


# --- the per-object poller ---------------------------------------------------------------------


class Poller:
    """One thread per object: GetSecretValue(AWSCURRENT) every ``interval`` seconds, and the
    Secret written (created or replaced) when the version differs from the last one written."""

    def __init__(
        self, bench: Bench, namespace: str, interval: float, objects: list[tuple[str, str]]
    ) -> None:
        self.namespace = namespace
        self.interval = interval
        self.objects = objects  # (name, secret ARN)
        self.sm = bench.aws.client("secretsmanager")
        self.core = client.CoreV1Api(bench.kube.admin_client())
        self.calls: Counter[str] = Counter()
        self.writes = 0
        self.errors = 0
        self.first_done: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, arn), daemon=True, name=f"poll-{name}")
            for name, arn in objects
        ]

    def start(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)

    def _run(self, name: str, arn: str) -> None:
        # At once (as ESO syncs a new ExternalSecret), then at a random phase, every interval.
        written: str | None = None
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += (
                random.uniform(0, self.interval) if name not in self.first_done else self.interval
            )
            try:
                written = self._poll(name, arn, written)
            except Exception:  # counted; the next refresh tries again
                with self._lock:
                    self.errors += 1
            with self._lock:
                self.first_done.add(name)

    def _poll(self, name: str, arn: str, written: str | None) -> str | None:
        value = self.sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
        with self._lock:
            self.calls[POLL] += 1
        version = str(value["VersionId"])
        if version == written:
            return written
        data = json.loads(value["SecretString"])
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={"app.kubernetes.io/managed-by": POLLER_LABEL},
                annotations={VERSION_ID: version},
            ),
            string_data={
                "AWS_ACCESS_KEY_ID": str(data.get("accesskey", "")),
                "AWS_SECRET_ACCESS_KEY": str(data.get("secretkey", "")),
            },
        )
        try:
            self.core.replace_namespaced_secret(name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_secret(self.namespace, body)
        with self._lock:
            self.writes += 1
        return version


# --- counting ----------------------------------------------------------------------------------


def _counters(metrics: Metrics) -> dict[str, float]:
    """The operator's counters of its periodic checks (besides calls and sweeps)."""
    with urllib.request.urlopen(metrics.url, timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    wanted = ("keyrotor_installation_ensured_total", "keyrotor_dead_key_checks_total")
    out = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] += sample.value
    return out


@dataclass
class Window:
    operator: Counter[str]
    pollers: list[Counter[str]]  # one per Poller, in order
    emulator: Counter[str]  # every non-Lambda call the emulator served
    sweeps: int
    installation_checks: float
    dead_key_checks: float
    seconds: float

    @property
    def poller(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for calls in self.pollers:
            total += calls
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "operator_calls": dict(self.operator),
            "poller_calls": [dict(c) for c in self.pollers],
            "emulator_non_lambda_calls": dict(self.emulator),
            "emulator_equals_operator_plus_poller": self.emulator == self.operator + self.poller,
            "sweeps": self.sweeps,
            "installation_checks": self.installation_checks,
            "dead_key_checks": self.dead_key_checks,
            "seconds": round(self.seconds, 1),
        }


def _window(bench: Bench, metrics: Metrics, pollers: list[Poller], seconds: float) -> Window:
    before, extra_before = metrics.scrape(), _counters(metrics)
    poll_before = [p.snapshot() for p in pollers]
    log_start = len(bench.calls)
    began = time.monotonic()
    time.sleep(seconds)
    after, extra_after = metrics.scrape(), _counters(metrics)
    poll_after = [p.snapshot() for p in pollers]
    elapsed = time.monotonic() - began
    emulator = Counter(
        f"{c.service}:{c.operation}" for _, c in bench.calls.since(log_start) if c.step is None
    )
    return Window(
        operator=after["calls"] - before["calls"],
        pollers=[a - b for b, a in zip(poll_before, poll_after, strict=True)],
        emulator=emulator,
        sweeps=after["sweeps"] - before["sweeps"],
        installation_checks=extra_after["keyrotor_installation_ensured_total"]
        - extra_before["keyrotor_installation_ensured_total"],
        dead_key_checks=extra_after["keyrotor_dead_key_checks_total"]
        - extra_before["keyrotor_dead_key_checks_total"],
        seconds=elapsed,
    )


def _activity(operation: str) -> str:
    if operation == LIST_SECRETS:
        return "sweep"
    if operation == LONG_POLL:
        return "long poll"
    if operation in DEAD_KEY_OPS:
        return "dead-key check"
    if operation.split(":", 1)[0] in INSTALLATION_SERVICES:
        return "installation check"
    return "other"


def dead_key_per_check(metrics: Metrics) -> dict[str, float]:
    """The dead-key check's calls per completed check over the operator's whole life (a check
    whose report is still being generated asks again 30 s later, so one window may hold half a
    check); the first check comes one interval after the start, so all of them are periodic."""
    calls, checks = metrics.scrape()["calls"], _counters(metrics)["keyrotor_dead_key_checks_total"]
    return {op: calls[op] / checks for op in DEAD_KEY_OPS if checks and calls[op]}


def per_hour(
    window: Window,
    sweeps_per_hour: float,
    list_secrets_per_sweep: float,
    dead_key: dict[str, float],
) -> dict[str, float]:
    """The operator's calls per hour at the defaults, by operation: ListSecrets per sweep x
    sweeps an hour; the installation check's calls per occurrence in the window and the dead-key
    check's per completed check (``dead_key``) x occurrences an hour at their default periods;
    the long poll and anything else by its measured rate."""
    out: dict[str, float] = {op: n * 3600 / DEAD_KEY_CHECK for op, n in dead_key.items()}
    for operation, count in window.operator.items():
        kind = _activity(operation)
        if kind in ("sweep", "dead-key check"):
            continue
        if kind == "installation check" and window.installation_checks:
            rate = count / window.installation_checks * 3600 / INSTALLATION_RECHECK
        else:
            rate = count / window.seconds * 3600
        out[operation] = rate
    out[LIST_SECRETS] = list_secrets_per_sweep * sweeps_per_hour
    return out


# --- rotations outside keyrotor ----------------------------------------------------------------


@dataclass
class Rotated:
    name: str
    token: str
    moved: float  # time.time() of the finishSecret UpdateSecretVersionStage (AWSCURRENT moves)


def _rotate_outside(
    bench: Bench, objects: list[tuple[str, str]], samples: int, spread: float
) -> list[Rotated]:
    """One rotation per object (``samples`` of them) started with RotateSecret at random times
    over ``spread`` seconds; one at a time (a rotation due while another runs waits for it), so
    that each finishSecret call in the emulator's log belongs to exactly one rotation."""
    sm = bench.aws.client("secretsmanager")
    chosen = random.sample(objects, samples)
    offsets = sorted(random.uniform(0, spread) for _ in chosen)
    began = time.monotonic()
    out: list[Rotated] = []
    for (name, arn), offset in zip(chosen, offsets, strict=True):
        time.sleep(max(0.0, began + offset - time.monotonic()))
        known = len(bench.aws.rotations_of(arn))
        log_start = len(bench.calls)
        sm.rotate_secret(SecretId=arn)
        deadline = time.monotonic() + 120
        while len(bench.aws.rotations_of(arn)) <= known or any(
            r.finished is None for r in bench.aws.rotations_of(arn)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the rotation of {arn} did not finish")
            time.sleep(0.02)
        rotation = bench.aws.rotations_of(arn)[-1]
        if not rotation.succeeded:
            raise RuntimeError(f"rotation failed: {rotation.error}")
        moved = next(
            t
            for t, c in bench.calls.since(log_start)
            if c.operation == "UpdateSecretVersionStage" and c.step == "finishSecret"
        )
        out.append(Rotated(name, rotation.token, moved))
    return out


def _freshness(
    rotated: list[Rotated], watchers: dict[str, SecretWatcher], timeouts: dict[str, float]
) -> dict[str, Any]:
    """Seconds from AWSCURRENT moving to each watcher's Secret carrying the new version."""
    out: dict[str, Any] = {}
    for label, watcher in watchers.items():
        values = []
        for r in rotated:
            left = r.moved + timeouts[label] - time.time()
            values.append(watcher.wait(r.name, r.token, timeout=max(left, 1.0)) - r.moved)
        out[label] = {**summary(values), "samples_s": [round(v, 3) for v in values]}
    return out


# --- the stage ---------------------------------------------------------------------------------


def _restart(harness: Harness, *args: str) -> Metrics:
    harness.operator.stop()
    port = free_port()
    harness.start_operator(*PRODUCTION_ARGS, "--metrics-port", str(port), *args)
    metrics = Metrics(port)
    metrics.wait_up()
    return metrics


def _restart_push(harness: Harness) -> tuple[Metrics, int]:
    """The operator again, with push delivery to a listener on loopback (the role EventBridge
    would use made from keyrotor's own documents)."""
    from tests.fixtures.operator import event_push_role, push_flags

    role = event_push_role(harness)
    harness.env["KEYROTOR_EVENT_PUSH_TOKEN"] = PUSH_TOKEN
    port = free_port()
    metrics = _restart(
        harness,
        *push_flags(port, role),
        "--sync-interval",
        f"{EVENT_MODE_SYNC_INTERVAL:g}",
        *CHECK_ARGS,
    )
    events = harness.aws.client("events")
    rule = f"keyrotor-{harness.cluster_name}-secrets"
    harness.wait(
        lambda: (
            any(
                t["Id"] == "keyrotor-push"
                for t in events.list_targets_by_rule(Rule=rule)["Targets"]
            )
            or None
        ),
        timeout=120,
        what="the rule's API destination target",
    )
    return metrics, port


def _quiet(metrics: Metrics, seconds: float = 10.0, timeout: float = 240.0) -> None:
    """Until the operator made no call but long polls and periodic checks for ``seconds`` (the
    restart's reconciles are over)."""
    last: Counter[str] | None = None
    since = began = time.monotonic()
    while time.monotonic() - began < timeout:
        calls = Counter(
            {
                op: n
                for op, n in metrics.scrape()["calls"].items()
                if _activity(op) in ("sweep", "other")
            }
        )
        if calls != last:
            last, since = calls, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.5)
    raise TimeoutError("the operator never went quiet")


def _label(interval: float) -> str:
    return f"poller {interval:g}s"


def bench_sidebyside(
    bench: Bench, objects: int, samples: int, sync_interval: float, poller_intervals: list[float]
) -> None:
    objects = max(objects, samples)  # one rotation per object per phase
    say(
        f"\n== 8. side by side: keyrotor (sweep at {sync_interval:g}s, event mode) beside a "
        f"per-object poller ({', '.join(f'{r:g}s' for r in poller_intervals)}); {objects} "
        f"objects, {samples} rotations outside keyrotor per phase"
    )
    loads = {"start": os.getloadavg()}
    # Keyrotor's sweep has one phase for all objects: rotations spread over two sweep intervals
    # fall at uniform phases against it. Each poller thread has its own random phase already.
    spread = 2 * sync_interval
    harness, metrics = bench.harness(
        "sidebyside", "--sync-interval", f"{sync_interval:g}", *CHECK_ARGS
    )
    pollers: list[Poller] = []
    watchers: dict[str, SecretWatcher] = {}
    try:
        namespace = harness.namespace("bench-sbs")
        names = bench.users(harness, namespace, "x", objects)
        bench.apply(harness, namespace, names)
        bench.wait_all_ready(harness, namespace, objects, timeout=60 + 5 * objects)
        bench.aws.wait_for_rotations(timeout=120)
        pairs = [(n, harness.get(namespace, n)["status"]["secretArn"]) for n in names]  # type: ignore[index]
        watchers["keyrotor"] = SecretWatcher(harness.core, namespace).start()
        for interval in poller_intervals:
            own = harness.namespace(f"bench-poll{interval:g}")
            pollers.append(Poller(bench, own, interval, pairs).start())
            selector = f"app.kubernetes.io/managed-by={POLLER_LABEL}"
            watchers[_label(interval)] = SecretWatcher(harness.core, own, selector).start()
        harness.wait(
            lambda: all(len(p.first_done) == len(pairs) for p in pollers) or None,
            timeout=max(poller_intervals) + 60,
            what="every poller's first refresh",
        )

        say(f"    sweep mode, --sync-interval {sync_interval:g}s: steady window of 3 sweeps")
        swept = metrics.scrape()["sweeps"]
        harness.wait(lambda: metrics.scrape()["sweeps"] > swept or None, timeout=sync_interval + 60)
        time.sleep(sync_interval / 2)
        sweep_window = _window(bench, metrics, pollers, 3 * sync_interval)
        say(f"      {sweep_window.as_dict()}")
        say(f"    sweep mode: {samples} rotations outside keyrotor over {spread:g}s")
        timeouts = {_label(r): r + 60 for r in poller_intervals}
        loads["sweep"] = os.getloadavg()
        rotated = _rotate_outside(bench, pairs, samples, spread)
        sweep_fresh = _freshness(rotated, watchers, {**timeouts, "keyrotor": sync_interval + 60})
        _say_freshness(sweep_fresh)
        sweep_fresh["dead_key_per_check"] = dead_key_per_check(metrics)

        say(f"    event mode, sweep at {EVENT_MODE_SYNC_INTERVAL:g}s: idle window")
        metrics = _restart(
            harness, "--event-mode", "--sync-interval", f"{EVENT_MODE_SYNC_INTERVAL:g}", *CHECK_ARGS
        )
        harness.wait(
            lambda: metrics.scrape()["calls"].get(LONG_POLL, 0) >= 1 or None,
            timeout=120,
            what="the first long poll",
        )
        _quiet(metrics)
        event_window = _window(bench, metrics, pollers, EVENT_IDLE_WINDOW)
        say(f"      {event_window.as_dict()}")
        say(f"    event mode: {samples} rotations outside keyrotor over {spread:g}s")
        loads["event"] = os.getloadavg()
        rotated = _rotate_outside(bench, pairs, samples, spread)
        event_fresh = _freshness(rotated, watchers, {**timeouts, "keyrotor": 60.0})
        _say_freshness(event_fresh)
        event_fresh["dead_key_per_check"] = dead_key_per_check(metrics)

        say(f"    event mode by push, sweep at {EVENT_MODE_SYNC_INTERVAL:g}s: idle window")
        metrics, push_port = _restart_push(harness)
        _quiet(metrics)
        pushed = len(bench.aws.pushes)
        push_window = _window(bench, metrics, pollers, EVENT_IDLE_WINDOW)
        say(f"      {push_window.as_dict()}")
        say(f"    event mode by push: {samples} rotations outside keyrotor over {spread:g}s")
        loads["push"] = os.getloadavg()
        rotated = _rotate_outside(bench, pairs, samples, spread)
        push_fresh = _freshness(rotated, watchers, {**timeouts, "keyrotor": 60.0})
        _say_freshness(push_fresh)
        push_fresh["dead_key_per_check"] = dead_key_per_check(metrics)
        ours = f"http://127.0.0.1:{push_port}/events"
        push_fresh["pushes_by_status"] = dict(
            Counter(str(status) for url, status in bench.aws.pushes[pushed:] if url == ours)
        )
    finally:
        for poller in pollers:
            poller.stop()
        for watcher in watchers.values():
            watcher.stop()
        bench.finish(harness)
    loads["end"] = os.getloadavg()
    result = _result(
        objects,
        sync_interval,
        poller_intervals,
        pollers,
        sweep_window,
        event_window,
        sweep_fresh,
        event_fresh,
        push_window,
        push_fresh,
    )
    result["load_average"] = loads
    bench.results["sidebyside"] = result
    _print(result)


# --- figures and ratios ------------------------------------------------------------------------

COMPUTED_POLLER_INTERVALS = (300.0, 3600.0)  # the 5 min; ESO's default refresh (1 h)


def _uniform(interval: float) -> dict[str, Any]:
    """Freshness of a periodic look every ``interval`` s at a random phase: uniform over the
    interval (plus the mirroring, a fraction of a second here)."""
    return {"median": interval / 2, "worst": interval, "computed": True}


def _result(
    objects: int,
    sync_interval: float,
    poller_intervals: list[float],
    pollers: list[Poller],
    sweep_window: Window,
    event_window: Window,
    sweep_fresh: dict[str, Any],
    event_fresh: dict[str, Any],
    push_window: Window,
    push_fresh: dict[str, Any],
) -> dict[str, Any]:
    n = objects
    per_sweep = sweep_window.operator[LIST_SECRETS] / sweep_window.sweeps
    sweep_dk, event_dk = sweep_fresh["dead_key_per_check"], event_fresh["dead_key_per_check"]
    event = per_hour(event_window, 3600 / EVENT_MODE_SYNC_INTERVAL, per_sweep, event_dk)
    rechecks = 3600 / max(INSTALLATION_RECHECK, EVENT_MODE_SYNC_INTERVAL)
    for operation, count in EVENT_RECHECK_CALLS.items():
        event[operation] = event.get(operation, 0.0) + count * rechecks
    push = per_hour(
        push_window, 3600 / EVENT_MODE_SYNC_INTERVAL, per_sweep, push_fresh["dead_key_per_check"]
    )
    for operation, count in PUSH_RECHECK_CALLS.items():
        push[operation] = push.get(operation, 0.0) + count * rechecks
    calls: dict[str, dict[str, float]] = {
        f"keyrotor sweep {DEFAULT_SYNC_INTERVAL:g}s (default)": per_hour(
            sweep_window, 3600 / DEFAULT_SYNC_INTERVAL, per_sweep, sweep_dk
        ),
        f"keyrotor sweep {sync_interval:g}s": per_hour(
            sweep_window, 3600 / sync_interval, per_sweep, sweep_dk
        ),
        "keyrotor event mode": event,
        PUSH: push,
    }
    fresh: dict[str, dict[str, Any]] = {
        f"keyrotor sweep {DEFAULT_SYNC_INTERVAL:g}s (default)": _uniform(DEFAULT_SYNC_INTERVAL),
        f"keyrotor sweep {sync_interval:g}s": sweep_fresh["keyrotor"],
        "keyrotor event mode": event_fresh["keyrotor"],
        PUSH: push_fresh["keyrotor"],
    }
    seconds = sweep_window.seconds + event_window.seconds + push_window.seconds
    for i, interval in enumerate(poller_intervals):
        label = _label(interval)
        polls = sum(w.pollers[i][POLL] for w in (sweep_window, event_window, push_window))
        calls[label] = {POLL: polls / seconds * 3600}
        both = (
            sweep_fresh[label]["samples_s"]
            + event_fresh[label]["samples_s"]
            + push_fresh[label]["samples_s"]
        )
        fresh[label] = {**summary(both), "writes": pollers[i].writes, "errors": pollers[i].errors}
    for interval in COMPUTED_POLLER_INTERVALS:
        if interval not in poller_intervals:
            calls[_label(interval) + " (computed)"] = {POLL: n * 3600 / interval}
            fresh[_label(interval) + " (computed)"] = _uniform(interval)
    per_object = {k: {op: v / n for op, v in ops.items()} for k, ops in calls.items()}
    ratios = []
    same = {f"keyrotor sweep {sync_interval:g}s": _label(sync_interval)}
    for p in (k for k in calls if k.startswith("poller")):
        for k in (k for k in calls if k.startswith("keyrotor")):
            if k in same and same[k] != p:
                continue  # a shortened sweep only beside a poller at the same interval
            ratios.append(
                {
                    "poller": p,
                    "keyrotor": k,
                    "calls": sum(calls[p].values()) / sum(calls[k].values()),
                    "median": fresh[p]["median"] / fresh[k]["median"],
                    "worst": fresh[p]["worst"] / fresh[k]["worst"],
                }
            )
    default = f"keyrotor sweep {DEFAULT_SYNC_INTERVAL:g}s (default)"
    beside_sweep = {
        "calls_sweep_over_push": sum(calls[default].values()) / sum(push.values()),
        "calls_queue_over_push": sum(event.values()) / sum(push.values()),
        "median_sweep_over_push": fresh[default]["median"] / fresh[PUSH]["median"],
        "worst_sweep_over_push": fresh[default]["worst"] / fresh[PUSH]["worst"],
    }
    return {
        "push_beside_sweep_default": beside_sweep,
        "objects": n,
        "sync_interval_s": sync_interval,
        "poller_intervals_s": poller_intervals,
        "windows": {
            "sweep": sweep_window.as_dict(),
            "event": event_window.as_dict(),
            "push": push_window.as_dict(),
        },
        "calls_per_hour": calls,
        "calls_per_object_hour": per_object,
        "freshness_s": fresh,
        "by_phase": {"sweep": sweep_fresh, "event": event_fresh, "push": push_fresh},
        "ratios_poller_over_keyrotor": ratios,
    }


def _say_freshness(fresh: dict[str, Any]) -> None:
    for label, values in fresh.items():
        say(
            f"      {label}: AWSCURRENT moved -> Secret median {values['median']:.2f}s, "
            f"worst {values['worst']:.2f}s (best {values['best']:.2f}s, n={values['n']})"
        )


def _print(result: dict[str, Any]) -> None:
    n = result["objects"]
    say(f"    push beside sweep mode at its default: {result['push_beside_sweep_default']}")
    say(f"    steady-state AWS calls per object-hour ({n} objects), by operation:")
    for label, ops in result["calls_per_object_hour"].items():
        by_op = {k: round(v, 3) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])}
        say(f"      {label:34s} {sum(ops.values()):8.3f}  {by_op}")
    say("    freshness (AWSCURRENT moved -> Secret), median / worst:")
    for label, values in result["freshness_s"].items():
        how = "computed" if values.get("computed") else f"measured, n={values['n']}"
        say(f"      {label:34s} {values['median']:8.2f}s / {values['worst']:8.2f}s  ({how})")
    say("    ratios poller / keyrotor (calls: >1 = keyrotor cheaper; freshness: >1 = fresher):")
    for r in result["ratios_poller_over_keyrotor"]:
        say(
            f"      {r['poller']:26s} / {r['keyrotor']:30s} calls {_x(r['calls'])}, "
            f"median {_x(r['median'])}, worst {_x(r['worst'])}"
        )


def _x(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.3g}x"
