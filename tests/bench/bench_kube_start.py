"""Warm start time of the test API server (keyrotor_sandbox.kube.KubeApiServer).

Times start() (etcd healthy, kube-apiserver ready, CRDs served, kube-controller-manager healthy)
and stop(), a few rounds, with the binaries already built. Run on purpose:

    .venv/bin/python tests/bench/bench_kube_start.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from keyrotor_sandbox.kube import KubeApiServer, ensure_binaries

TEST_CRD = Path(__file__).resolve().parent.parent / "fixtures" / "test_crd.yaml"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    binaries = ensure_binaries()
    print(f"binaries: {binaries.directory} ({binaries.source})")
    starts: list[float] = []
    stops: list[float] = []
    for round_ in range(1, rounds + 1):
        kube = KubeApiServer(extra_crds=[TEST_CRD])
        began = time.monotonic()
        kube.start()
        started = time.monotonic()
        with_kcm = kube.controller_manager_running
        kube.stop()
        stopped = time.monotonic()
        starts.append(started - began)
        stops.append(stopped - started)
        print(
            f"round {round_}: start {starts[-1]:.2f}s (CRDs {len(kube.crd_names)}, "
            f"controller-manager {with_kcm}), "
            f"stop {stops[-1]:.2f}s, {kube.versions}"
        )
    print(
        f"start: median {statistics.median(starts):.2f}s min {min(starts):.2f}s "
        f"max {max(starts):.2f}s; stop: median {statistics.median(stops):.2f}s"
    )


if __name__ == "__main__":
    main()
