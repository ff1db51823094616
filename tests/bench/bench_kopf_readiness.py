"""kopf's readiness wait for an index, alone: the cost grows with the square of the objects.

This is why keyrotor no longer uses ``@kopf.index``: until the claims map (keyrotor.claims) its
claims were an index (``claims_by_user``), and a restart over 10,000 objects sat 16 minutes in
this wait without running a handler (RESULTS.md section 7). It stays as the measurement behind
that change, and as the check to run before registering any kopf index again.

With an index registered, kopf's watcher gives every listed object a readiness toggle
(``ToggleSet.make_toggle``), its worker drops it once the object is indexed and then waits until
every toggle is gone (``wait_for(True)``). Each toggle made or dropped calls ``notify_all`` on the
one condition every waiting worker waits on, so the N-th object wakes all the workers before it:
O(N^2) wake-ups before the first handler runs. This replays exactly that sequence with kopf's
own class:

    .venv/bin/python tests/bench/bench_kopf_readiness.py 1000 2000 4000
"""

from __future__ import annotations

import asyncio
import sys
import time

from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet


async def readiness(objects: int) -> float:
    ready = ToggleSet(all)  # kopf's operator_indexed
    listed = await ready.make_toggle(name="listing")  # the kind's toggle, dropped when listed

    async def worker(toggle: Toggle) -> None:
        await ready.drop_toggle(toggle)  # indexed
        await ready.wait_for(True)  # every object indexed

    began = time.perf_counter()
    workers = []
    for number in range(objects):  # as kopf's watcher does for each listed object
        toggle = await ready.make_toggle(name=str(number))
        workers.append(asyncio.create_task(worker(toggle)))
        await asyncio.sleep(0)
    await ready.drop_toggle(listed)
    await asyncio.gather(*workers)
    return time.perf_counter() - began


def main(argv: list[str]) -> int:
    for objects in [int(arg) for arg in argv] or [1000, 2000, 4000]:
        print(f"{objects} objects: {asyncio.run(readiness(objects)):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
