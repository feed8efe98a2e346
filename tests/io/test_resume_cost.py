"""What a resume costs (issue 27, item 4): the committed set from one listing and the manifest,
footers read only for parts the manifest does not record (the crash window).

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
from sgcore.pipeline.worker import write_part
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
