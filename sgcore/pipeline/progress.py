"""A progress line for long jobs: images done, images/s, ETA, errors.

Plain lines (not carriage returns) so that they read well in `ray job logs`.
Images count as the kernel finishes them (each replica reports every batch), not
only when a whole shard is committed, so rate and ETA move from the first batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Hashable
from typing import TextIO


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(per_s: float) -> str:
    """Images per second, with enough digits to stay non-zero on a slow CPU (0.04, not 0.0)."""
    if per_s <= 0.0:
        return "0.0"
    return f"{per_s:.1f}" if per_s >= 1.0 else f"{per_s:.2g}"


def plural(n: int, noun: str) -> str:
    """``1 shard``, ``2 shards``, ``0 errors``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _norm(key: Hashable) -> Hashable:
    """(shard id, attempt) keys compare equal whichever process built them."""
    if isinstance(key, tuple | list) and len(key) == 2:
        return (str(key[0]), int(key[1]))
    return key


class Progress:
    """Counts images and shards; prints a line at most every ``interval`` seconds.

    A line is printed only when the count moved since the last one, so no step
    shows twice; while nothing moves, a heartbeat every ``heartbeat`` seconds
    repeats the count and says it is one (``still working: no image finished
    in the last 1m00s``).
    """

    def __init__(self, total_images: int, total_shards: int, *, enabled: bool = True,
                 interval: float = 5.0, heartbeat: float = 60.0, stream: TextIO | None = None):
        self.total_images = total_images
        self.total_shards = total_shards
        self.enabled = enabled
        self.interval = interval
        self.heartbeat = heartbeat
        self.stream = stream or sys.stderr
        self.finished = 0  # images of shards finished by this run
        self.errors = 0
        self.shards = 0
        self.skipped_images = 0
        self.live: dict[Hashable, int] = {}  # images computed so far, per shard attempt in flight
        self._closed: set[Hashable] = set()
        self.start = time.perf_counter()
        self._last = float("-inf")
        self._last_done = -1
        self._moved_at = time.perf_counter()

    @property
    def images(self) -> int:
        """Images done by this run: finished shards plus what the kernel finished of the others."""
        return self.finished + sum(self.live.values())

    def restart_clock(self) -> None:
        """Starts the rate's clock now (when the first work is handed out)."""
        self.start = time.perf_counter()

    def skip(self, images: int, shards: int) -> None:
        """Counts work already committed by an earlier run (not in the rate)."""
        self.skipped_images += images
        self.shards += shards

    def partial(self, key: Hashable, images: int) -> None:
        """``images`` more done by the kernel in the shard attempt ``key`` (still running)."""
        key = _norm(key)
        if key not in self._closed:
            self.live[key] = self.live.get(key, 0) + images

    def discard(self, key: Hashable) -> None:
        """The attempt ``key`` failed: its images will be done again."""
        key = _norm(key)
        self.live.pop(key, None)
        self._closed.add(key)

    def update(self, images: int, errors: int, key: Hashable | None = None) -> None:
        """A shard finished with ``images`` rows (replacing its partial count)."""
        if key is not None:
            key = _norm(key)
            self.live.pop(key, None)
            self._closed.add(key)
        self.finished += images
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
            f"{format_rate(rate)} images/s | ETA {eta} | {plural(self.errors, 'error')} | "
            f"shards {self.shards}/{self.total_shards}"
        )

    def maybe_print(self, force: bool = False) -> None:
        """Prints the line if due; ``force`` prints it unless this very count was just printed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        done = self.images + self.skipped_images
        moved = done != self._last_done
        due = now - self._last >= self.interval and (moved or now - self._last >= self.heartbeat)
        if (force and moved) or due:
            line = self.line()
            if moved:
                self._moved_at = now
            else:  # a heartbeat: the same count, said to be one
                line += f" | still working: no image finished in the last {format_duration(now - self._moved_at)}"
            self._last = now
            self._last_done = done
            print(line, file=self.stream, flush=True)
