"""AWS calls the dead-key check adds, per hour, for 1, 100 and 1,000 objects.

Runs the sync loop's check (``SyncLoop.check_dead_keys``) against the AWS emulator (its
credential report keeps AWS's four-hour regeneration rule) over simulated hours: each hour the
report is dated back by an hour and the check runs once (and again when the report was still
being generated, as the loop does 30 s later). Counts the AWS calls the emulator handled. The
first hour includes one ListAccessKeys per object (each key's CreateDate, looked up once). No
Kubernetes: the index is filled by hand and no key is dead. Run on purpose:

    .venv/bin/python tests/bench/bench_dead_keys.py [HOURS]
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from keyrotor.index import ObjectIndex
from keyrotor.installation import Installation, Target
from keyrotor.outcome import IndexUpdate
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.sync import SyncLoop
from keyrotor_sandbox.aws import AwsEmulator
from tests.fixtures.aws import emulator_clients


def _runtime(aws: AwsEmulator, index: ObjectIndex, clock: list[datetime]) -> Runtime:
    clients = emulator_clients(aws)
    settings = Settings(cluster_name="bench")
    return Runtime(
        settings=settings,
        aws=clients,
        kube=None,  # type: ignore[arg-type]  (the check makes no Kubernetes call)
        installation=Installation(settings, clients, Target(aws.account_id, "aws")),
        emit=lambda *_, **__: None,
        index=index,
        clock=lambda: clock[0],
    )


def measure(aws: AwsEmulator, objects: int, hours: int) -> tuple[Counter[str], Counter[str]]:
    iam = aws.client("iam")
    index = ObjectIndex()
    for i in range(objects):
        user = f"bench-{uuid.uuid4().hex[:10]}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
        update = IndexUpdate(active=True, iam_user=user, access_key_id=key, secret_arn="-")
        index.apply(
            "bench",
            f"o{i}",
            f"uid-{i}",
            update,
            now=datetime.now(UTC),
            recheck_after=None,
            reported_last_rotation=None,
        )
    clock = [datetime.now(UTC)]
    loop = SyncLoop(_runtime(aws, index, clock))
    first: Counter[str] = Counter()
    steady: Counter[str] = Counter()
    for hour in range(hours):
        before = Counter(c.operation for c in aws.calls)
        if not loop.check_dead_keys():
            loop.check_dead_keys()  # the loop asks again 30 s later
        after = Counter(c.operation for c in aws.calls)
        (first if hour == 0 else steady).update(after - before)
        clock[0] += timedelta(hours=1)
        aws.age_credential_report(timedelta(hours=1))
    return first, steady


def main() -> None:
    hours = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    with AwsEmulator() as aws:
        for objects in (1, 100, 1000):
            aws.reset()
            first, steady = measure(aws, objects, hours)
            per_hour = sum(steady.values()) / (hours - 1)
            detail: dict[str, Any] = {k: round(v / (hours - 1), 2) for k, v in steady.items()}
            print(
                f"{objects:>5} objects: first hour {sum(first.values())} calls {dict(first)}; "
                f"then {per_hour:.2f} calls/hour {detail}"
            )


if __name__ == "__main__":
    main()
