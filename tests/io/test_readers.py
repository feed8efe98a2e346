import pytest
from PIL import Image

from sgcore.errors import InputError
from sgcore.io import decode_shard, plan_shards, read_shard


def test_plan_lists_images_sorted_skips_other_files(image_dir):
    shards = plan_shards(str(image_dir), shard_size=3)
    members = [m for s in shards for m in s.members]
    assert members == sorted(members)
    assert "notes.txt" not in members and "cat/broken.jpg" in members
    assert [s.shard_id for s in shards] == ["00000", "00001", "00002"]
    assert [s.size for s in shards] == [3, 3, 1]


def test_plan_is_stable_and_limit_takes_a_prefix(image_dir):
    a = plan_shards(str(image_dir), shard_size=2)
    b = plan_shards(str(image_dir), shard_size=2)
    assert a == b
    limited = plan_shards(str(image_dir), shard_size=2, limit=3)
    assert [m for s in limited for m in s.members] == [m for s in a for m in s.members][:3]


def test_labels_come_from_parent_folder_and_errors_are_samples(image_dir):
    (spec,) = plan_shards(str(image_dir), shard_size=100)
    samples = {s.image_id: s for s in read_shard(spec)}
    assert samples["dog/dog_0.png"].label == "dog"
    assert samples["dog/dog_0.png"].source == f"{image_dir}/dog/dog_0.png"
    decoded = decode_shard(spec, resize_size=16, crop_size=16)
    bad = [r for r in decoded.records if r["error"]]
    assert [r["image_id"] for r in bad] == ["cat/broken.jpg"]
    assert "broken.jpg" in bad[0]["error"]
    assert decoded.images.shape == (6, 16, 16, 3)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_labels_table_is_identified_by_its_bytes_and_read_once(image_dir, tmp_path, suffix):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sgcore.io.labels import load_labels

    path = tmp_path / f"labels.{suffix}"
    rows = {"image_id": ["dog/dog_0.png", "cat/cat_0.png"], "label": ["owl", "fox"]}
    if suffix == "csv":
        path.write_text("image_id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(*rows.values(), strict=True)))
    else:
        pq.write_table(pa.table(rows), path)
    table = load_labels(str(path))
    assert table.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()  # the driver reads it once; planning with what it read reads nothing more
    (spec,) = plan_shards(str(image_dir), shard_size=100, labels=table)
    labels = dict(zip(spec.members, spec.labels, strict=True))
    assert (labels["dog/dog_0.png"], labels["cat/cat_0.png"], labels["dog/dog_1.jpg"]) == ("owl", "fox", None)


def test_a_tar_shard_reads_the_labels_table_the_planner_read_or_refuses(tmp_path):
    from sgcore.io.labels import _cached
    from tests.io.datasets import tar_samples, write_tar

    write_tar(tmp_path / "in" / "a.tar", tar_samples("s", 2))
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\na.tar/s0000,owl\na.tar/s0001,fox\n")
    (spec,) = plan_shards(str(tmp_path / "in"), shard_size=8, labels=str(labels))
    assert [s.label for s in read_shard(spec)] == ["owl", "fox"]
    # Changed while the job runs: a process that holds the planned content keeps using it;
    # one that must read it again refuses, naming it, instead of mixing two labelings.
    labels.write_text("image_id,label\na.tar/s0000,cat\na.tar/s0001,fox\n")
    assert [s.label for s in read_shard(spec)] == ["owl", "fox"]
    _cached.cache_clear()  # another decode process
    with pytest.raises(InputError, match=rf"^the labels table {labels} changed while the job ran \(sha256 "
                                         r"[0-9a-f]{12}\.\.\. -> [0-9a-f]{12}\.\.\.\); its rows would mix two "
                                         r"labelings: rerun with --overwrite once it no longer changes$"):
        list(read_shard(spec))
    # The next plan reads the new content, and so does its decode task (no stale copy).
    (spec,) = plan_shards(str(tmp_path / "in"), shard_size=8, labels=str(labels))
    assert [s.label for s in read_shard(spec)] == ["cat", "fox"]


def test_missing_file_becomes_error_record(image_dir):
    (spec,) = plan_shards(str(image_dir), shard_size=100)
    (image_dir / "dog" / "dog_1.jpg").unlink()
    recs = {r["image_id"]: r for r in decode_shard(spec, resize_size=8, crop_size=8).records}
    assert "cannot read" in recs["dog/dog_1.jpg"]["error"]
    assert recs["dog/dog_0.png"]["error"] is None


def test_memory_filesystem_round_trip(memory_root):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(buf, format="PNG")
    memory_root.fs.pipe(memory_root.path("ds/a/x.png"), buf.getvalue())
    memory_root.fs.pipe(memory_root.path("ds/b/y.png"), buf.getvalue())
    shards = plan_shards(memory_root.join("ds"), shard_size=10)
    assert shards[0].members == ("a/x.png", "b/y.png")
    decoded = decode_shard(shards[0], resize_size=4, crop_size=4)
    assert [r["error"] for r in decoded.records] == [None, None]
    assert decoded.records[0]["source"].startswith("memory://")


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "no image files"),
])
def test_bad_inputs_are_named(tmp_path, make, match):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputError, match=match):
        plan_shards(str(make(tmp_path)), shard_size=4)
