"""keyrotor.allocator: what a burst freed goes back to the system (glibc), harmlessly elsewhere."""

from __future__ import annotations

import platform

import pytest

from keyrotor.allocator import release_free_memory


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_memory_a_burst_freed_goes_back_to_the_system() -> None:
    burst = [bytes(2048) for _ in range(40_000)]  # 80 MiB of C-allocated blocks (over 512 B)
    del burst[::2]  # half freed in the middle of the heap: not at its top, so kept
    kept = burst[-1:]
    del burst
    before = _rss_kib()
    assert release_free_memory()
    assert _rss_kib() < before - 20 * 1024
    assert kept[0] == bytes(2048)  # what is in use is untouched


def test_calling_it_again_is_harmless() -> None:
    release_free_memory()
    release_free_memory()
