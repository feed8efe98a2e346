"""The recorder: each shard outcome, applied to the manifest, the result and the progress (no Ray)."""

from __future__ import annotations

import pytest

from sgcore.io import Manifest, RunEntry, ShardSpec
from sgcore.io.output import now
from sgcore.pipeline.progress import Progress
from sgcore.pipeline.recorder import (
    Checkpoints,
    Committed,
    Failed,
    JobFailed,
    JobResult,
    Recorder,
    Retrying,
    StorageDown,
    Submitted,
)
from sgcore.pipeline.worker import ShardSummary


def _setup(n_shards: int = 3, images: int = 10, *, max_error_rate: float = 1.0):
    shards = [ShardSpec(shard_id=f"{i:05d}", kind="images", root="/in",
                        members=tuple(f"{i}-{j}.png" for j in range(images)), count=images)
              for i in range(n_shards)]
    manifest = Manifest.begin(config={}, config_hash="h", preprocess={}, model={}, fingerprint="f",
                              shards=shards, committed={}, previous=None,
                              run=RunEntry.begin(now(), shards=n_shards, skipped=0))
    result = JobResult(output="/out", shards=n_shards)
    progress = Progress(n_shards * images, n_shards, enabled=False)
    return Recorder(manifest, result, progress, max_error_rate=max_error_rate, output="/out"), manifest


def _summary(shard: str, ok: int, errors: int, attempt: int = 0, **extra) -> ShardSummary:
    return ShardSummary(shard=shard, rows=ok + errors, ok=ok, errors=errors, attempt=attempt, **extra)


def test_a_committed_shard_fills_its_entry_the_totals_and_the_progress():
    rec, manifest = _setup()
    rec.record(Submitted("00001", 0))
    entry = manifest.shards["00001"]
    assert (entry.status, entry.attempts) == ("running", 1)
    rec.images_done({("00001", 0): 4})
    assert rec.progress.images == 4  # live, before the shard finished
    rec.record(Committed(_summary("00001", 9, 1, seconds=1.23456, node="n1", pid=7, device="cpu",
                                  finished=5.0, max_rss_mb=321.0)))
    assert (entry.status, entry.rows, entry.ok, entry.errors) == ("committed", 10, 9, 1)
    assert (entry.seconds, entry.node, entry.pid, entry.device, entry.finished) == (1.235, "n1", 7, "cpu", 5.0)
    assert entry.run == 1 and entry.failures is None
    r = rec.result
    assert (r.rows, r.ok, r.errors, r.worker_max_rss_mb, r.shards_failed) == (10, 9, 1, 321.0, 0)
    # the shard's rows replace its live count: counted once
    assert (rec.progress.images, rec.progress.errors, rec.progress.shards) == (10, 1, 1)
    assert rec.not_done() == 2


def test_a_retried_attempt_records_its_reason_and_forgets_its_live_count():
    rec, manifest = _setup()
    rec.record(Submitted("00000", 0))
    rec.images_done({("00000", 0): 6})
    rec.record(Retrying("00000", 0, "actor died: killed"))
    entry = manifest.shards["00000"]
    assert entry.failures == ["actor died: killed"] and entry.status == "running"
    assert rec.progress.images == 0
    rec.images_done({("00000", 0): 3})  # a late report of the dead attempt is not counted
    assert rec.progress.images == 0
    rec.record(Submitted("00000", 1))
    rec.record(Committed(_summary("00000", 10, 0, attempt=1)))
    assert (entry.status, entry.attempts, rec.result.rows, rec.progress.images) == ("committed", 2, 10, 10)


def test_a_shard_that_failed_every_attempt_counts_its_error_rows_and_is_listed():
    rec, manifest = _setup()
    rec.record(Submitted("00002", 1))
    rec.record(Failed(_summary("00002", 0, 10, attempt=1), "boom"))
    entry = manifest.shards["00002"]
    assert (entry.status, entry.rows, entry.errors, entry.failures) == ("failed", 10, 10, ["boom"])
    assert entry.node is None and entry.seconds == 0.0  # no replica ran it to the end
    r = rec.result
    assert (r.shards_failed, r.failed_shards, r.rows, r.errors, r.success) == (1, ["00002"], 10, 10, False)
    assert rec.not_done() == 2


def test_a_failed_shards_error_rows_do_not_stop_the_job_but_image_errors_do():
    rec, _ = _setup(n_shards=10, images=10, max_error_rate=0.2)
    for i in range(5):  # 50 rows of failed shards: not the images' fault
        rec.record(Failed(_summary(f"{i:05d}", 0, 10), "storage"))
    rec.record(Committed(_summary("00005", 9, 1)))
    assert rec.rows_seen == 10
    for i in (6, 7, 8, 9):
        rec.record(Committed(_summary(f"{i:05d}", 9, 1)))
    assert rec.rows_seen == 50  # 10 % errors: under the bound
    rec2, _ = _setup(n_shards=10, images=10, max_error_rate=0.2)
    with pytest.raises(JobFailed, match=r"^21 of the first 70 images failed \(over --max-error-rate 0.2\)"):
        for i in range(7):
            rec2.record(Committed(_summary(f"{i:05d}", 7, 3)))


def test_a_store_down_for_good_fails_every_shard_that_met_it_once():
    rec, manifest = _setup(n_shards=4)
    rec.record(Failed(_summary("00000", 0, 10), "earlier"))
    rec.record(StorageDown("00001", 2, "storage unavailable", ("00000", "00001", "00002")))
    assert [manifest.shards[s].status for s in sorted(manifest.shards)] == ["failed", "failed", "failed", "pending"]
    assert manifest.shards["00001"].failures == ["storage unavailable"]
    assert rec.result.failed_shards == ["00000", "00001", "00002"] and rec.result.shards_failed == 3
    assert rec.not_done() == 1


def test_the_pool_size_kept_is_the_largest_and_losses_add_up():
    rec, _ = _setup()
    for live in (2, 3, 1):
        rec.replicas(live)
    rec.replica_lost()
    rec.replica_lost()
    assert (rec.result.actors, rec.result.actors_lost) == (3, 2)


def test_anything_else_is_refused():
    rec, _ = _setup()
    with pytest.raises(TypeError, match="not a shard outcome"):
        rec.record({"shard": "00000", "rows": 3})  # type: ignore[arg-type]


# ----------------------------------------------------------------- manifest checkpoints


class _Store:
    """A manifest store on a fake clock: a write takes its bytes over ``bandwidth`` seconds."""

    def __init__(self, manifest: Manifest, bandwidth: float) -> None:
        self.manifest, self.bandwidth = manifest, bandwidth
        self.now = 0.0
        self.writes: list[tuple[float, int]] = []  # (when, bytes)

    def write(self) -> None:
        data = self.manifest.to_json()
        self.now += len(data) / self.bandwidth
        self.writes.append((self.now, len(data)))


def test_checkpoints_write_only_news_and_at_most_once_an_interval():
    rec, manifest = _setup(5)
    store = _Store(manifest, bandwidth=1e9)
    cp = Checkpoints(store.write, rec, interval=30.0, clock=lambda: store.now)
    store.now = 100.0
    assert not cp.maybe_write()  # nothing finished: nothing to record
    rec.record(Committed(_summary("00000", 10, 0)))
    assert cp.maybe_write() and cp.writes == 1
    rec.record(Committed(_summary("00001", 10, 0)))
    store.now += 29.0
    assert not cp.maybe_write()
    store.now += 1.0
    assert cp.maybe_write() and cp.writes == 2


def test_a_failed_checkpoint_is_retried_later_and_lease_loss_stops_the_run():
    from sgcore.io.lease import LeaseLost

    rec, _ = _setup(3)
    now = [0.0]
    outcomes = [OSError("503 Slow Down"), None, LeaseLost("run x lost its claim")]

    def write() -> None:
        e = outcomes.pop(0)
        if e is not None:
            raise e

    cp = Checkpoints(write, rec, interval=10.0, clock=lambda: now[0])
    rec.record(Committed(_summary("00000", 10, 0)))
    now[0] = 10.0
    assert not cp.maybe_write() and cp.writes == 0  # logged; the record waits for the next one
    now[0] = 20.0
    assert cp.maybe_write() and cp.writes == 1
    rec.record(Committed(_summary("00001", 10, 0)))
    now[0] = 30.0
    with pytest.raises(LeaseLost):
        cp.maybe_write()


@pytest.mark.parametrize("interval", [0.0, 30.0])
def test_manifest_writes_take_a_bounded_share_of_a_run_at_10000_shards(interval):
    """10^4 shards committing 100 a second on a 2 MB/s store: the manifest (~3 MB at the end) is
    rewritten at most once an interval and never for more than ``share`` of the run's time (plus
    one write), so its bytes per run are bounded by time x bandwidth x share, not shards^2."""
    n = 10_000
    rec, manifest = _setup(n, images=1)
    store = _Store(manifest, bandwidth=2e6)
    cp = Checkpoints(store.write, rec, interval=interval, share=0.05, clock=lambda: store.now)
    for i in range(n):
        rec.record(Committed(_summary(f"{i:05d}", 1, 0, commit={"epoch": 1, "token": "t", "size": 9,
                                                                   "sha256": "s", "stamp": "1"})))
        store.now += 0.01
        cp.maybe_write()
    writing = sum(size for _, size in store.writes) / store.bandwidth
    last = store.writes[-1][1] / store.bandwidth
    assert cp.writes >= 1
    assert writing <= 0.05 * store.now + last, (cp.writes, writing, store.now)
    if interval:
        assert cp.writes <= store.now / interval + 1
    # Without the bound (a write per commit) it would have written ~n/2 manifests.
    assert cp.writes < n / 100


def test_maps_capped_below_the_target_are_counted_in_the_summary_line():
    """--n-samples auto: maps that stopped at --max-samples below the target are counted, not silent."""
    rec, _ = _setup()
    rec.record(Committed(_summary("00000", 10, 0, capped=2)))
    rec.record(Committed(_summary("00001", 10, 0, capped=1)))
    rec.record(Committed(_summary("00002", 10, 0)))
    assert rec.result.capped == 3
    assert "3 maps stopped at --max-samples below --target-reliability (column capped)" in rec.result.summary()
    assert "capped" not in JobResult(output="/out", rows=1, ok=1, shards=1).summary()
