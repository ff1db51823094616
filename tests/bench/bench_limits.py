"""Figures for the scale stage about bounded concurrency and the AWS rate limits (README, 3):

- from the operator's metrics: objects worked on at once (peak, sync loop and reconciles), the
  rate limiter's waits and seconds waited per family, and calls that ended throttled (botocore
  gave up: outcome a throttling code);
- from the emulator's timed call log (non-Lambda calls only): per rate-limit family, the most
  calls that arrived within any one second, beside the family's rate and burst.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from keyrotor.aws.clients import THROTTLING_CODES
from keyrotor.aws.rate_limits import FAMILIES, family_for


def operator_figures(metrics_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    waits: dict[str, float] = defaultdict(float)
    wait_seconds: dict[str, float] = defaultdict(float)
    peaks: dict[str, float] = {}
    throttled = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keyrotor_aws_rate_limit_waits_total":
                waits[sample.labels["family"]] += sample.value
            elif sample.name == "keyrotor_aws_rate_limit_wait_seconds_total":
                wait_seconds[sample.labels["family"]] += sample.value
            elif sample.name == "keyrotor_objects_in_flight_peak":
                peaks[sample.labels["path"]] = sample.value
            elif (
                sample.name == "keyrotor_aws_api_calls_total"
                and sample.labels["outcome"] in THROTTLING_CODES
            ):
                throttled += int(sample.value)
    return {
        "in_flight_peak": peaks,
        "rate_limit_waits": dict(waits),
        "rate_limit_wait_s": {k: round(v, 2) for k, v in wait_seconds.items()},
        "throttled_calls": throttled,
    }


def busiest_second(timed_calls: list[tuple[float, Any]]) -> dict[str, dict[str, float]]:
    """Per family: the most operator calls that arrived within any one second."""
    times: dict[str, list[float]] = defaultdict(list)
    for when, call in timed_calls:
        if call.step is not None:  # the rotation Lambda's own calls
            continue
        family = family_for(call.service, call.operation)
        if family is not None:
            times[family.name].append(when)
    rates = {f.name: f.rate for f in FAMILIES}
    out = {}
    for name, stamps in sorted(times.items()):
        stamps.sort()
        most, first = 0, 0
        for last, when in enumerate(stamps):
            while when - stamps[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        out[name] = {"calls": len(stamps), "most_in_1s": most, "default_rate": rates[name]}
    return out


def summary(figures: dict[str, Any]) -> str:
    busiest = ", ".join(
        f"{name} {v['most_in_1s']}/s ({v['calls']} calls)"
        for name, v in figures["busiest_second"].items()
    )
    return (
        f"    in flight at most: {figures['in_flight_peak']}; throttled calls "
        f"{figures['throttled_calls']}; rate-limit waits {figures['rate_limit_waits']} "
        f"({figures['rate_limit_wait_s']} s)\n    busiest second by family: {busiest}"
    )
