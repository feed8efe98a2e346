"""Every input layout: image prefixes, WebDataset tars, Parquet tables; globs, lists, labels."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgcore.errors import InputError
from sgcore.io import decode_shard, plan_shards, read_labels, read_shard, read_source
from tests.io.datasets import (
    encode,
    rgb,
    tar_samples,
    write_messy_prefix,
    write_parquet,
    write_tar,
)


def _records(shards, **kw):
    out = []
    for s in shards:
        out.extend(decode_shard(s, resize_size=16, crop_size=16, **kw).records)
    return out


# ------------------------------------------------------------------- images
def test_messy_prefix_one_record_per_image_broken_ones_flagged(tmp_path):
    expected = write_messy_prefix(tmp_path)
    shards = plan_shards(str(tmp_path), shard_size=5)
    decoded = [decode_shard(s, resize_size=16, crop_size=16) for s in shards]
    recs = {r.image_id: r for d in decoded for r in d.records}
    pixels = {r.image_id: d.images[r.index].astype(int)
              for d in decoded for r in d.records if r.index >= 0}
    assert sorted(recs) == sorted(expected)  # README.txt, meta.json skipped, nothing else
    for image_id, err in expected.items():
        if err is None:
            assert recs[image_id].error is None and recs[image_id].index >= 0, image_id
            assert pixels[image_id].shape == (16, 16, 3), image_id
        else:
            assert err in recs[image_id].error and image_id in recs[image_id].error, image_id
    assert recs["good/exif.jpg"].geometry.orig_height == 30  # portrait after EXIF transpose
    # The pixels, not just "no error": a palette whose only index is transparent
    # composites to white; 16-bit 40000 is 40000 / 65535 · 255 = 155.6; grey stays grey.
    assert (pixels["good/palette.png"] == 255).all()
    assert np.abs(pixels["good/deep16.png"] - 40000 / 65535 * 255).max() <= 1
    grey = pixels["good/gray.png"]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (pixels["good/tiny.png"] == (5, 6, 7)).all()


def test_glob_and_list_inputs_ids_relative_to_common_folder(tmp_path):
    for name in ("a/cat/x.png", "a/dog/y.png", "b/cat/z.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode(rgb(0)))
    globbed = plan_shards(f"{tmp_path}/*/cat/*.png", shard_size=10)
    assert globbed[0].members == ("a/cat/x.png", "b/cat/z.png")
    listed = plan_shards(f"{tmp_path}/a/dog/y.png,{tmp_path}/b", shard_size=10)
    assert listed[0].members == ("a/dog/y.png", "b/cat/z.png")
    assert listed[0].root == str(tmp_path)
    assert plan_shards([f"{tmp_path}/a/dog/y.png", f"{tmp_path}/b"], shard_size=10) == listed
    with pytest.raises(InputError, match=r"no files match .*/\*/fox/\*.png"):
        plan_shards(f"{tmp_path}/*/fox/*.png", shard_size=10)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_labels_file_maps_path_to_label(image_dir, tmp_path, ext):
    table = pa.table({"path": ["cat/cat_0.png", str(image_dir / "dog" / "dog_1.jpg")],
                      "label": ["tabby", "terrier"]})
    labels = tmp_path / f"labels.{ext}"
    if ext == "csv":
        labels.write_text("path,label\n" + "\n".join(f"{p},{la}" for p, la in zip(*table.columns, strict=True)))
    else:
        pq.write_table(table, labels)
    assert read_labels(str(labels))["cat/cat_0.png"] == "tabby"
    shards = plan_shards(str(image_dir), shard_size=3, labels=str(labels))
    got = {s.image_id: s.label for sh in shards for s in read_shard(sh)}
    assert got["cat/cat_0.png"] == "tabby" and got["dog/dog_1.jpg"] == "terrier"
    assert got["dog/dog_0.png"] is None  # a labels file replaces folder names


@pytest.mark.parametrize("content, match", [
    (None, "labels file .* does not exist"),
    ("only_one_column\nx\n", r"labels file .*labels.csv needs a path column \(one of image_id, path, .*\) and a "
                              r"label column \(one of label, class, .*\); found columns: only_one_column$"),
])
def test_bad_labels_file_is_named(image_dir, tmp_path, content, match):
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match):
        plan_shards(str(image_dir), shard_size=3, labels=str(path))


# --------------------------------------------------------------- webdataset
def test_webdataset_tars_stream_into_samples_grouped_by_key(tmp_path):
    samples = tar_samples("s", 4)
    samples.insert(2, ("s_meta", {"txt": b"no image: skipped"}))
    samples.append(("s_bad", {"jpg": b"not a jpeg", "cls": b"2"}))
    write_tar(tmp_path / "train" / "shard-000.tar", samples)
    write_tar(tmp_path / "train" / "shard-001.tar", tar_samples("t", 2, seed=10))
    shards = plan_shards(str(tmp_path), shard_size=100)
    assert [(s.shard_id, s.kind, s.members) for s in shards] == [
        ("00000", "webdataset", ("train/shard-000.tar",)),
        ("00001", "webdataset", ("train/shard-001.tar",)),
    ]
    recs = _records(shards)
    ids = [r.image_id for r in recs]
    assert ids == [f"train/shard-000.tar/s{i:04d}" for i in range(4)] + [
        "train/shard-000.tar/s_bad", "train/shard-001.tar/t0000", "train/shard-001.tar/t0001"]
    by_id = {r.image_id: r for r in recs}
    assert by_id["train/shard-000.tar/s0000"].label == "0"  # .cls
    assert by_id["train/shard-000.tar/s0001"].label == "class1"  # .json
    assert by_id["train/shard-000.tar/s0001"].source == f"{tmp_path}/train/shard-000.tar#s0001.jpg"
    assert "not a recognised image format" in by_id["train/shard-000.tar/s_bad"].error
    assert sum(r.error is None for r in recs) == 6
    again = [r.image_id for r in _records(plan_shards(str(tmp_path), shard_size=100))]
    assert again == ids  # stable ids


def test_tar_that_cannot_be_opened_is_one_error_row(tmp_path):
    write_tar(tmp_path / "a.tar", tar_samples("s", 2))
    (tmp_path / "b.tar").write_bytes(b"garbage, not a tar at all" * 40)
    recs = _records(plan_shards(str(tmp_path), shard_size=10))
    assert [r.image_id for r in recs] == ["a.tar/s0000", "a.tar/s0001", "b.tar"]
    assert recs[2].error.startswith(f"cannot read {tmp_path}/b.tar: ReadError")


@pytest.mark.parametrize("extra", [0, 100, 600, 3000])  # block boundary, in a header, in data
def test_truncated_tar_keeps_the_samples_before_the_damage(tmp_path, extra):
    write_tar(tmp_path / "full.tar", tar_samples("s", 6))
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "full.tar").unlink()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + extra])
    recs = _records(plan_shards(str(tmp_path), shard_size=10))
    assert recs[-1].image_id == "cut.tar"
    assert recs[-1].error.startswith(f"stopped after {len(recs) - 1} sample(s) reading {tmp_path}/cut.tar")
    assert 1 <= sum(r.error is None for r in recs) == len(recs) - 1 < 6


def test_limit_over_tars_reads_only_what_it_needs(tmp_path):
    write_tar(tmp_path / "a.tar", tar_samples("s", 3))
    write_tar(tmp_path / "b.tar", tar_samples("t", 3))
    write_tar(tmp_path / "c.tar", tar_samples("u", 3))
    shards = plan_shards(str(tmp_path), shard_size=10, limit=4)
    assert [(s.members, s.count) for s in shards] == [(("a.tar",), 3), (("b.tar",), 1)]
    assert [r.image_id for r in _records(shards)] == ["a.tar/s0000", "a.tar/s0001", "a.tar/s0002", "b.tar/t0000"]


def test_labels_file_applies_to_tar_samples(tmp_path):
    write_tar(tmp_path / "a.tar", tar_samples("s", 2))
    (tmp_path / "labels.csv").write_text("image_id,label\na.tar/s0001,zebra\n")
    shards = plan_shards(str(tmp_path / "a.tar"), shard_size=10, labels=str(tmp_path / "labels.csv"))
    assert [s.label for s in read_shard(shards[0])] == [None, "zebra"]


# ------------------------------------------------------------------ parquet
def test_parquet_binary_column_split_by_row_groups_with_stable_ids(tmp_path):
    images = [encode(rgb(i)) for i in range(10)]
    images[4] = b"broken"
    write_parquet(tmp_path / "t" / "data.parquet", images, labels=[f"c{i % 2}" for i in range(10)],
                  row_group_size=3)
    (tmp_path / "t" / "_SUCCESS").write_bytes(b"")
    shards = plan_shards(str(tmp_path / "t"), shard_size=4)
    assert [(s.shard_id, s.row_groups, s.first_row, s.stop_row) for s in shards] == [
        ("00000-0000", (0, 1), 0, 6), ("00000-0001", (2, 3), 6, 10)]
    recs = _records(shards)
    assert [r.image_id for r in recs] == [f"data.parquet#{i}" for i in range(10)]
    assert [r.label for r in recs][:3] == ["c0", "c1", "c0"]
    assert "not a recognised image format" in recs[4].error
    assert recs[7].source == f"{tmp_path}/t/data.parquet#7"
    limited = plan_shards(str(tmp_path / "t"), shard_size=4, limit=5)
    assert [r.image_id for r in _records(limited)] == [f"data.parquet#{i}" for i in range(5)]


def test_parquet_hugging_face_struct_and_class_label_names(tmp_path):
    images = [encode(rgb(i)) for i in range(3)] + [None]
    write_parquet(tmp_path / "hf.parquet", images, labels=[0, 2, -1, 1], hf=True)
    recs = _records(plan_shards(str(tmp_path / "hf.parquet"), shard_size=100))
    assert [r.label for r in recs] == ["cat", "fox", None, "dog"]
    assert [r.error is None for r in recs] == [True, True, True, False]
    assert "no image bytes in row 3" in recs[3].error


def test_parquet_id_and_named_columns(tmp_path):
    table = pa.table({"uid": ["x1", "x2"], "pixels": [encode(rgb(0)), encode(rgb(1))],
                      "thumb": [b"a", b"b"], "species": ["owl", "emu"]})
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"several binary columns \(pixels, thumb\); choose one with --image-column"):
        plan_shards(str(tmp_path), shard_size=10, input_format="parquet", image_column=None)
    shards = plan_shards(str(tmp_path), shard_size=10, image_column="pixels", label_column="species",
                         id_column="uid")
    recs = _records(shards)
    assert [(r.image_id, r.label, r.error) for r in recs] == [("x1", "owl", None), ("x2", "emu", None)]
    with pytest.raises(InputError, match=r"--image-column 'photo' is not in .*d.parquet; columns: uid, pixels"):
        plan_shards(str(tmp_path), shard_size=10, image_column="photo")
    with pytest.raises(InputError, match=r"--image-column 'species' in .* must be binary or a struct"):
        plan_shards(str(tmp_path), shard_size=10, image_column="species")


def test_parquet_that_cannot_be_opened_is_one_error_row(tmp_path):
    write_parquet(tmp_path / "a.parquet", [encode(rgb(0))])
    (tmp_path / "b.parquet").write_bytes(b"PAR1 definitely not parquet")
    recs = _records(plan_shards(str(tmp_path), shard_size=10))
    assert [r.image_id for r in recs] == ["a.parquet#0", "b.parquet"]
    assert recs[1].error.startswith(f"cannot read {tmp_path}/b.parquet:")


# ------------------------------------------------------- detection, sources
def test_mixed_layouts_are_refused_with_the_fix(tmp_path):
    (tmp_path / "x.png").write_bytes(encode(rgb(0)))
    write_tar(tmp_path / "a.tar", tar_samples("s", 1))
    with pytest.raises(InputError, match=r"mixes layouts: 1 image file\(s\), 1 .tar shard\(s\), 0 .parquet "
                                         r"file\(s\); choose one with --input-format images\|webdataset\|parquet"):
        plan_shards(str(tmp_path), shard_size=10)
    assert plan_shards(str(tmp_path), shard_size=10, input_format="images")[0].members == ("x.png",)
    assert plan_shards(str(tmp_path), shard_size=10, input_format="webdataset")[0].members == ("a.tar",)
    with pytest.raises(InputError, match=r"no .parquet files under .*; found 2 other file\(s\)"):
        plan_shards(str(tmp_path), shard_size=10, input_format="parquet")


@pytest.mark.parametrize("kwargs, match", [
    ({"input_format": "zip"}, r"input_format must be one of auto, images, webdataset, parquet; got 'zip'"),
    ({"shard_size": 0}, r"shard_size must be a positive integer; got 0"),
    ({"limit": -1}, r"limit must be a positive integer; got -1"),
])
def test_bad_plan_arguments(image_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_shards(str(image_dir), **{"shard_size": 3, **kwargs})


def test_read_source_returns_the_original_bytes_in_every_layout(tmp_path):
    samples = tar_samples("s", 2)
    write_tar(tmp_path / "a.tar", samples)
    images = [encode(rgb(i)) for i in range(3)]
    write_parquet(tmp_path / "p.parquet", images, hf=True)
    (tmp_path / "x.png").write_bytes(images[0])
    assert read_source(f"{tmp_path}/a.tar#s0001.jpg") == samples[1][1]["jpg"]
    assert read_source(f"{tmp_path}/p.parquet#2") == images[2]
    assert read_source(str(tmp_path / "x.png")) == images[0]
    (tmp_path / "a.tar#s0001.jpg").write_bytes(images[1])  # a file named like a member is a file
    assert read_source(f"{tmp_path}/a.tar#s0001.jpg") == images[1]
    (tmp_path / "p.parquet#0").write_bytes(images[2])
    assert read_source(f"{tmp_path}/p.parquet#0") == images[2]
    with pytest.raises(InputError, match=r"'nope.jpg' is not a member of .*a.tar"):
        read_source(f"{tmp_path}/a.tar#nope.jpg")
    with pytest.raises(InputError, match=r"p.parquet has no row 7"):
        read_source(f"{tmp_path}/p.parquet#7")
