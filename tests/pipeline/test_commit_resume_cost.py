"""What a commit and a resume cost (issue 27, items 3 and 4).

A replica's commit reads the lease, not the manifest: its requests and bytes do not grow with the
number of shards. The driver checkpoints the manifest while shards commit, so a run that dies
leaves the record of its commits; a resume takes the committed set from one listing and that
record, reading footers only for the parts the manifest does not record (the crash window).

On the moto S3 server, counting the requests the s3fs client sends; and in process, counting
footer reads.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sgcore.config import JobConfig
from sgcore.io import Manifest, OutputDir, ResultRow, RunEntry, output
from sgcore.io.lease import Lease
from sgcore.io.output import now
from sgcore.pipeline.driver import _committed_shards
from sgcore.pipeline.progress import Progress
from sgcore.pipeline.recorder import Checkpoints, Committed, JobResult, Recorder
from sgcore.pipeline.worker import ShardSummary, check_owner, write_part
from tests.io.committed_output import CHASH, S3Requests, shard_ids, write_committed_output

BUCKET = "sgcore-resume"
PRE = SimpleNamespace(map_shape=(2, 2), channels=3)


@pytest.fixture(scope="module")
def s3_output(s3_server, tmp_path_factory):
    """A fresh S3 prefix on the moto server and a lease on it."""
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)

    def make(name: str) -> tuple[str, Lease]:
        url = f"s3://{BUCKET}/{tmp_path_factory.mktemp(name).name}/out"
        lease = Lease(url, run_id=name)
        lease.acquire()
        return url, lease

    return make


def _resume(url: str, n: int) -> tuple[dict, S3Requests]:
    out = OutputDir(url)
    counter = S3Requests(out.fs)
    try:
        manifest = out.read_manifest()
        done = _committed_shards(out, [SimpleNamespace(shard_id=s, content=None) for s in shard_ids(n)], CHASH,
                                 manifest)
    finally:
        counter.close()
    return done, counter


def test_a_no_op_resume_of_1000_recorded_parts_takes_a_constant_number_of_requests(s3_output):
    url, lease = s3_output("all")
    write_committed_output(url, 1000, lease.fence)
    done, requests = _resume(url, 1000)
    assert len(done) == 1000
    assert all(d["commit"]["epoch"] == lease.fence.epoch for d in done.values())
    # The manifest (HEAD, GET) and one listing (1,000 keys a page): no request per part.
    assert requests.total <= 20, dict(requests.ops)
    assert requests.ops["GetObject"] == 1, dict(requests.ops)


def test_only_the_parts_the_manifest_does_not_record_are_read(s3_output):
    url, lease = s3_output("window")
    write_committed_output(url, 200, lease.fence, recorded=180)  # a run that died before recording 20
    done, requests = _resume(url, 200)
    assert len(done) == 200
    # Each unrecorded part: its footer, then its bytes hashed for the record; nothing of the rest.
    assert requests.ops["GetObject"] <= 1 + 2 * 20 + 5, dict(requests.ops)
    window = {s: done[s]["commit"] for s in shard_ids(200)[180:]}
    assert all(c["sha256"] and c["size"] and c["epoch"] == lease.fence.epoch for c in window.values())


def _one_part(tmp_path, content: str) -> tuple[OutputDir, Manifest]:
    url = str(tmp_path / "out")
    lease = Lease(url, run_id="r")
    lease.acquire()
    config = JobConfig(input="mem://in", output=url, n_samples=2)
    specs = [SimpleNamespace(shard_id="00000", size=1, members=("a.png",))]
    run = RunEntry.begin(now(), shards=1, skipped=0, fence=lease.fence)
    manifest = Manifest.begin(config={}, config_hash=CHASH, preprocess={}, model={}, fingerprint="f",
                              shards=specs, committed={}, previous=None, run=run)
    rows = [ResultRow(image_id="a", source="mem://a.png", shard="00000")]
    commit = write_part(config, PRE, "00000", rows, config_hash=CHASH, content=content, fence=lease.fence)
    entry = manifest.shards["00000"]
    entry.status, entry.rows, entry.ok, entry.errors = "committed", 1, 0, 1
    entry.record_commit(commit)
    return OutputDir(url), Manifest.from_json(manifest.to_json())


def test_a_recorded_part_is_taken_from_the_record_unless_its_input_changed(tmp_path, monkeypatch):
    out, manifest = _one_part(tmp_path, content="c1")
    assert manifest.shards["00000"].content == "c1"  # the commit record keeps the input's identity
    reads: list[str] = []
    real = output.read_part_metadata
    monkeypatch.setattr(output, "read_part_metadata", lambda url, *a: reads.append(url) or real(url, *a))
    done, changed, suspect = out.committed_parts(CHASH, {"00000": "c1"}, manifest=manifest, fenced=True)
    assert sorted(done) == ["00000"] and done["00000"]["rows"] == 1 and reads == []
    # Other input bytes under the same names: the footer decides, and the shard is redone.
    done, changed, suspect = out.committed_parts(CHASH, {"00000": "c2"}, manifest=manifest, fenced=True)
    assert done == {} and changed == ["00000"] and len(reads) == 1


def _commit_once(url: str, lease: Lease, n_shards: int) -> S3Requests:
    """A manifest of ``n_shards`` entries in the output, then one replica commit; its requests."""
    ids = shard_ids(n_shards)
    specs = [SimpleNamespace(shard_id=sid, size=1, members=(f"{sid}.png",)) for sid in ids]
    run = RunEntry.begin(now(), shards=n_shards, skipped=0, fence=lease.fence)
    manifest = Manifest.begin(config={}, config_hash=CHASH, preprocess={}, model={}, fingerprint="f",
                              shards=specs, committed={}, previous=None, run=run)
    out = OutputDir(url)
    out.write_manifest(manifest, lease.fence)
    config = JobConfig(input="mem://in", output=url, n_samples=2)
    rows = [ResultRow(image_id="a", source="mem://a.png", shard=ids[0])]
    counter = S3Requests(out.fs)
    try:
        check_owner(config, ids[0], lease.fence)
        write_part(config, PRE, ids[0], rows, config_hash=CHASH, fence=lease.fence)
    finally:
        counter.close()
    return counter


def test_a_replica_commit_costs_the_same_at_100_and_10000_shards(s3_output):
    small_url, small_lease = s3_output("c100xx")
    large_url, large_lease = s3_output("c10000")  # names of one length: leases of one size
    small = _commit_once(small_url, small_lease, 100)
    large = _commit_once(large_url, large_lease, 10_000)
    assert dict(large.ops) == dict(small.ops), (dict(small.ops), dict(large.ops))
    assert abs(large.bytes_in - small.bytes_in) <= 64, (small.bytes_in, large.bytes_in)
    assert "_manifest.json" not in large.keys, dict(large.keys)
    assert large.bytes_in < 4096  # the lease (twice) and the part's stamp: no manifest-sized read


def test_a_run_that_dies_leaves_the_record_of_its_checkpointed_commits(tmp_path, monkeypatch):
    """The driver's checkpoints, with no Ray: 10 commits, a checkpoint after 6, then the run dies.
    The next run trusts the 6 records and reads the footers of the other 4 only."""
    url = str(tmp_path / "out")
    lease = Lease(url, run_id="dies")
    lease.acquire()
    ids = shard_ids(10)
    specs = [SimpleNamespace(shard_id=sid, size=1, members=(f"{sid}.png",)) for sid in ids]
    run = RunEntry.begin(now(), shards=10, skipped=0, fence=lease.fence)
    manifest = Manifest.begin(config={}, config_hash=CHASH, preprocess={}, model={}, fingerprint="f",
                              shards=specs, committed={}, previous=None, run=run)
    out = OutputDir(url)
    out.write_manifest(manifest, lease.fence)
    recorder = Recorder(manifest, JobResult(output=url, shards=10), Progress(10, 10, enabled=False),
                        max_error_rate=1.0, output=url)
    clock = [0.0]
    checkpoints = Checkpoints(lambda: out.write_manifest(manifest, lease.fence), recorder, interval=5.5,
                              clock=lambda: clock[0])
    config = JobConfig(input="mem://in", output=url, n_samples=2)
    for sid in ids:
        rows = [ResultRow(image_id=sid, source=f"mem://{sid}.png", shard=sid)]
        commit = write_part(config, PRE, sid, rows, config_hash=CHASH, fence=lease.fence)
        recorder.record(Committed(ShardSummary.of(sid, rows, commit=commit)))
        clock[0] += 1.0
        checkpoints.maybe_write()  # due after the 6th commit (6 s >= 5.5 s), not again before 11.5 s
    assert checkpoints.writes == 1
    # The driver dies here: no final manifest write. The next run:
    left = out.read_manifest()
    assert [sid for sid in ids if left.shards[sid].status == "committed"] == ids[:6]
    reads: list[str] = []
    real = output.read_part_metadata
    monkeypatch.setattr(output, "read_part_metadata", lambda u, *a: reads.append(u) or real(u, *a))
    done = _committed_shards(out, [SimpleNamespace(shard_id=s, content=None) for s in ids], CHASH, left)
    assert sorted(done) == ids
    assert sorted(u.rsplit("-", 1)[-1] for u in reads) == [f"{sid}.parquet" for sid in ids[6:]]


def test_the_output_is_listed_as_parallel_key_ranges_with_the_same_parts(s3_output, monkeypatch):
    """A resume's one listing of the output: the part-* keys in parallel key ranges, the same as fs.ls's."""
    from sgcore.io import _tree

    url, lease = s3_output("ranges")
    write_committed_output(url, 300, lease.fence)
    out = OutputDir(url)
    out.fs.pipe({out.path_of("part-x/part-000001.parquet"): b"nested", out.path_of("part-notes.txt"): b"",
                 out.path_of("zz/part-000002.parquet"): b"elsewhere"})
    with monkeypatch.context() as m:
        m.setattr(OutputDir, "_s3_part_listing", lambda self: None)  # the folder listing of before
        before = out.part_listing()
    monkeypatch.setattr(_tree, "S3_PAGE", 10)
    after = out.part_listing()
    assert after == before and len(after) == 300
    stats = _tree.last_stats
    assert stats.max_in_flight > 1 and stats.prefixes > 5, stats  # not one chain of 30 pages
    done, requests = _resume(url, 300)
    assert len(done) == 300 and requests.ops["GetObject"] == 1, dict(requests.ops)
