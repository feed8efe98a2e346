"""The layout protocol, the registry, and the input root every layout resolves paths with."""

import inspect

import pytest

from sgcore.io import INPUT_FORMATS, plan_shards, read_shard
from sgcore.io.layouts import ImageFiles, Layout, ParquetTables, Root, ShardSpec, WebDataset
from sgcore.io.layouts.base import hidden, shard_file
from sgcore.io.readers import LAYOUTS
from tests.io.datasets import encode, rgb

_MEMBERS = [name for name, _ in inspect.getmembers(Layout) if not name.startswith("_")]


def test_the_registry_holds_every_layout_under_its_input_format():
    assert INPUT_FORMATS == ("auto", "images", "webdataset", "parquet") == ("auto", *LAYOUTS)
    assert [type(layout) for layout in LAYOUTS.values()] == [ImageFiles, WebDataset, ParquetTables]
    for name, layout in LAYOUTS.items():
        assert layout.name == name
        for member in [*_MEMBERS, "name", "found", "counted"]:
            assert hasattr(layout, member), (name, member)


@pytest.mark.parametrize(("name", "images", "webdataset", "parquet"), [
    ("a/b.jpg", True, False, False),
    ("a/.b.jpg", False, False, False),
    ("a/_b.png", True, False, False),
    ("s-000.tar", False, True, False),
    ("s-000.tar.gz", False, True, False),
    ("_s-000.tar", False, False, False),
    ("t/part-0.parquet", False, False, True),
    ("t/_part-0.parquet", False, False, False),
    ("notes.txt", False, False, False),
])
def test_each_layout_detects_its_own_files(name, images, webdataset, parquet):
    assert [layout.detects(name) for layout in LAYOUTS.values()] == [images, webdataset, parquet]


@pytest.mark.parametrize(("source", "holder"), [
    ("s3://b/in/a.png", None),
    ("s3://b/in/a.tar#s0001.jpg", "webdataset"),
    ("/data/p.parquet#12", "parquet"),
    ("/data/p.parquet#x.png", None),  # not a row: an image file with a # in its name
    ("#12", None),
])
def test_a_source_is_held_by_the_layout_of_its_container(source, holder):
    held = [name for name, layout in LAYOUTS.items() if layout.holds(source)]
    assert held == ([holder] if holder else [])


def test_root_forms_paths_and_urls_once_for_every_layout():
    root = Root.of("memory://sgroot/ds", None)
    assert root.path_of("a/x.png") == "/sgroot/ds/a/x.png"
    assert root.url_of("a/x.png") == "memory://sgroot/ds/a/x.png"
    assert Root(fs=root.fs, path="", url="rel").path_of("x.png") == "x.png"
    root.fs.pipe("/sgroot/ds/a/x.png", b"bytes")
    with root.open("a/x.png") as f:
        assert f.read() == b"bytes"


def test_shard_file_and_hidden():
    assert shard_file(ShardSpec(shard_id="0", kind="webdataset", root="r", members=("a.tar",))) == "a.tar"
    assert shard_file(ShardSpec(shard_id="0", kind="parquet", root="r", members=("p#0",), file="p")) == "p"
    assert hidden("x/_tmp.parquet") and hidden(".x.tar") and not hidden("_dir/x.tar")


def test_read_shard_dispatches_on_the_kind_of_the_spec(memory_root):
    memory_root.fs.pipe(memory_root.path("ds/cat/x.png"), encode(rgb(0)))
    (spec,) = plan_shards(memory_root.join("ds"), shard_size=4)
    assert spec.kind == "images"
    (sample,) = read_shard(spec)
    assert (sample.image_id, sample.label, sample.error) == ("cat/x.png", "cat", None)


@pytest.mark.parametrize(("columns", "input_format", "layout"), [
    (("bytes", "path"), "auto", "images"),            # read_binary_files(include_paths=True)
    (("image", "path"), "auto", "images"),            # read_images(include_paths=True)
    (("__key__", "__url__", "jpg", "cls"), "auto", "webdataset"),
    (("id", "label", "content"), "auto", "parquet"),  # any other batch: a table's rows
    (("bytes", "path", "label"), "auto", "parquet"),
    (("bytes", "path"), "parquet", "parquet"),        # --input-format decides
])
def test_a_batch_is_read_by_the_layout_its_columns_show(columns, input_format, layout):
    from sgcore.io.layouts import Batch
    from sgcore.io.readers import batch_layout

    batch = Batch.of({c: [] for c in columns})
    assert batch_layout(batch, input_format).name == layout


def test_records_are_typed_and_slotted(memory_root):
    from sgcore.io import Record, decode_shard

    memory_root.fs.pipe(memory_root.path("ds/cat/x.png"), encode(rgb(0)))
    (rec,) = decode_shard(plan_shards(memory_root.join("ds"), shard_size=4)[0], resize_size=8,
                          crop_size=8).records
    assert type(rec) is Record and not hasattr(rec, "__dict__")
    assert (rec.image_id, rec.label, rec.index, rec.error) == ("cat/x.png", "cat", 0, None)


@pytest.mark.parametrize(("batch", "options", "error", "message"), [
    ({"__key__": ["s0"], "__url__": ["a.tar"], "image": [b"x"]}, dict(image_column="image"), "ConfigError",
     r"^image_column 'image' is no image field of a WebDataset sample \(jpg, jpeg, png, webp, bmp, or a"),
    ({"id": ["a"], "label": ["cat"]}, dict(id_column="id"), "InputError",
     r"^the batch has no image-bytes column \(binary, or a struct with 'bytes'\); columns: id, label; "
     r"use image_column$"),
    ({"id": ["a"], "img": [b"x"], "raw": [b"y"]}, dict(id_column="id"), "InputError", None),  # img: preferred
    ({"id": ["a"], "x": [b"x"], "y": [b"y"]}, dict(id_column="id"), "InputError",
     r"^the batch has several binary columns \(x, y\); choose one with image_column$"),
    ({"bytes": [b"x"], "path": ["/in/a.png"]}, dict(id_column="name"), "ConfigError",
     r"^id_column 'name' is not a column of the batch; columns: bytes, path$"),
])
def test_a_batch_that_cannot_be_read_is_refused_in_one_line(batch, options, error, message):
    from sgcore import errors
    from sgcore.io.layouts import BatchOptions
    from sgcore.io.readers import read_batch

    if message is None:
        assert [s.data for _, s in read_batch(batch, BatchOptions(**options))] == [b"x"]
        return
    with pytest.raises(getattr(errors, error), match=message):
        list(read_batch(batch, BatchOptions(**options)))
