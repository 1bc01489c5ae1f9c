"""What a run costs besides time: the peak resident memory of the process while it runs."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
