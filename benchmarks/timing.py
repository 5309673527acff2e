"""Timing for the benchmarks: the median of repeated runs after warm-up, and the peak memory."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or resident-set rise on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096 / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
            return self
        self._base, self._top, self._stop = self._rss_mb(), self._rss_mb(), False

        def poll() -> None:
            while not self._stop:
                self._top = max(self._top, self._rss_mb())
                time.sleep(0.001)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20 - self._base
        else:
            self._stop = True
            self._thread.join()
            self.peak_mb = self._top - self._base


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time (s) after warm-up, and peak memory (MB) over the timed runs."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with PeakMemory(device) as memory:  # warm-up included: that is when buffers are first allocated
        for _ in range(warmup):
            fn()
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": memory.peak_mb}
