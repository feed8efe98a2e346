"""The driver's state in one place: shard outcomes in; manifest, result and progress out.

The scheduler (:mod:`sgcore.pipeline.driver`) decides what happens to a shard
(submit it, retry it, fail it); each decision reaches the run's state as one
value: :class:`Submitted`, :class:`Committed`, :class:`Retrying`,
:class:`Failed` or :class:`StorageDown`. :meth:`Recorder.record` is the only
code that changes the manifest's shard entries, the :class:`JobResult` and the
live progress while shards run, so the three cannot drift apart, and what a
run records is testable without Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sgcore.errors import ConfigError
from sgcore.io import Manifest
from sgcore.pipeline.progress import Progress, format_duration, format_rate, plural
from sgcore.pipeline.worker import ShardSummary
from sgcore.redact import redact_url


class JobFailed(RuntimeError):
    """The job stopped on purpose (too many errors); the message says why."""


class StorageFailed(JobFailed):
    """Storage stayed down longer than ``storage_outage_s``; the message names the shards."""


@dataclass(kw_only=True)
class JobResult:
    """What a run did; ``success`` is False when a shard failed every attempt.

    ``rows``/``ok``/``errors`` count the whole output (shards skipped as
    already done included); per-image errors do not make a run unsuccessful.
    """

    output: str
    rows: int = 0
    ok: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    images_skipped: int = 0
    # --n-samples auto: maps computed in this run that stopped at --max-samples below the target.
    capped: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    actors: int = 0
    actors_lost: int = 0
    worker_max_rss_mb: float = 0.0
    failed_shards: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.shards_failed == 0

    def summary(self) -> str:
        head = (f"{plural(self.rows, 'image')} ({self.ok} ok, {plural(self.errors, 'error')}) "
                f"in {plural(self.shards, 'shard')}")
        if self.shards_skipped == self.shards:
            return f"{head}, all already done: nothing recomputed | results: {redact_url(self.output)}"
        computed = self.rows - self.images_skipped
        done = (f"; {plural(self.images_skipped, 'image')} in {plural(self.shards_skipped, 'shard')} "
                "already done" if self.shards_skipped else "")
        failed = f", {plural(self.shards_failed, 'shard')} failed" if self.shards_failed else ""
        capped = (f" | {plural(self.capped, 'map')} stopped at --max-samples below --target-reliability "
                  "(column capped)" if self.capped else "")
        return (
            f"{head}{done}{failed} | {computed} computed in {format_duration(self.seconds)}, "
            f"{format_rate(self.images_per_s)} images/s on {plural(self.actors, 'replica')}{capped} | "
            f"results: {redact_url(self.output)}"
        )


# ----------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Submitted:
    """Attempt ``attempt`` (0-based) of the shard went to a replica."""

    shard_id: str
    attempt: int


@dataclass(frozen=True)
class Committed:
    """A replica committed the shard's part (per-image errors included)."""

    summary: ShardSummary


@dataclass(frozen=True)
class Retrying:
    """An attempt failed (``reason``) and another one follows."""

    shard_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class Failed:
    """The last attempt failed: the shard's part holds error rows (``summary`` counts them)."""

    summary: ShardSummary
    reason: str


@dataclass(frozen=True)
class StorageDown:
    """The store stayed down past ``--storage-outage-s``: ``failing`` (every shard that met it) fail."""

    shard_id: str
    attempt: int
    reason: str
    failing: tuple[str, ...]


Outcome = Submitted | Committed | Retrying | Failed | StorageDown


class Recorder:
    """Applies shard outcomes to the run's manifest, result and progress.

    Args:
        manifest: the output's manifest for this run (its last run is this one).
        result: the run's totals; shards skipped as done are already counted.
        progress: the live progress line.
        max_error_rate: above this share of per-image errors among the first
            images (at least 64, or all of them), the job stops
            (:class:`JobFailed`); committed shards only, since a failed shard's
            error rows say nothing of the images.
        output: the output's URL, named in that message.
    """

    def __init__(self, manifest: Manifest, result: JobResult, progress: Progress, *,
                 max_error_rate: float, output: str) -> None:
        self.manifest = manifest
        self.result = result
        self.progress = progress
        self.max_error_rate = max_error_rate
        self.output = output
        self.rows_seen = 0  # rows of committed shards, this run
        self.errors_seen = 0
        self.finished = 0  # shards committed or failed, this run (what a manifest checkpoint records)

    def record(self, outcome: Outcome) -> None:
        """Applies one outcome; raises :class:`JobFailed` when the error rate is exceeded."""
        match outcome:
            case Submitted(shard_id, attempt):
                entry = self.manifest.shards[shard_id]
                entry.status, entry.attempts = "running", attempt + 1
            case Committed(summary):
                self._finished(summary, "committed", key=(summary.shard, summary.attempt))
                self.rows_seen += summary.rows
                self.errors_seen += summary.errors
                self._check_error_rate()
            case Retrying(shard_id, attempt, reason):
                self.progress.discard((shard_id, attempt))
                self.manifest.shards[shard_id].add_failure(reason)
            case Failed(summary, reason):
                self.progress.discard((summary.shard, summary.attempt))
                self.manifest.shards[summary.shard].add_failure(reason)
                self._mark_failed(summary.shard)
                self._finished(summary, "failed", key=None)
            case StorageDown(shard_id, attempt, reason, failing):
                # No part: the store takes none; the next run redoes them.
                self.progress.discard((shard_id, attempt))
                self.manifest.shards[shard_id].add_failure(reason)
                for sid in failing:
                    self.manifest.shards[sid].status = "failed"
                    self._mark_failed(sid)
                self.finished += 1
            case _:
                raise TypeError(f"not a shard outcome: {outcome!r}")

    def images_done(self, counts: dict[tuple[str, int], int]) -> None:
        """Images the replicas finished per (shard, attempt) since the last look (live progress)."""
        for key, n in counts.items():
            self.progress.partial(key, n)

    def replicas(self, live: int) -> None:
        """The pool holds ``live`` replicas now (the result keeps the most)."""
        self.result.actors = max(self.result.actors, live)

    def replica_lost(self) -> None:
        self.result.actors_lost += 1

    def not_done(self) -> int:
        """Shards neither committed nor failed."""
        return sum(e.status not in ("committed", "failed") for e in self.manifest.shards.values())

    def _mark_failed(self, shard_id: str) -> None:
        if shard_id not in self.result.failed_shards:
            self.result.shards_failed += 1
            self.result.failed_shards.append(shard_id)

    def _finished(self, summary: ShardSummary, status: str, *, key: tuple[str, int] | None) -> None:
        self.finished += 1
        entry = self.manifest.shards[summary.shard]
        entry.status = status
        entry.rows, entry.ok, entry.errors = summary.rows, summary.ok, summary.errors
        entry.seconds = round(summary.seconds, 3)
        entry.run = len(self.manifest.runs)
        entry.record_commit(summary.commit)  # what readers and resumes check the part against
        for name in ("node", "pid", "device", "finished"):
            value = getattr(summary, name)
            if value is not None:
                setattr(entry, name, value)
        if summary.max_rss_mb is not None:
            self.result.worker_max_rss_mb = max(self.result.worker_max_rss_mb, summary.max_rss_mb)
        self.result.rows += summary.rows
        self.result.ok += summary.ok
        self.result.errors += summary.errors
        self.result.capped += summary.capped
        self.progress.update(summary.rows, summary.errors, key)

    def _check_error_rate(self) -> None:
        seen = self.rows_seen
        if seen >= min(64, self.progress.total_images) and self.errors_seen > self.max_error_rate * seen:
            raise JobFailed(
                f"{self.errors_seen} of the first {seen} images failed "
                f"(over --max-error-rate {self.max_error_rate}); wrong --input-format, model or "
                f"input? Stopped early; see the error column in {self.output}"
            )


# ----------------------------------------------------------------- manifest checkpoints

log = logging.getLogger("sgcore")

# A run's manifest is written at most this often while shards commit ...
MANIFEST_INTERVAL_S = 30.0
# ... and its writes take at most this share of the run's time: a manifest that takes w seconds
# to write waits w / share between writes, so the bytes a run writes stay bounded by its time and
# the store's bandwidth, however many shards it lists.
MANIFEST_WRITE_SHARE = 0.05


def manifest_interval() -> float:
    """Seconds between manifest checkpoints: ``SGCORE_MANIFEST_INTERVAL_S`` when set (drills), else 30."""
    raw = os.environ.get("SGCORE_MANIFEST_INTERVAL_S")
    try:
        value = float(raw) if raw else MANIFEST_INTERVAL_S
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"SGCORE_MANIFEST_INTERVAL_S must be a number of seconds >= 0; got {raw!r}")
    return value


class Checkpoints:
    """Writes the run's manifest while shards finish, at a bounded rate.

    A run that dies leaves a manifest that records its commits up to its last
    checkpoint, so that the next run trusts those records instead of reading
    every part's footer (:meth:`sgcore.io.OutputDir.committed_parts`).

    Args:
        write: writes the manifest (fenced: ``LeaseLost`` passes through and stops the run).
        recorder: whose :attr:`Recorder.finished` count says whether there is news.
        interval: the least time between two writes.
        share: the most of the run's time spent writing: after a write that took
            ``w`` seconds, the next waits at least ``w / share``.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, write: Callable[[], None], recorder: Recorder, *, interval: float = MANIFEST_INTERVAL_S,
                 share: float = MANIFEST_WRITE_SHARE, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1]; got {share}")
        self._write = write
        self.recorder = recorder
        self.interval = interval
        self.share = share
        self.clock = clock
        self.last = clock()  # the run wrote its manifest as it started
        self.cost = 0.0  # seconds the last write took
        self.recorded = recorder.finished
        self.writes = 0

    def due(self) -> bool:
        wait = max(self.interval, self.cost / self.share)
        return self.recorder.finished != self.recorded and self.clock() - self.last >= wait

    def maybe_write(self) -> bool:
        """Writes the manifest when a shard finished since the last write and the wait is over."""
        if not self.due():
            return False
        finished = self.recorder.finished
        start = self.clock()
        try:
            self._write()
        except OSError as e:  # the store hiccups: the next checkpoint, or the run's last write, tries again
            self.last = self.clock()
            log.warning("manifest checkpoint failed (next try in %.0f s): %s", self.interval, e)
            return False
        self.last = self.clock()
        self.cost = self.last - start
        self.recorded = finished
        self.writes += 1
        return True
