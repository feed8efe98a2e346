"""The progress line moves with every kernel batch, prints each step once, and counts right."""

from __future__ import annotations

import io
import json

import pytest

from sgcore.config import JobConfig
from sgcore.pipeline import run_job
from sgcore.pipeline.driver import JobResult
from sgcore.pipeline.progress import Progress, format_rate, plural
from tests.conftest import write_images


def test_images_count_as_batches_finish_and_a_failed_attempt_is_taken_back():
    p = Progress(12, 2, interval=0.0, stream=io.StringIO())
    p.partial(("00000", 0), 2)
    assert p.images == 2 and p.line().startswith("[sgcore] 2/12 images (17%) | ")
    assert p.rate > 0 and "ETA ?" not in p.line()  # live from the first batch
    p.partial(("00001", 0), 4)
    p.discard(("00001", 0))  # that attempt failed: its images will be done again
    p.partial(("00001", 0), 4)  # a report that arrives late is ignored
    assert p.images == 2
    p.update(6, 1, ("00000", 0))  # the shard's rows replace its partial count
    p.partial(("00000", 0), 3)
    assert p.images == 6 and p.errors == 1 and p.shards == 1
    assert "| 1 error |" in p.line() and p.line().endswith("shards 1/2")


def test_each_step_prints_once():
    out = io.StringIO()
    p = Progress(4, 1, interval=0.0, heartbeat=3600.0, stream=out)
    p.maybe_print()
    p.maybe_print()  # nothing moved: no second line
    p.partial(("00000", 0), 2)
    p.maybe_print()
    p.maybe_print(force=True)  # the final print repeats nothing
    p.update(4, 0, ("00000", 0))
    p.maybe_print(force=True)
    lines = out.getvalue().splitlines()
    assert [ln.split(" images")[0] for ln in lines] == ["[sgcore] 0/4", "[sgcore] 2/4", "[sgcore] 4/4"]


def test_a_slow_rate_stays_readable():
    assert (format_rate(0.0), format_rate(0.0437), format_rate(0.5), format_rate(7.14)) == ("0.0", "0.044", "0.5", "7.1")
    slow = JobResult(output="out", rows=12, ok=12, shards=4, seconds=300.0, images_per_s=0.04, actors=1)
    assert "12 computed in 5m00s, 0.04 images/s on 1 replica" in slow.summary()


def test_a_heartbeat_says_it_is_one():
    out = io.StringIO()
    p = Progress(4, 1, interval=0.0, heartbeat=0.0, stream=out)
    p.maybe_print()
    p.maybe_print()  # nothing moved, the heartbeat is due at once
    p.partial(("00000", 0), 2)
    p.maybe_print()
    first, beat, moved = out.getvalue().splitlines()
    assert "still working" not in first and "still working" not in moved
    assert beat.startswith("[sgcore] 0/4 images") and "| still working: no image finished in the last" in beat


def test_summary_pluralizes_and_says_what_a_resume_did():
    assert (plural(1, "shard"), plural(2, "shard"), plural(0, "error")) == ("1 shard", "2 shards", "0 errors")
    one = JobResult(output="out", rows=12, ok=11, errors=1, shards=1, seconds=10.0, images_per_s=1.2, actors=1)
    assert one.summary() == ("12 images (11 ok, 1 error) in 1 shard | 12 computed in 10s, 1.2 images/s "
                             "on 1 replica | results: out")
    resumed = JobResult(output="out", rows=12, ok=12, shards=2, shards_skipped=1, images_skipped=6,
                        seconds=5.0, images_per_s=1.2, actors=2)
    assert "; 6 images in 1 shard already done | 6 computed in 5s, 1.2 images/s on 2 replicas" in resumed.summary()
    nothing = JobResult(output="out", rows=12, ok=12, shards=2, shards_skipped=2, images_skipped=12)
    assert nothing.summary() == ("12 images (12 ok, 0 errors) in 2 shards, all already done: nothing "
                                 "recomputed | results: out")


@pytest.mark.usefixtures("job_backend")
def test_a_real_job_counts_each_image_once_batch_by_batch(tmp_path, capsys):
    write_images(tmp_path / "in", n_per_class=6, size=24)  # 12 images
    cfg = dict(model="resnet18", weights="none", image_size=32, n_samples=8, shard_size=4, batch_size=2,
               progress=True)
    result = run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **cfg))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[sgcore] ") and "images (" in ln]
    # On a loaded machine a batch can take longer than the 60 s heartbeat, which says it is one.
    done = [int(ln.split()[1].split("/")[0]) for ln in lines if "still working" not in ln]
    # Never past the total (a finished shard's partial count is replaced, not added to),
    # each step once, and the last line says all 12.
    assert max(done) == 12 and done[-1] == 12 and len(done) == len(set(done)), lines
    assert done == sorted(done), lines
    assert result.rows == 12 and result.images_per_s > 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    # a CPU-only run records the GPUs it used: none
    assert manifest["config"]["gpus_per_actor"] == 0.0 and manifest["runs"][-1]["gpus_per_actor"] == 0.0
    again = run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **cfg))
    assert "all already done: nothing recomputed" in again.summary()
