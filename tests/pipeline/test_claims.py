"""What a reader sees is what the job committed: crash leftovers, a second writer, a takeover.

Real processes and real signals: a job's actor is held at the worst moment
(its part written to the temporary file, not yet renamed: ``os.replace`` is
made to wait by a ``sitecustomize`` every process of the job loads), then the
whole process group is SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from sgcore.config import JobConfig
from sgcore.io.lease import Lease, LeaseLost
from sgcore.pipeline import run_job
from sgcore.pipeline.worker import check_owner
from sgcore.results import load_maps, open_results
from tests.conftest import write_images
from tests.pipeline.test_faults import _wait_gone

REPO = Path(__file__).resolve().parents[2]
STALL = '''
import os, time
_replace = os.replace
def _stalling_replace(src, dst, *a, **k):
    if os.path.basename(str(dst)) == os.environ.get("SGCORE_TEST_STALL_AT"):
        open(os.environ["SGCORE_TEST_STALLED"], "w").write(str(src))
        time.sleep(600)
    return _replace(src, dst, *a, **k)
os.replace = _stalling_replace
'''


def _job(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.smoothgrad", "--input", str(inp), "--output", str(out),
            "--model", "resnet18", "--weights", "none", "--image-size", "32", "--shard-size", "2",
            "--batch-size", "2", "--num-actors", "1", "--quiet", *extra]


def _readers(out: Path) -> dict[str, pd.DataFrame]:
    """The output as every documented reader sees it."""
    seen = {
        "pandas": pd.read_parquet(out, columns=["image_id", "n_samples"]),
        "pyarrow.parquet": pq.read_table(out, columns=["image_id", "n_samples"]).to_pandas(),
        "pyarrow.dataset": pads.dataset(out, format="parquet").to_table(
            columns=["image_id", "n_samples"]).to_pandas(),
    }
    try:
        import polars as pl

        seen["polars"] = pl.read_parquet(f"{out}/*.parquet", columns=["image_id", "n_samples"]).to_pandas()
    except ImportError:
        pass
    import ray

    if ray.is_initialized():  # the module's local Ray (ray_local)
        seen["ray.data"] = ray.data.read_parquet(str(out)).select_columns(["image_id", "n_samples"]).to_pandas()
    try:
        import duckdb

        for name, src in (("duckdb glob", f"{out}/*.parquet"), ("duckdb dir", str(out))):
            seen[name] = duckdb.sql(f"select image_id, n_samples from read_parquet('{src}')").df()
    except ImportError:
        pass
    return seen


@pytest.mark.usefixtures("ray_local", "in_process_jobs")
@pytest.mark.slow  # in CI: tests/pipeline/test_fencing.py (a stalled part write past a takeover, a stale _SUCCESS and manifest)
def test_kill_mid_commit_then_a_second_writer_then_overwrite(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    ids = sorted(write_images(inp, n_per_class=4, size=24))  # 8 images, 4 shards
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(STALL)
    stalled = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": f"{hooks}:{REPO}", "RAY_ADDRESS": "",
           "SGCORE_TEST_RUN": tmp_path.name, "SGCORE_TEST_STALL_AT": "part-00001.parquet",
           "SGCORE_TEST_STALLED": str(stalled)}
    first = subprocess.Popen(_job(inp, out, "--n-samples", "2"), cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not stalled.exists():
            assert first.poll() is None, "the first job ended before its commit could be held"
            time.sleep(0.05)
        assert stalled.exists(), "the first job never reached the commit of part-00001"
        temp = Path(stalled.read_text())
        assert temp.exists() and temp.name != "part-00001.parquet"
        holder = Lease(str(out)).read()

        # A second job with another config while the first one holds the output: refused, one line.
        second = subprocess.run(_job(inp, out, "--n-samples", "4"), cwd=REPO, capture_output=True, text=True,
                                timeout=300, env={**env, "SGCORE_TEST_STALL_AT": ""})
        assert second.returncode == 2, second.stderr[-2000:]
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in second.stderr
        assert f"is being written by run {holder.run_id} on " in err[0] and f"pid {holder.pid}" in err[0]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    _wait_gone(f"SGCORE_TEST_RUN={tmp_path.name}")
    assert temp.exists(), "the kill left the half-committed part behind"

    # Readers skip the leftover even before any cleanup.
    for name, df in _readers(out).items():
        assert df.image_id.is_unique and set(df.image_id) <= set(ids), name

    # The fixed command, another config: the dead holder's claim is taken at once,
    # --overwrite clears its parts and its leftovers (the driver's work: its replicas run in process).
    from jobs.smoothgrad import main

    third = main(_job(inp, out, "--n-samples", "4", "--overwrite")[3:])
    assert third == 0
    assert not temp.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS", "_lease.json", "_manifest.json", *(f"part-0000{i}.parquet" for i in range(4))]
    assert Lease(str(out)).read() is None, "the lease stays, released (it keeps the epoch)"
    seen = _readers(out)
    assert {"pandas", "pyarrow.parquet", "pyarrow.dataset", "polars", "duckdb glob", "ray.data"} <= set(seen)
    for name, df in seen.items():
        assert sorted(df.image_id) == ids, f"{name}: one row per image"
        assert set(df.n_samples) == {4}, f"{name}: no stale rows of the killed config"


def test_a_commit_by_a_run_that_lost_the_output_is_refused(tmp_path):
    out = tmp_path / "out"
    ours = JobConfig(input=str(tmp_path), output=str(out), n_samples=4)
    mine = Lease(str(out), run_id="mine", ttl=0.2)
    mine.acquire()
    fence = mine.fence
    check_owner(ours, "00000", fence)
    time.sleep(0.3)  # expired (frozen past its ttl): another run takes the output
    theirs = Lease(str(out), run_id="theirs")
    theirs.acquire()
    assert theirs.fence.epoch == fence.epoch + 1
    with pytest.raises(LeaseLost, match=r"run mine \(lease epoch 1\) lost its claim on .*: now run theirs on "
                                        r".*epoch 2"):
        check_owner(ours, "00000", fence)
    theirs.release()
    with pytest.raises(LeaseLost, match="epoch 2, released"):
        check_owner(ours, "00000", fence)  # released is not ours again either


@pytest.mark.usefixtures("job_backend")
@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_a_repeated_webdataset_key_leaves_ids_and_map_keys_unique(tmp_path, fmt):
    from tests.io.datasets import tar_samples, write_tar

    samples = tar_samples("s", 3)
    samples.append((samples[0][0], samples[1][1]))  # s0000 again, after two others
    write_tar(tmp_path / "wds" / "a.tar", samples)
    out = tmp_path / "out"
    result = run_job(JobConfig(input=str(tmp_path / "wds"), output=str(out), model="resnet18", weights="none",
                               image_size=16, n_samples=2, shard_size=8, format=fmt, progress=False))
    assert result.rows == 4 and result.errors == 1
    df = open_results(str(out)).to_table().to_pandas()  # (pandas would trip over maps/*.npz)
    assert df.image_id.is_unique and sorted(df.image_id) == ["a.tar/s0000", "a.tar/s0000#2", "a.tar/s0001",
                                                             "a.tar/s0002"]
    repeat = df.set_index("image_id").loc["a.tar/s0000#2"]
    assert repeat.status == "error" and "repeats in" in repeat.error
    if fmt == "npz":
        ok = df[df.status == "ok"]
        assert ok.map_key.is_unique
        maps = load_maps(str(out), list(ok.image_id))
        assert set(maps) == set(ok.image_id)


@pytest.mark.usefixtures("job_backend")
def test_a_resume_redoes_the_shards_whose_input_bytes_changed(tmp_path, caplog):
    from PIL import Image

    inp, out = tmp_path / "in", tmp_path / "out"
    ids = sorted(write_images(inp, n_per_class=4, size=24))  # 8 images, shards of 2 in id order
    cfg = dict(input=str(inp), output=str(out), model="resnet18", weights="none", image_size=16, n_samples=2,
               shard_size=2, progress=True)
    run_job(JobConfig(**cfg))
    before = open_results(str(out)).to_table().to_pandas().set_index("image_id")
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    # Same names, other bytes: new pixels for one image, garbage for one in another shard.
    repainted, broken = ids[0], ids[5]
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(inp / repainted)
    (inp / broken).write_bytes(b"not an image any more")
    for rel in (repainted, broken):
        os.utime(inp / rel, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sgcore"):
        again = run_job(JobConfig(**cfg))
    assert ("the input files of 2 shards changed since they were written (size or modification "
            "stamp): 00000, 00002; redoing them") in caplog.messages
    assert again.shards_skipped == 2 and again.rows == 8
    after = open_results(str(out)).to_table().to_pandas().set_index("image_id")
    assert after.index.is_unique and sorted(after.index) == ids
    assert after.loc[broken].status == "error" and before.loc[broken].status == "ok"
    assert not np.array_equal(np.asarray(after.loc[repainted].saliency), np.asarray(before.loc[repainted].saliency))
    untouched = {n: t for n, t in parts.items() if n not in ("part-00000.parquet", "part-00002.parquet")}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in untouched} == untouched
