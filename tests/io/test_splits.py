"""Large files cut into several shards (tars by sample ranges, Parquet by row ranges), and tar keys
whatever characters they hold: the same ids, bytes and labels as reading each file whole."""

import gzip
import io
import tarfile
import tracemalloc

import pytest

from sgcore.io import decode_shard, plan_shards, read_shard, read_source
from sgcore.io._fs import RetryingReader
from sgcore.io.layouts.webdataset import escape_key, unescape_key
from tests.io.datasets import encode, rgb, tar_samples, write_parquet, write_tar


def _samples(shards):
    return [s for spec in shards for s in read_shard(spec)]


def _view(samples):
    return [(s.image_id, s.source, s.label, s.data, s.error) for s in samples]


# ------------------------------------------------------------ keys and ids
def test_escape_key_leaves_plain_keys_alone_and_round_trips():
    for key in ("n01440764_10026", "dir/sub/x", "sp ace", "ü", "a.b"):
        assert escape_key(key) == key
    for key in ("x#2", "a#b", "50%", "%23", "%25#%", "#"):
        assert "#" not in escape_key(key) and unescape_key(escape_key(key)) == key
    assert escape_key("x#2") == "x%232" and escape_key("%23") == "%2523"


def test_tar_keys_with_hash_space_unicode_percent_get_unique_ids_each_read_back(tmp_path):
    keys = ["x", "y", "x", "x#2", "a#b", "sp ace", "ü", "p%23"]  # the second x repeats x (not adjacent)
    blobs = [encode(rgb(i)) for i in range(len(keys))]
    write_tar(tmp_path / "a.tar", [(k, {"png": b}) for k, b in zip(keys, blobs, strict=True)])
    (spec,) = plan_shards(str(tmp_path), shard_size=100)
    samples = list(read_shard(spec))
    ids = [s.image_id for s in samples]
    assert ids == ["a.tar/x", "a.tar/y", "a.tar/x#2", "a.tar/x%232", "a.tar/a%23b", "a.tar/sp ace", "a.tar/ü",
                   "a.tar/p%2523"]
    assert len(set(ids)) == len(ids)
    assert [s.error is None for s in samples] == [True, True, False, True, True, True, True, True]
    for s, blob in zip(samples, blobs, strict=True):
        if s.error is None:  # every id that has an image reads back to its own bytes
            assert s.data == blob and read_source(s.source) == blob, s.image_id
    assert samples[3].source == f"{tmp_path}/a.tar#x%232.png"


# ------------------------------------------------------------- tar ranges
def _tar(tmp_path, n, *, compressed=False, repeat=None):
    samples = tar_samples("s", n)
    if repeat is not None:  # sample `at` takes the key of sample `of`: a repeat in a later range
        at, of = repeat
        samples[at] = (samples[of][0], samples[at][1])
    path = tmp_path / "d" / "big.tar"
    write_tar(path, samples)
    if compressed:
        path.with_suffix(".tar.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    return tmp_path / "d"


@pytest.mark.parametrize("compressed", [False, True])
def test_a_tar_of_50_samples_at_shard_size_16_is_4_ranges_read_as_the_whole_tar(tmp_path, compressed):
    root = _tar(tmp_path, 50, compressed=compressed, repeat=(20, 3))
    whole = plan_shards(str(root), shard_size=100)
    assert [(s.shard_id, s.count, s.first_row, s.stop_row) for s in whole] == [("00000", 50, 0, None)]
    shards = plan_shards(str(root), shard_size=16)
    assert [(s.shard_id, s.count, s.first_row, s.stop_row, s.split) for s in shards] == [
        ("00000-0000", 16, 0, 16, True), ("00000-0001", 16, 16, 32, True),
        ("00000-0002", 16, 32, 48, True), ("00000-0003", 2, 48, None, True)]
    assert all(s.members == (s.file,) for s in shards)
    # A plain tar's range starts where its first header is; a compressed one is streamed from its start.
    assert [s.offset is None for s in shards] == [compressed] * 4
    assert [s.repeats for s in shards] == [(), ((20, 2),), (), ()]  # sample 20 repeats key s0003
    assert _view(_samples(shards)) == _view(_samples(whole))
    ids = [s.image_id for s in _samples(shards)]
    assert len(ids) == 50 and len(set(ids)) == 50 and ids[20] == f"{shards[0].file}/s0003#2"


def test_limit_cuts_a_split_tar_where_reading_it_whole_does(tmp_path):
    root = _tar(tmp_path, 50)
    shards = plan_shards(str(root), shard_size=16, limit=20)
    assert [(s.shard_id, s.count, s.first_row, s.stop_row) for s in shards] == [
        ("00000-0000", 16, 0, 16), ("00000-0001", 4, 16, 20)]
    whole = plan_shards(str(root), shard_size=100, limit=20)
    assert _view(_samples(shards)) == _view(_samples(whole)) and len(_samples(shards)) == 20


def test_a_truncated_split_tar_keeps_ids_unique_and_reports_the_damage(tmp_path):
    root = _tar(tmp_path, 50)
    path = root / "big.tar"
    path.write_bytes(path.read_bytes()[:-3000])  # the last sample's data and the end blocks gone
    shards = plan_shards(str(root), shard_size=16)
    assert len(shards) == 4
    samples = _samples(shards)
    ids = [s.image_id for s in samples]
    assert len(set(ids)) == len(ids)
    assert samples[-1].image_id.startswith("big.tar#48-") and "big.tar: " in samples[-1].error
    assert samples[-1].error.startswith("stopped after") or samples[-1].error.startswith("cannot read")


def _decode_peak(spec) -> int:
    tracemalloc.start()
    try:
        decoded = decode_shard(spec, resize_size=128, crop_size=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.num_ok == spec.size
    return peak


def test_reading_one_range_of_a_large_tar_holds_only_its_own_samples(tmp_path):
    root = _tar(tmp_path, 500)
    (whole,) = plan_shards(str(root), shard_size=1000)
    shards = plan_shards(str(root), shard_size=16)
    assert len(shards) == 32  # 31 x 16 + 4
    whole_peak = _decode_peak(whole)
    peaks = [_decode_peak(shards[k]) for k in (0, 15, 31)]
    # 128 x 128 x 3 bytes per decoded image: 500 of them are 24.6 MB, 16 are 0.8 MB (plus ~2 MB of
    # read buffers either way).
    assert max(peaks) < whole_peak / 5, (peaks, whole_peak)


def test_a_range_of_a_plain_tar_is_read_from_its_offset_not_from_the_start(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_tar(root / "big.tar", [(k, {**f, "bin": bytes(30_000)}) for k, f in tar_samples("s", 200)])
    shards = plan_shards(str(root), shard_size=16)
    size = (root / "big.tar").stat().st_size
    assert size > 4 << 20  # larger than the reader's 1 MiB buffer, or it would read it all
    read = []
    original = RetryingReader.readinto

    def counting(self, buffer):
        n = original(self, buffer)
        read.append(n)
        return n

    monkeypatch.setattr(RetryingReader, "readinto", counting)
    assert len(list(read_shard(shards[-2]))) == 16
    assert sum(read) < size / 4, (sum(read), size)


# ---------------------------------------------------------- Parquet ranges
def test_parquet_3_row_groups_of_20_at_shard_size_20_are_3_row_ranges(tmp_path):
    images = [encode(rgb(i)) for i in range(60)]
    write_parquet(tmp_path / "t.parquet", images, labels=[f"c{i % 3}" for i in range(60)], row_group_size=20)
    shards = plan_shards(str(tmp_path), shard_size=20)
    assert [(s.shard_id, s.members, s.file, s.row_groups, s.first_row, s.stop_row) for s in shards] == [
        ("00000-0000", ("t.parquet",), "t.parquet", (0,), 0, 20),
        ("00000-0001", ("t.parquet",), "t.parquet", (1,), 20, 40),
        ("00000-0002", ("t.parquet",), "t.parquet", (2,), 40, 60)]
    whole = plan_shards(str(tmp_path), shard_size=60)
    assert [(s.shard_id, s.first_row, s.stop_row) for s in whole] == [("00000", 0, 60)]
    assert _view(_samples(shards)) == _view(_samples(whole))
    assert [s.image_id for s in _samples(shards)] == [f"t.parquet#{i}" for i in range(60)]


def test_a_parquet_row_group_larger_than_the_shard_size_is_cut_into_row_ranges(tmp_path):
    images = [encode(rgb(i)) for i in range(50)]
    write_parquet(tmp_path / "t.parquet", images, row_group_size=50, ids=[f"u{i}" for i in range(50)])
    shards = plan_shards(str(tmp_path), shard_size=16, id_column="uid")
    assert [(s.shard_id, s.row_groups, s.first_row, s.stop_row) for s in shards] == [
        ("00000-0000", (0,), 0, 16), ("00000-0001", (0,), 16, 32), ("00000-0002", (0,), 32, 48),
        ("00000-0003", (0,), 48, 50)]
    whole = plan_shards(str(tmp_path), shard_size=100, id_column="uid")
    assert _view(_samples(shards)) == _view(_samples(whole))
    assert [s.image_id for s in _samples(shards)] == [f"u{i}" for i in range(50)]
    assert read_source(f"{tmp_path}/t.parquet#37") == images[37]


def _plan_peak(root, **kw) -> tuple[int, list]:
    tracemalloc.start()
    try:
        shards = plan_shards(str(root), **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, shards


@pytest.mark.parametrize("id_column", [None, "uid"])
def test_planning_100k_parquet_rows_holds_no_object_per_row(tmp_path, id_column):
    rows = 25_000
    for f in range(4):
        write_parquet(tmp_path / f"p{f}.parquet", [b"x"] * rows, row_group_size=5_000,
                      ids=[f"id-{f}-{i:06d}" for i in range(rows)])
    peak, shards = _plan_peak(tmp_path, shard_size=256, id_column=id_column)
    # One id string per row (~75 bytes each: 7.7 MB on the old plan, 26 MB with the id column's
    # uniqueness check) would be far past this; the plan's ~400 shards take ~0.5 MB.
    assert peak < 2_000_000, peak
    assert sum(s.size for s in shards) == 4 * rows
    assert all(s.members == (s.file,) for s in shards)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_ranges_of_tars_in_every_header_format_read_as_the_whole_tar(tmp_path, fmt):
    """Long names (ustar prefix, GNU long-name and pax headers), directories and links between samples."""
    path = tmp_path / "d" / "t.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, (key, fields) in enumerate(tar_samples("s", 10)):
            folder = f"{'deep' * 30}/{i % 3}" if i % 2 else "flat"
            if i == 4:
                tar.addfile(tarfile.TarInfo(folder + "/") if fmt != tarfile.USTAR_FORMAT else _dir(folder))
                link = tarfile.TarInfo(f"{folder}/link.png")
                link.type, link.linkname = tarfile.SYMTYPE, "x.png"
                tar.addfile(link)
            for ext, data in fields.items():
                name = f"{folder}/{key}{'_ü' if fmt == tarfile.PAX_FORMAT else ''}.{ext}"
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    whole = plan_shards(str(path.parent), shard_size=100)
    shards = plan_shards(str(path.parent), shard_size=3)
    assert [(s.count, s.first_row) for s in shards] == [(3, 0), (3, 3), (3, 6), (1, 9)]
    assert all(s.offset is not None for s in shards)
    assert _view(_samples(shards)) == _view(_samples(whole)) and len(_samples(whole)) == 10


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
