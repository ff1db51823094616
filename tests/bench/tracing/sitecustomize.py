"""Loaded at start-up by the operator process that the memory bench starts (the bench puts this
folder first on the operator's PYTHONPATH; nothing else loads it).

``BENCH_MEMORY_DUMP=<path>`` installs two signal handlers:
- SIGUSR1: collect garbage, write a tracemalloc snapshot to ``<path>.<n>`` (read it with
  ``tracemalloc.Snapshot.load``) when ``BENCH_TRACEMALLOC_FRAMES`` > 0 started tracing at the
  first import; then write ``<path>.<pid>.<n>.done``;
- SIGUSR2: write ``<path>.<pid>.<n>.holders``: glibc's and pymalloc's own accounts (memory in
  use and memory kept free) and live objects by type; with ``BENCH_MEMORY_HOLDERS=1`` also who
  holds a sample of the decoded watch events (referrer chains: slow, it stops the operator
  meanwhile).
"""

from __future__ import annotations

import os

_PATH = os.environ.get("BENCH_MEMORY_DUMP")

if _PATH:
    import collections
    import ctypes
    import gc
    import random
    import signal
    import sys
    import tempfile
    import tracemalloc
    from pathlib import Path
    from types import FrameType

    _FRAMES = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "0"))
    if _FRAMES:
        tracemalloc.start(_FRAMES)
    _dumps = [0]

    def _next(suffix: str) -> Path:
        _dumps[0] += 1
        return Path(f"{_PATH}.{os.getpid()}.{_dumps[0]}{suffix}")

    def _dump(_signum: int, _frame: FrameType | None) -> None:
        gc.collect()
        target = _next("")
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(target))
        Path(f"{target}.done").write_text(str(tracemalloc.get_traced_memory()))

    class _MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    def _malloc_lines() -> list[str]:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        mib = 1024 * 1024
        lines = [
            f"glibc: heap {info.arena / mib:.1f} MiB (in use {info.uordblks / mib:.1f}, "
            f"free {info.fordblks / mib:.1f}, releasable at top {info.keepcost / mib:.1f}), "
            f"mmapped {info.hblkhd / mib:.1f} MiB in {info.hblks} blocks"
        ]
        with tempfile.TemporaryFile("w+") as out:  # pymalloc writes its account to fd 2
            saved = os.dup(2)
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            out.seek(0)
            lines += [
                f"pymalloc: {line.strip()}"
                for line in out
                if line.startswith(("# arenas", "Total", "bytes in", "# bytes in"))
                or "free pools" in line
                or "available blocks" in line
            ]
        return lines

    def _describe(obj: object) -> str:
        if isinstance(obj, dict):
            return f"dict keys={list(obj)[:8]}"
        if isinstance(obj, list | tuple | set):
            return f"{type(obj).__name__} len={len(obj)}"
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    def _holders(_signum: int, _frame: FrameType | None) -> None:
        gc.collect()
        lines = _malloc_lines()
        objects = gc.get_objects()
        counts = collections.Counter(type(o).__qualname__ for o in objects)
        events = [o for o in objects if isinstance(o, dict) and "object" in o and "type" in o]
        lines.append(f"objects: {len(objects)}; decoded watch events alive: {len(events)}")
        lines += [f"{c:8d} {t}" for t, c in counts.most_common(50)]
        mine = {id(objects), id(events), id(lines)}
        sample = min(6, len(events)) if os.environ.get("BENCH_MEMORY_HOLDERS") else 0
        chains = [[e] for e in random.sample(events, sample)]
        ended: list[list[object]] = []
        for _depth in range(8):  # one pass over every object per level
            wanted = {id(chain[-1]): chain for chain in chains}
            found: dict[int, list[object]] = collections.defaultdict(list)
            for obj in objects:
                if id(obj) in mine:
                    continue
                for ref in gc.get_referents(obj):
                    if id(ref) in wanted:
                        found[id(ref)].append(obj)
            for chain in chains:
                parents = found.get(id(chain[-1]), [])
                chain.append(parents[0] if parents else None)  # type: ignore[arg-type]
                if parents and len(parents) > 1:
                    chain.append(f"(+{len(parents) - 1} other holders)")  # type: ignore[arg-type]
                    chain.append(parents[0])
            ended += [c[:-1] for c in chains if c[-1] is None]
            chains = [c for c in chains if c[-1] is not None]
            if not chains:
                break
        chains += ended
        Path(f"{_next('.holders')}").write_text(
            "\n".join(
                lines
                + [
                    " <- ".join(x if isinstance(x, str) else _describe(x) for x in chain)
                    for chain in chains
                ]
            )
        )

    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _holders)
