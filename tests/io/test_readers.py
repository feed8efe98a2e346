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
    bad = [r for r in decoded.records if r.error]
    assert [r.image_id for r in bad] == ["cat/broken.jpg"]
    assert "broken.jpg" in bad[0].error
    assert decoded.images.shape == (6, 16, 16, 3)


def test_missing_file_becomes_error_record(image_dir):
    (spec,) = plan_shards(str(image_dir), shard_size=100)
    (image_dir / "dog" / "dog_1.jpg").unlink()
    recs = {r.image_id: r for r in decode_shard(spec, resize_size=8, crop_size=8).records}
    assert "cannot read" in recs["dog/dog_1.jpg"].error
    assert recs["dog/dog_0.png"].error is None


def test_memory_filesystem_round_trip(memory_root):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(buf, format="PNG")
    memory_root.fs.pipe(memory_root.path("ds/a/x.png"), buf.getvalue())
    memory_root.fs.pipe(memory_root.path("ds/b/y.png"), buf.getvalue())
    shards = plan_shards(memory_root.join("ds"), shard_size=10)
    assert shards[0].members == ("a/x.png", "b/y.png")
    decoded = decode_shard(shards[0], resize_size=4, crop_size=4)
    assert [r.error for r in decoded.records] == [None, None]
    assert decoded.records[0].source.startswith("memory://")


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "no image files"),
])
def test_bad_inputs_are_named(tmp_path, make, match):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputError, match=match):
        plan_shards(str(make(tmp_path)), shard_size=4)
