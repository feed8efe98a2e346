"""Fenced commits (issue 25, items 2, 4 and 7): what a writer that lost the output, a flipped
byte or a deleted part can do to what readers and resumes count. In process, on a local disk
and on S3 (the moto server): two leases, the commit function, the readers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from sgcore.config import JobConfig
from sgcore.errors import InputError
from sgcore.io import Manifest, OutputDir, ResultRow, RunEntry, url_to_fs
from sgcore.io.lease import Fence, Lease, LeaseLost
from sgcore.io.output import now, part_name
from sgcore.pipeline.driver import _committed_shards
from sgcore.pipeline.worker import write_part
from sgcore.results import open_results_dir, read_errors, read_index, read_part

BUCKET = "sgcore-fence"
PRE = SimpleNamespace(map_shape=(4, 4), channels=3)  # what write_part needs of a Preprocess


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    s3fs = pytest.importorskip("s3fs")
    request.getfixturevalue("s3_server")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return f"s3://{BUCKET}/{tmp_path.name}/out"


def _rows(shard: str, tag: str, n: int = 2) -> list[ResultRow]:
    rng = np.random.default_rng(int(shard))
    return [ResultRow(image_id=f"{shard}-{i}", source=f"mem://{shard}-{i}.png", shard=shard, label=tag,
                      saliency=rng.random((4, 4)).astype(np.float16), map_height=4, map_width=4)
            for i in range(n)]


def _run(output: str, lease: Lease, tag: str, shards: list[str], *, chash: str) -> Manifest:
    """A whole run under ``lease``: parts, the final manifest (complete) and ``_SUCCESS``."""
    fence = lease.fence
    config = JobConfig(input="mem://in", output=output, n_samples=2)
    specs = [SimpleNamespace(shard_id=s, size=2, members=(f"{s}-0", f"{s}-1")) for s in shards]
    run = RunEntry.begin(now(), shards=len(shards), skipped=0, fence=fence)
    manifest = Manifest.begin(config={"tag": tag}, config_hash=chash, preprocess={}, model={}, fingerprint="f",
                              shards=specs, committed={}, previous=None, run=run)
    out = OutputDir(output)
    out.clear(fence)
    out.write_manifest(manifest, fence)
    for s in shards:
        entry = manifest.shards[s]
        entry.status, entry.rows, entry.ok, entry.errors = "committed", 2, 2, 0
        entry.record_commit(write_part(config, PRE, s, _rows(s, tag), config_hash=chash, fence=fence))
    manifest.status = "complete"
    out.write_manifest(manifest, fence)
    out.write_success(fence)
    return manifest


class _Stalled(Fence):
    """A commit whose lease check passed before the takeover and whose write lands after it
    (a frozen machine, an NFS hang, a long S3 retry)."""

    @contextlib.contextmanager
    def held(self):
        yield


def test_a_part_write_that_stalls_past_a_takeover_is_never_counted(output, caplog):
    first = Lease(output, run_id="first", ttl=0.3)
    first.acquire()
    fence_a = first.fence
    time.sleep(0.4)  # frozen past its ttl
    second = Lease(output, run_id="second")
    second.acquire()
    assert second.fence.epoch == fence_a.epoch + 1
    manifest = _run(output, second, "B", ["00000", "00001"], chash="hb")
    config_a = JobConfig(input="mem://in", output=output, n_samples=4)

    # The stalled run's next commit is refused where it takes effect; nothing lands.
    before = OutputDir(output).part_listing()
    with pytest.raises(LeaseLost, match=r"run first \(lease epoch 1\) lost its claim .* now run second"):
        write_part(config_a, PRE, "00001", _rows("00001", "A"), config_hash="ha", fence=fence_a)
    assert OutputDir(output).part_listing() == before

    # A write whose check had passed and that lands only now (the worst case on object stores).
    stalled = _Stalled(output=output, epoch=fence_a.epoch, token=fence_a.token, run_id="first")
    write_part(config_a, PRE, "00001", _rows("00001", "B"), config_hash="hb", fence=stalled)

    # Readers: the part is refused, naming it; the other one reads.
    results = open_results_dir(output)
    assert results.complete
    read_part(results, results.parts[0])
    with pytest.raises(InputError, match=r"part-00001.parquet was not committed by this output's runs \(written "
                                         r"by lease epoch 1; the manifest records epoch 2\)"):
        read_index(results)
    # Resume: not counted, named, redone.
    specs = [SimpleNamespace(shard_id=s, content=None) for s in ("00000", "00001")]
    with caplog.at_level(logging.WARNING, logger="sgcore"):
        done = _committed_shards(OutputDir(output), specs, "hb", manifest)
    assert sorted(done) == ["00000"]
    assert any("1 part not counted as committed, redoing: 00001 (written by lease epoch 1, not by the commit "
               "the manifest records, epoch 2)" in m for m in caplog.messages), caplog.messages
    second.release()


def test_a_stale_success_and_manifest_of_a_run_that_lost_the_output_count_for_nothing(output):
    first = Lease(output, run_id="first", ttl=0.3)
    first.acquire()
    fence_a = first.fence
    time.sleep(0.4)
    second = Lease(output, run_id="second")
    second.acquire()
    _run(output, second, "B", ["00000"], chash="hb")
    out = OutputDir(output)
    with pytest.raises(LeaseLost):
        out.write_manifest(Manifest.from_json(out.read_manifest().to_json()), fence_a)
    with pytest.raises(LeaseLost):
        out.write_success(fence_a)
    with pytest.raises(LeaseLost):
        out.remove_manifest(fence_a)  # the "never started" path of a run that lost the output
    assert out.read_manifest().config == {"tag": "B"} and open_results_dir(output).complete
    # A _SUCCESS that lands anyway (unfenced) is not the manifest's run's: incomplete, said so.
    out.write_success(_Stalled(output=output, epoch=1, token=fence_a.token, run_id="first"))
    with pytest.raises(InputError, match=r"incomplete \(its _SUCCESS was written by another run than its "
                                         r"_manifest.json's\)"):
        open_results_dir(output)


def test_overwrite_removes_success_and_the_manifest_before_any_part(output, monkeypatch):
    lease = Lease(output, run_id="old")
    lease.acquire()
    _run(output, lease, "A", ["00000", "00001", "00002"], chash="ha")
    out = OutputDir(output)
    removed: list[str] = []
    rm_file = out.fs.rm_file

    def recording(path, *a, **k):
        removed.append(path.rsplit("/", 1)[-1])
        return rm_file(path, *a, **k)

    monkeypatch.setattr(out.fs, "rm_file", recording)
    out.clear(lease.fence)
    assert removed[:2] == ["_SUCCESS", "_manifest.json"], removed
    assert sorted(removed[2:]) == [part_name(s) for s in ("00000", "00001", "00002")]


def _corrupt_a_page(fs, path: str) -> None:
    """Flips the last byte of the first column chunk: inside a data page, not a header or the footer."""
    with fs.open(path, "rb") as f:
        chunk = pq.ParquetFile(f).metadata.row_group(0).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    at = start + chunk.total_compressed_size - 1
    data = bytearray(fs.cat_file(path))
    data[at] ^= 0xFF
    fs.pipe_file(path, bytes(data))


def test_a_flipped_byte_is_named_by_readers_and_redone_by_the_resume(output, caplog):
    lease = Lease(output, run_id="run")
    lease.acquire()
    manifest = _run(output, lease, "A", [f"0000{i}" for i in range(5)], chash="ha")
    out = OutputDir(output)
    fs, _ = url_to_fs(output)
    _corrupt_a_page(out.fs, out.path_of(part_name("00002")))
    results = open_results_dir(output)  # the size is the same: found when the page is read
    with pytest.raises(InputError, match=r"part-00002.parquet is corrupt \(.*checksum.*\); rerun the job"):
        read_errors(results)
    specs = [SimpleNamespace(shard_id=f"0000{i}", content=None) for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="sgcore"):
        done = _committed_shards(out, specs, "ha", manifest)
    assert sorted(done) == ["00000", "00001", "00003", "00004"]
    assert any("redoing: 00002 (its bytes changed since they were committed: sha256" in m
               for m in caplog.messages), caplog.messages


def test_a_deleted_part_is_named_by_open_results_dir(output):
    lease = Lease(output, run_id="run")
    lease.acquire()
    _run(output, lease, "A", [f"0000{i}" for i in range(5)], chash="ha")
    out = OutputDir(output)
    out.fs.rm_file(out.path_of(part_name("00003")))
    with pytest.raises(InputError, match=r": 1 of the 5 parts its _manifest.json records are gone or changed: "
                                         r"part-00003.parquet \(gone\); rerun the job"):
        open_results_dir(output)
    partial = open_results_dir(output, allow_partial=True)
    assert not partial.complete and partial.missing == ["part-00003.parquet"] and len(partial.parts) == 4
