"""sgcore.io.output: names, the typed manifest, committed parts, temporary files, clearing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sgcore.io import (
    Manifest,
    OutputDir,
    ResultRow,
    RunEntry,
    ShardEntry,
    ShardSpec,
    encode_part,
    npz_name,
    npz_url,
    part_name,
    part_url,
    read_manifest,
    write_bytes,
    write_manifest,
)
from sgcore.io.lease import Lease
from sgcore.io.output import (
    TEMP_GLOB,
    commit_record,
    is_temp,
    part_footer,
    read_part_metadata,
    temp_path,
)


def _spec(sid: str, n: int, content: str | None = None) -> ShardSpec:
    return ShardSpec(shard_id=sid, kind="images", root="memory://in",
                     members=tuple(f"{sid}/{i}.png" for i in range(n)), content=content)


def _run(started: str = "2026-01-01T00:00:00+00:00", **kw) -> RunEntry:
    return RunEntry(started=started, git_revision="abc", versions={"sgcore": "0.1", "torch": "2.5"}, **kw)


def _manifest(**kw) -> Manifest:
    shards = [_spec("00000", 2), _spec("00001", 3), _spec("00002", 1)]
    return Manifest.begin(config={"n_samples": 4, "model": "demo"}, config_hash="h1",
                          preprocess={"crop_size": 64}, model={"source": "demo", "files": {}},
                          fingerprint="fp", shards=shards, committed={}, previous=None, run=_run(), **kw)


def _part(out: str, sid: str, *, status: str = "committed", chash: str = "h1", rows: int | None = 2,
          content: str | None = None, **opts) -> None:
    meta = {"config_hash": chash, "status": status, "content": content, "shard": sid, "rows": rows,
            "ok": rows, "errors": 0}
    if status is None:
        del meta["status"]
    data, _ = encode_part([], map_shape=(2, 2), metadata=meta)
    write_bytes(part_url(out, sid), data, opts or None)


# --------------------------------------------------------------------------- names


def test_names_of_parts_maps_and_temporary_files():
    assert part_name("00003") == "part-00003.parquet" and npz_name("00003") == "maps/part-00003.npz"
    assert part_url("s3://b/out/", "7") == "s3://b/out/part-7.parquet"
    assert npz_url("/data/out", "7") == "/data/out/maps/part-7.npz"
    tmp = temp_path("/data/out/part-00003.parquet")
    assert tmp.startswith("/data/out/.part-00003.parquet.tmp-") and is_temp(tmp)
    assert temp_path("/o/a") != temp_path("/o/a")  # two writers of one name never share a temporary file
    assert not is_temp("part-00003.parquet") and not is_temp("_manifest.json")
    import fnmatch

    assert fnmatch.fnmatch(tmp.rsplit("/", 1)[-1], TEMP_GLOB)


def test_a_directory_read_skips_temporary_files_and_markers(tmp_path):
    out = str(tmp_path / "out")
    data, _ = encode_part([ResultRow(image_id="a", source="a", status="ok")], map_shape=(2, 2), metadata={})
    write_bytes(part_url(out, "00000"), data)
    (tmp_path / "out" / ".part-00001.parquet.tmp-dead").write_bytes(b"half a part")
    write_manifest(out, _manifest())
    (tmp_path / "out" / "_SUCCESS").write_bytes(b"")
    assert pq.read_table(out).column("image_id").to_pylist() == ["a"]


# --------------------------------------------------------------------------- the manifest


def test_a_new_manifest_has_the_keys_the_driver_always_wrote():
    m = _manifest()
    data = json.loads(m.to_json())
    assert sorted(data) == ["config", "config_hash", "created", "failed_shards", "git_revision", "model", "plan",
                            "preprocess", "runs", "sgcore_version", "shards", "status", "totals", "versions"]
    assert data["plan"] == {"shards": 3, "images": 6, "fingerprint": "fp"}
    assert data["shards"]["00000"] == {"images": 2, "first": "00000/0.png", "status": "pending"}
    assert sorted(data["runs"][0]) == ["actors", "actors_lost", "driver_max_rss_mb", "errors", "failed_shards",
                                       "finished", "git_revision", "ok", "rows", "seconds", "shards",
                                       "shards_failed", "shards_skipped", "started", "status",
                                       "versions", "worker_max_rss_mb"]
    assert (data["created"], data["sgcore_version"], data["status"]) == (m.runs[0].started, "0.1", "running")
    assert data["failed_shards"] == [] and data["totals"]["shards"] == 3 and data["totals"]["runs"] == 1


def test_manifest_json_round_trip_is_exact():
    m = _manifest()
    a, b = m.shards["00000"], m.shards["00001"]
    a.status, a.attempts, a.rows, a.ok, a.errors, a.seconds, a.run = "committed", 1, 2, 2, 0, 1.25, 1
    a.node, a.pid, a.device, a.finished = "n1", 42, "cpu", 1767225600.5
    b.status, b.attempts, b.rows, b.ok, b.errors, b.run = "failed", 2, 3, 0, 3, 1
    b.add_failure("actor died: " + "x" * 600)
    run = m.runs[0]
    run.finished, run.status, run.seconds, run.actors = "2026-01-01T00:01:00+00:00", "failed", 60.0, 2
    run.gpus_per_actor, run.gpus_per_actor_requested, run.stopped_by = 0.0, 1.0, "SIGTERM"
    m.status, m.finished = "failed", run.finished
    text = m.to_json()
    back = Manifest.from_json(text)
    assert back == m and back.to_json() == text
    assert len(back.shards["00001"].failures[0]) == 500
    data = json.loads(text)
    assert data["failed_shards"] == ["00001"] and data["finished"] == run.finished
    assert data["runs"][0]["stopped_by"] == "SIGTERM" and data["runs"][0]["gpus_per_actor"] == 0.0
    assert data == json.loads(json.dumps(data, sort_keys=True))  # plain JSON all the way down


def test_totals_count_parts_and_sum_runs():
    m = _manifest()
    for sid, (status, rows, errors) in {"00000": ("committed", 2, 1), "00001": ("failed", 3, 3),
                                        "00002": ("running", 1, 0)}.items():
        e = m.shards[sid]
        e.status, e.rows, e.ok, e.errors = status, rows, rows - errors, errors
    m.runs[0].seconds, m.runs[0].actors, m.runs[0].actors_lost, m.runs[0].worker_max_rss_mb = 10.004, 2, 1, 300.0
    m.runs.append(_run(seconds=5.0, actors=3, actors_lost=2, driver_max_rss_mb=120.5))
    t = m.totals()
    # Counts over the committed and failed parts (a running shard has none yet); work over the runs.
    assert (t.rows, t.ok, t.errors) == (5, 1, 4)
    assert (t.shards, t.shards_committed, t.shards_failed) == (3, 1, 1)
    assert (t.runs, t.seconds, t.actors, t.actors_lost) == (2, 15.0, 3, 3)
    assert (t.driver_max_rss_mb, t.worker_max_rss_mb) == (120.5, 300.0)
    assert json.loads(m.to_json())["totals"] == t.to_dict()


def test_a_resume_keeps_what_the_first_run_recorded():
    first = _manifest()
    done = first.shards["00000"]
    done.status, done.rows, done.ok, done.errors, done.run, done.seconds = "committed", 2, 2, 0, 1, 3.5
    first.runs[0].status, first.runs[0].rows = "stopped", 2
    previous = Manifest.from_json(first.to_json())
    footer = {"config_hash": "h1", "status": "committed", "rows": 2, "ok": 1, "errors": 1}
    again = Manifest.begin(config=first.config, config_hash="h1", preprocess=first.preprocess, model=first.model,
                           fingerprint="fp", shards=[_spec("00000", 2), _spec("00001", 3), _spec("00002", 1)],
                           committed={"00000": footer}, previous=previous,
                           run=_run("2026-01-02T00:00:00+00:00", shards=2, shards_skipped=1))
    assert again.runs[0] == previous.runs[0] and len(again.runs) == 2
    assert (again.created, again.versions, again.git_revision) == (first.created, first.versions, first.git_revision)
    kept = again.shards["00000"]
    assert (kept.status, kept.run, kept.seconds) == ("committed", 1, 3.5)
    assert (kept.rows, kept.ok, kept.errors) == (2, 1, 1)  # the counts are the footer's
    assert again.shards["00001"] == ShardEntry(images=3, first="00001/0.png")
    assert previous.shards["00000"].ok == 2  # the previous manifest is not changed


@pytest.mark.parametrize(("data", "match"), [
    (b"{", r"memory://o/_manifest.json is not valid JSON"),
    (b"[]", r"memory://o/_manifest.json must be a JSON object; got list"),
    (b'{"config": {}}', r"memory://o/_manifest.json has no 'plan'; is it an sgcore manifest\?"),
    (b'{"config": {}, "config_hash": "h", "preprocess": {}, "plan": {"shards": 1, "images": 1, "fingerprint": "f"},'
     b' "colour": 1}', r"memory://o/_manifest.json has unknown key\(s\) colour"),
    (b'{"config": {}, "preprocess": {}, "plan": {"shards": 1, "images": 1, "fingerprint": "f"}}',
     r"memory://o/_manifest.json: .*config_hash"),
    (b'{"config": {}, "config_hash": "h", "preprocess": {}, "plan": {"shards": 1, "images": 1, "fingerprint": "f"},'
     b' "shards": {"0": {"images": 1, "first": "a", "note": "x"}}}',
     r"memory://o/_manifest.json: shard 0 has unknown key\(s\) note"),
    (b'{"config": {}, "config_hash": "h", "preprocess": {}, "plan": {"shards": 1, "images": 1, "fingerprint": "f"},'
     b' "runs": [{"finished": null}]}', r"memory://o/_manifest.json: run 1: .*started"),
])
def test_what_is_not_a_manifest_is_refused_naming_it(data, match):
    with pytest.raises(ValueError, match=match):
        Manifest.from_json(data, what="memory://o/_manifest.json")


def test_manifest_read_and_write_on_a_store(tmp_path):
    out = f"memory://{tmp_path.name}/out"
    assert read_manifest(out) is None
    m = _manifest()
    write_manifest(out, m)
    assert read_manifest(out) == m
    d = OutputDir(out)
    assert d.fs.cat_file(d.path_of("_manifest.json")) == m.to_json()


# --------------------------------------------------------------------------- parts


@pytest.fixture(params=["memory", "local"])
def out(request, tmp_path) -> str:
    return f"memory://{tmp_path.name}/out" if request.param == "memory" else str(tmp_path / "out")


def test_committed_parts_are_those_of_this_config_with_status_committed(out):
    _part(out, "00000")
    _part(out, "00001", status="failed")  # error rows of a shard that failed every attempt
    _part(out, "00002", chash="other")
    _part(out, "00003", status=None)  # a footer without a status is no commit
    _part(out, "00004", rows=None)
    _part(out, "00005", content="c-old")
    _part(out, "00006", content="c1")
    _part(out, "00099")  # not in this plan
    d = OutputDir(out)
    d.fs.pipe_file(d.path_of(".part-00007.parquet.tmp-1234"), b"half")
    plan = {f"0000{i}": None for i in range(9)} | {"00005": "c-new", "00006": "c1"}
    done, changed, suspect = d.committed_parts("h1", plan)
    assert suspect == []
    assert sorted(done) == ["00000", "00006"] and changed == ["00005"]
    assert done["00000"]["rows"] == 2 and done["00000"]["status"] == "committed"
    assert [p.rsplit("/", 1)[-1] for p in d.part_paths()] == [part_name(f"0000{i}") for i in range(7)] + [
        part_name("00099")]
    assert d.part_urls()[0] == part_url(out, "00000") and d.has_parts()


def test_the_footer_written_is_the_one_read_back(tmp_path):
    # The footer's schema lives here: what part_footer builds is what committed_parts counts.
    out = str(tmp_path / "out")
    lease = Lease(out, run_id="writer")
    lease.acquire()
    rows = [ResultRow(image_id="a", source="a", status="ok"), ResultRow(image_id="b", source="b", status="error")]
    footer = part_footer("00000", config_hash="h1", status="committed", content="c1", rows=2, ok=1, fence=lease.fence)
    assert footer == {"config_hash": "h1", "status": "committed", "content": "c1", "shard": "00000", "rows": 2,
                      "ok": 1, "errors": 1, "epoch": lease.fence.epoch, "token": lease.fence.token}
    data, _ = encode_part(rows, map_shape=(2, 2), metadata=footer)
    record = commit_record(footer, data, write_bytes(part_url(out, "00000"), data, fence=lease.fence))
    assert read_part_metadata(part_url(out, "00000")) == footer
    assert record["size"] == len(data) and (record["epoch"], record["token"], record["content"]) == (
        lease.fence.epoch, lease.fence.token, "c1")
    done, changed, suspect = OutputDir(out).committed_parts("h1", {"00000": "c1"}, fenced=True)
    assert (changed, suspect) == ([], []) and done["00000"]["commit"]["sha256"] == record["sha256"]
    assert part_footer("00001", config_hash="h1", status="failed", content=None, rows=1, ok=0)["errors"] == 1
    with pytest.raises(ValueError, match="status must be one of committed, failed; got 'done'"):
        part_footer("00002", config_hash="h1", status="done", content=None, rows=0, ok=0)


def test_an_output_that_is_not_there_has_no_parts(tmp_path):
    d = OutputDir(str(tmp_path / "nothing"))
    assert d.part_paths() == [] and not d.has_parts() and d.committed_parts("h", {"0": None}) == ({}, [], [])
    assert d.read_manifest() is None and not d.has_success()


def test_temporary_files_of_a_dead_writer_are_removed_locally(tmp_path):
    out = str(tmp_path / "out")
    _part(out, "00000")
    (tmp_path / "out" / "maps").mkdir()
    (tmp_path / "out" / ".part-00001.parquet.tmp-aa").write_bytes(b"x")
    (tmp_path / "out" / "maps" / ".part-00001.npz.tmp-bb").write_bytes(b"x")
    (tmp_path / "out" / "._manifest.json.tmp-cc").write_bytes(b"x")
    (tmp_path / "out" / ".hidden").write_bytes(b"not ours")
    removed = OutputDir(out).remove_temp_files()
    assert sorted(removed) == ["._manifest.json.tmp-cc", ".part-00001.npz.tmp-bb", ".part-00001.parquet.tmp-aa"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [".hidden", "maps", "part-00000.parquet"]


def test_an_object_store_has_no_temporary_files_to_remove(tmp_path):
    out = f"memory://{tmp_path.name}/out"
    d = OutputDir(out)
    d.fs.pipe_file(d.path_of(".part-00001.parquet.tmp-aa"), b"x")  # not ours: a PUT needs no temporary file
    assert d.remove_temp_files() == [] and d.fs.exists(d.path_of(".part-00001.parquet.tmp-aa"))


def test_clear_removes_parts_maps_success_and_the_manifest_only(out):
    d = OutputDir(out)
    for sid in ("00000", "00001"):
        _part(out, sid)
        write_bytes(npz_url(out, sid), b"npz")
    write_manifest(out, _manifest())
    d.write_success()
    write_bytes(d.url_of("_lease.json"), b"{}")
    write_bytes(d.url_of("notes.txt"), b"mine")
    assert d.has_success()
    d.clear()
    assert not d.has_parts() and d.npz_paths() == [] and not d.has_success() and d.read_manifest() is None
    for name in ("_lease.json", "notes.txt"):
        assert d.fs.exists(d.path_of(name)), name
    d.clear()  # nothing left to clear is no error


def test_remove_manifest_takes_an_emptied_local_directory_along(tmp_path):
    out = str(tmp_path / "out")
    write_manifest(out, _manifest())
    OutputDir(out).remove_manifest()
    assert not (tmp_path / "out").exists()
    write_manifest(out, _manifest())
    (tmp_path / "out" / "keep").write_bytes(b"")
    OutputDir(out).remove_manifest()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep"]
    OutputDir(out).remove_manifest()  # already gone: nothing to do


def test_is_local_file(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    assert OutputDir(str(tmp_path / "f")).is_local_file()
    assert not OutputDir(str(tmp_path)).is_local_file()
    assert not OutputDir(f"memory://{tmp_path.name}/f").is_local_file()
