"""Event mode beside sweep mode (issue 10): freshness of rotations keyrotor did not start, and
steady-state AWS calls per hour by operation. A stage of ``tests.bench.run`` (``--which events``,
part of ``make bench``); figures in RESULTS.md, meaning in README.md.

One harness, N objects (default 20) Ready; then, with the same objects:

1. **sweep mode** (``--sync-interval S``, default 10 s so that 20 samples take minutes, not
   hours): the operator's calls in a window of three sweeps (calls per sweep), then
   ``--latency-samples`` rotations started outside keyrotor (``RotateSecret``), each after a
   random pause of up to S.
2. **event mode** (``--event-mode``, the sweep at its event-mode default 1800 s, so only an event
   can find a rotation): the operator's calls in an idle window of 60 s (three long polls), then
   the same rotations.

Freshness: from the arrival of the Lambda's finishSecret ``UpdateSecretVersionStage`` (AWSCURRENT
moves) to the watch event of the Secret with the new version (``Bench._latency_rounds``).
Calls per hour: ListSecrets per sweep x sweeps per hour at the mode's default interval (12 at
300 s, 2 at 1800 s); every other call (the long poll) by its measured rate x 3600 s. Calls made
every ``--installation-recheck`` (900 s) in both modes are left out (section 8 counts them).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from tests.bench.run import (
    DEFAULT_SYNC_INTERVAL,
    PRODUCTION_ARGS,
    Metrics,
    SecretWatcher,
    free_port,
    say,
)

if TYPE_CHECKING:
    from tests.bench.run import Bench
    from tests.fixtures.operator import Harness

EVENT_MODE_SYNC_INTERVAL = 1800.0
IDLE_WINDOW_S = 60.0
LIST_SECRETS = "secretsmanager:ListSecrets"
# Called by event mode once per max(--installation-recheck, --sync-interval) (1800 s at the
# defaults; keyrotor.event_consumer.recheck_interval), beside the installation check
# both modes make: the rule and the queue looked at again (the queue by its known URL).
EVENT_MODE_RECHECK = ("events:DescribeRule", "events:ListTargetsByRule")
EVENT_MODE_RECHECK_ATTRIBUTES = "sqs:GetQueueAttributes"


def _restart(bench: Bench, harness: Harness, *args: str) -> Metrics:
    harness.operator.stop()
    port = free_port()
    harness.start_operator(*PRODUCTION_ARGS, "--metrics-port", str(port), *args)
    metrics = Metrics(port)
    metrics.wait_up()
    return metrics


def _window(metrics: Metrics, seconds: float) -> tuple[Counter[str], int, float]:
    before = metrics.scrape()
    began = time.monotonic()
    time.sleep(seconds)
    after = metrics.scrape()
    return (
        after["calls"] - before["calls"],
        after["sweeps"] - before["sweeps"],
        (time.monotonic() - began),
    )


def _per_hour(
    calls: Counter[str], sweeps: int, seconds: float, sweeps_per_hour: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    for operation, count in calls.items():
        if operation == LIST_SECRETS:
            out[operation] = count / sweeps * sweeps_per_hour if sweeps else 0.0
        else:
            out[operation] = count / seconds * 3600
    return out


def _rotations(
    bench: Bench,
    harness: Harness,
    metrics: Metrics,
    namespace: str,
    name: str,
    arn: str,
    samples: int,
    jitter: float,
) -> dict[str, Any]:
    sm = bench.aws.client("secretsmanager")
    watcher = SecretWatcher(harness.core, namespace).start()
    before = metrics.scrape()["calls"]
    try:
        result = bench._latency_rounds(
            samples, lambda _i: sm.rotate_secret(SecretId=arn), watcher, name, arn, jitter=jitter
        )
    finally:
        watcher.stop()
    calls = metrics.scrape()["calls"] - before
    result["operator_calls_per_rotation"] = {op: n / samples for op, n in sorted(calls.items())}
    return result


def bench_events(bench: Bench, objects: int, samples: int, sweep_interval: float) -> None:
    say(
        f"\n== 4. event mode beside sweep mode ({objects} objects, {samples} rotations started "
        f"outside keyrotor each)"
    )
    harness, metrics = bench.harness("events", "--sync-interval", f"{sweep_interval:g}")
    try:
        namespace = harness.namespace("bench-events")
        names = bench.users(harness, namespace, "e", objects)
        bench.apply(harness, namespace, names)
        bench.wait_all_ready(harness, namespace, objects, timeout=60 + 5 * objects)
        bench.aws.wait_for_rotations(timeout=120)
        name = names[0]
        arn = harness.get(namespace, name)["status"]["secretArn"]  # type: ignore[index]

        say(f"    sweep mode, --sync-interval {sweep_interval:g}s: steady window of 3 sweeps")
        while metrics.scrape()["sweeps"] < 2:
            time.sleep(0.2)
        time.sleep(sweep_interval / 2)
        sweep_calls, sweeps, sweep_s = _window(metrics, 3 * sweep_interval)
        say(f"      {dict(sweep_calls)} in {sweeps} sweeps ({sweep_s:.0f}s)")
        say(f"    sweep mode: {samples} rotations outside keyrotor")
        sweep_fresh = _rotations(
            bench, harness, metrics, namespace, name, arn, samples, jitter=sweep_interval
        )

        say(f"    event mode, --sync-interval {EVENT_MODE_SYNC_INTERVAL:g}s: idle window")
        metrics = _restart(
            bench, harness, "--event-mode", "--sync-interval", f"{EVENT_MODE_SYNC_INTERVAL:g}"
        )
        harness.wait(
            lambda: metrics.scrape()["calls"].get("sqs:ReceiveMessage", 0) >= 1,
            timeout=120,
            what="the first long poll",
        )
        time.sleep(5)  # the restart's reconciles are over
        event_calls, _, event_s = _window(metrics, IDLE_WINDOW_S)
        say(f"      {dict(event_calls)} in {event_s:.0f}s")
        say(f"    event mode: {samples} rotations outside keyrotor")
        event_fresh = _rotations(
            bench, harness, metrics, namespace, name, arn, samples, jitter=sweep_interval
        )
    finally:
        bench.finish(harness)

    sweep_hour = _per_hour(sweep_calls, sweeps, sweep_s, 3600 / DEFAULT_SYNC_INTERVAL)
    # The idle window is shorter than the event-mode sweep: ListSecrets per sweep is the same
    # in both modes (ceil(N/100)), at 2 sweeps an hour.
    per_sweep = sweep_calls.get(LIST_SECRETS, 0) / sweeps if sweeps else 0.0
    event_hour = _per_hour(event_calls, 0, event_s, 0)
    event_hour[LIST_SECRETS] = per_sweep * 3600 / EVENT_MODE_SYNC_INTERVAL
    recheck_per_hour = 3600 / max(900, EVENT_MODE_SYNC_INTERVAL)
    for operation in (*EVENT_MODE_RECHECK, EVENT_MODE_RECHECK_ATTRIBUTES):
        event_hour[operation] = event_hour.get(operation, 0.0) + recheck_per_hour
    result = {
        "objects": objects,
        "sweep_mode": {
            "measured_sync_interval_s": sweep_interval,
            "window": {"calls": dict(sweep_calls), "sweeps": sweeps, "seconds": sweep_s},
            "calls_per_hour_at_default_300s": sweep_hour,
            "freshness": sweep_fresh,
        },
        "event_mode": {
            "sync_interval_s": EVENT_MODE_SYNC_INTERVAL,
            "window": {"calls": dict(event_calls), "seconds": event_s},
            "calls_per_hour": event_hour,
            "freshness": event_fresh,
        },
    }
    bench.results["events"] = result
    _print(result, sweep_interval)


def _print(result: dict[str, Any], sweep_interval: float) -> None:
    sweep, event = result["sweep_mode"], result["event_mode"]
    s_lat = sweep["freshness"]["awscurrent_to_secret_s"]
    e_lat = event["freshness"]["awscurrent_to_secret_s"]
    say(
        f"    freshness (AWSCURRENT moved -> Secret), median / worst of {s_lat['n']}: "
        f"sweep mode at {sweep_interval:g}s {s_lat['median']:.2f}s / {s_lat['worst']:.2f}s "
        f"(at 300 s: about 150 s / 300 s); event mode {e_lat['median']:.2f}s / "
        f"{e_lat['worst']:.2f}s"
    )
    rows = [
        ("steady-state calls/hour, sweep mode at 300 s", sweep["calls_per_hour_at_default_300s"]),
        ("steady-state calls/hour, event mode", event["calls_per_hour"]),
        ("calls per rotation, sweep mode", sweep["freshness"]["operator_calls_per_rotation"]),
        ("calls per rotation, event mode", event["freshness"]["operator_calls_per_rotation"]),
    ]
    for label, values in rows:
        say(f"    {label}: {sum(values.values()):.1f} {_rounded(values)}")


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in sorted(values.items())}
