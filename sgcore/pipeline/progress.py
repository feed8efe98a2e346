"""A progress line for long jobs: images done, images/s, ETA, errors.

Plain lines (not carriage returns) so that they read well in `ray job logs`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts images and shards; prints at most every ``interval`` seconds."""

    def __init__(self, total_images: int, total_shards: int, *, enabled: bool = True,
                 interval: float = 5.0, stream: TextIO | None = None):
        self.total_images = total_images
        self.total_shards = total_shards
        self.enabled = enabled
        self.interval = interval
        self.stream = stream or sys.stderr
        self.images = 0
        self.errors = 0
        self.shards = 0
        self.skipped_images = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def skip(self, images: int, shards: int) -> None:
        """Counts work already committed by an earlier run (not in the rate)."""
        self.skipped_images += images
        self.shards += shards

    def update(self, images: int, errors: int) -> None:
        self.images += images
        self.errors += errors
        self.shards += 1
        self.maybe_print()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        done = self.images + self.skipped_images
        pct = 100.0 * done / self.total_images if self.total_images else 100.0
        rate = self.rate
        left = max(self.total_images - done, 0)
        eta = format_duration(left / rate) if rate > 0 else "?"
        return (
            f"[sgcore] {done}/{self.total_images} images ({pct:.0f}%) | "
            f"{rate:.1f} images/s | ETA {eta} | {self.errors} errors | "
            f"shards {self.shards}/{self.total_shards}"
        )

    def maybe_print(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self._last >= self.interval):
            self._last = now
            print(self.line(), file=self.stream, flush=True)
