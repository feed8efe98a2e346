"""sgcore.ray_data: SmoothGradMaps in Ray Data pipelines gives the job's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import result_schema
from sgcore.ray_data import SmoothGradMaps, check_settings
from tests.conftest import write_images

SETTINGS = dict(model="demo", image_size=32, n_samples=4, batch_size=4, seed=3)
GEOMETRY = ["map_height", "map_width", "orig_height", "orig_width", "resized_height",
            "resized_width", "crop_top", "crop_left"]
SAME = ["image_id", "status", "label", "target", "predicted", "seed", "method", "base",
        "n_samples", *GEOMETRY]


def _read_dir(out: Path) -> pd.DataFrame:
    parts = sorted(out.glob("*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def _maps(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {r.image_id: np.asarray(r.saliency, dtype=np.float32).reshape(32, 32)
            for r in df.itertuples() if r.status == "ok"}


def _assert_rows_match(got: pd.DataFrame, job: pd.DataFrame, *, columns=SAME) -> None:
    got = got.sort_values("image_id").reset_index(drop=True)
    job = job.sort_values("image_id").reset_index(drop=True)
    assert list(got.image_id) == list(job.image_id)
    pd.testing.assert_frame_equal(got[columns], job[columns], check_dtype=False)
    a, b = _maps(got), _maps(job)
    assert a.keys() == b.keys() and a
    for key in a:  # both went through float16: equal up to its rounding
        np.testing.assert_allclose(a[key], b[key], rtol=2e-3, atol=1e-3 * float(np.abs(b[key]).max()))


# ------------------------------------------------------------------ fixtures
def make_images(root: Path) -> list[str]:
    """Images in class folders plus a corrupt one; returns the good ones."""
    good = write_images(root, n_per_class=2)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return good


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """The images and the rows the job's worker computes for them (no Ray here)."""
    from sgcore.io import decode_shard, plan_shards, rows_to_table
    from sgcore.pipeline.worker import ShardProcessor

    root = tmp_path_factory.mktemp("raydata") / "images"
    good = make_images(root)
    cfg = JobConfig(input=str(root), output="unused", progress=False, **SETTINGS)
    processor = ShardProcessor(cfg)
    pre = processor.loaded.preprocess
    rows = [row for spec in plan_shards(str(root), shard_size=3)
            for row in processor.compute_rows(decode_shard(spec, **pre.decode_kwargs()))]
    return {"root": root, "good": good,
            "job": rows_to_table(rows, map_shape=pre.map_shape).to_pandas()}


# ------------------------------------------------- the class, called directly
def test_settings_check_on_the_driver_in_one_line():
    with pytest.raises(ConfigError, match=r"^n_samples must be a positive integer; got 0$"):
        SmoothGradMaps.settings(n_samples=0)
    with pytest.raises(ConfigError, match=r"no setting 'modle'; did you mean 'model'\?") as e:
        check_settings(modle="demo")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown model 'resnet5o'"):
        SmoothGradMaps.settings(model="resnet5o")
    with pytest.raises(ConfigError, match="keep_columns must be a list"):
        SmoothGradMaps.settings(keep_columns="path")
    assert SmoothGradMaps.settings(**SETTINGS, root="/x") == {**SETTINGS, "root": "/x"}


def test_a_batch_of_every_kind_becomes_one_row_per_image(data):
    root = data["root"]
    stage = SmoothGradMaps(**SETTINGS, root=str(root))
    rel = data["good"][:3]
    pixels = [np.asarray(Image.open(root / r)) for r in rel]
    values = [pixels[0], (root / rel[1]).read_bytes(), {"bytes": (root / rel[2]).read_bytes()},
              None, np.zeros((5,), np.float32)]
    paths = [str(root / r) for r in rel] + [str(root / "cat/none.png"), "/elsewhere/x.png"]
    column = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        column[i] = v
    batch = {"image": column, "path": np.array(paths)}
    table = stage(batch)
    assert table.schema.equals(result_schema((32, 32)))
    df = table.to_pandas()
    assert list(df.image_id) == [*rel, "cat/none.png", "/elsewhere/x.png"]
    assert list(df.status) == ["ok", "ok", "ok", "error", "error"]
    assert "no image in this row" in df.error[3] and "is not under root" in df.error[4]
    assert list(df.label[:3]) == [r.split("/")[0] for r in rel]
    _assert_rows_match(df[:3], data["job"][data["job"].image_id.isin(rel)])


def test_a_batch_that_fails_becomes_error_rows(data, monkeypatch):
    stage = SmoothGradMaps(**SETTINGS, root=str(data["root"]))

    def boom(decoded):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(stage.processor, "compute_rows", boom)
    paths = [str(data["root"] / r) for r in data["good"][:2]]
    df = stage({"bytes": [Path(p).read_bytes() for p in paths], "path": paths}).to_pandas()
    assert list(df.status) == ["error", "error"]
    assert all(e == "batch failed: RuntimeError: CUDA out of memory" for e in df.error)




def test_a_webdataset_batch_uses_each_rows_own_image_field():
    """As read_webdataset(decoder=None) gives them: fields a sample lacks are NaN."""
    from tests.io.datasets import encode, rgb

    stage = SmoothGradMaps(**SETTINGS, root="/shards", keep_columns=["__key__"])
    nan = float("nan")
    png, jpg = encode(rgb(0, (24, 20))), encode(rgb(1, (40, 20)), "JPEG")

    def column(*values):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    batch = {"__key__": column("s0", "d/s1", "notes", "s3"),
             "__url__": column(*["/shards/a.tar"] * 4),
             "png": column(png, nan, nan, b"not a png"), "jpg": column(nan, jpg, nan, nan),
             "cls": column(b"2", nan, nan, b" "), "json": column(nan, b'{"class": "fox"}', nan, nan),
             "txt": column(nan, nan, b"a sample without an image", nan)}
    table = stage(batch)
    df = table.to_pandas()
    assert list(df.image_id) == ["a.tar/s0", "a.tar/d/s1", "a.tar/s3"]  # the job: no row for "notes"
    assert list(df.source) == ["/shards/a.tar#s0.png", "/shards/a.tar#d/s1.jpg", "/shards/a.tar#s3.png"]
    assert list(df.status) == ["ok", "ok", "error"]
    assert table.column("label").to_pylist() == ["2", "fox", None]  # cls, else json; a blank cls is no label
    assert list(df["__key__"]) == ["s0", "d/s1", "s3"]  # kept columns follow the kept rows


def test_webdataset_keys_with_hash_or_percent_get_the_jobs_escaped_ids(tmp_path):
    """A key ``x#2`` is ``x%232`` here as in the job, so it never meets a repeated ``x``'s ``x#2``."""
    from sgcore.io import plan_shards, read_shard
    from tests.io.datasets import encode, rgb, write_tar

    keys = ["x#2", "a%b", "sp ace"]
    blobs = [encode(rgb(i)) for i in range(3)]
    write_tar(tmp_path / "a.tar", [(k, {"png": b}) for k, b in zip(keys, blobs, strict=True)])
    job = [(s.image_id, s.source) for spec in plan_shards(str(tmp_path), shard_size=8) for s in read_shard(spec)]
    column = np.empty(3, dtype=object)
    column[:] = blobs
    keys_column = np.empty(3, dtype=object)
    keys_column[:] = keys
    urls = np.empty(3, dtype=object)
    urls[:] = [str(tmp_path / "a.tar")] * 3
    df = SmoothGradMaps(**SETTINGS, root=str(tmp_path))({"__key__": keys_column, "__url__": urls,
                                                          "png": column}).to_pandas()
    assert list(zip(df.image_id, df.source, strict=True)) == job
    assert [i for i, _ in job] == ["a.tar/x%232", "a.tar/a%25b", "a.tar/sp ace"]


# ---------------------------- the stage reads a batch through the job's layouts
def _job_rows(src: Path, **settings) -> pd.DataFrame:
    """The rows the job's reader and worker give for ``src`` (one shard, so one model batch order)."""
    from sgcore.io import decode_shard, plan_shards, rows_to_table
    from sgcore.pipeline.worker import ShardProcessor

    cfg = JobConfig(input=str(src), output="unused", progress=False, **SETTINGS, **settings)
    processor = ShardProcessor(cfg)
    pre = processor.loaded.preprocess
    rows = [row for spec in plan_shards(cfg.input, shard_size=100, image_column=cfg.image_column,
                                        label_column=cfg.label_column, id_column=cfg.id_column)
            for row in processor.compute_rows(decode_shard(spec, **pre.decode_kwargs()))]
    return rows_to_table(rows, map_shape=pre.map_shape).to_pandas()


def _assert_same_rows(got: pd.DataFrame, job: pd.DataFrame) -> None:
    """Same images, ids, labels, targets and statuses, and maps equal bit for bit."""
    columns = ["image_id", "status", "label", "target", "predicted", "seed", *GEOMETRY]
    pd.testing.assert_frame_equal(got[columns].reset_index(drop=True), job[columns].reset_index(drop=True),
                                  check_dtype=False)
    assert (job.status == "ok").sum() >= 2
    for a, b in zip(got.saliency, job.saliency, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def _as_batches(table) -> list:
    """A table as Ray Data's map_batches hands it over: pyarrow, numpy (the default), pandas."""
    return [table, {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names},
            table.to_pandas()]


@pytest.mark.parametrize("columns", [
    ("img", "bytes"),   # two binary columns: the job's rule reads img (the stage read bytes)
    ("content",),       # a lone binary column of any name: the job reads it (the stage refused it)
])
def test_a_parquet_table_with_no_image_column_named_gives_the_jobs_rows(data, tmp_path, columns):
    import pyarrow as pa

    root, good = data["root"], data["good"]
    blobs = [(root / r).read_bytes() for r in good]
    values = {"id": good, "label": [r.split("/")[0] for r in good]}
    for k, name in enumerate(columns):  # each image column its own images, so that the choice shows
        values[name] = blobs[k:] + blobs[:k]
    table = pa.table(values)
    src = tmp_path / "table"
    src.mkdir()
    pq.write_table(table, src / "images.parquet", row_group_size=3)
    job = _job_rows(src, id_column="id")
    stage = SmoothGradMaps(**SETTINGS, id_column="id")
    for batch in _as_batches(pq.read_table(src / "images.parquet")):
        _assert_same_rows(stage(batch).to_pandas(), job)


def test_files_that_are_no_images_give_no_row_as_in_the_job(data, tmp_path):
    """read_binary_files reads notes.txt beside the photos; the job never lists it: no row either way."""
    import shutil

    src = tmp_path / "photos"
    shutil.copytree(data["root"], src)
    (src / "notes.txt").write_text("shot in the garden, 2024")
    (src / "cat" / "README").write_bytes(b"no extension")
    job = _job_rows(src)
    paths = sorted(str(p) for p in src.rglob("*") if p.is_file())
    assert len(paths) == len(job) + 2
    batch = {"bytes": [Path(p).read_bytes() for p in paths], "path": paths}
    got = SmoothGradMaps(**SETTINGS, root=str(src), keep_columns=["path"])(batch).to_pandas()
    _assert_same_rows(got, job)  # the corrupt image stays an error row, as in the job
    assert list(got.path) == [p for p in paths if not p.endswith(("notes.txt", "README"))]


def test_a_webdataset_batch_gives_the_jobs_rows(tmp_path):
    """Rows as read_webdataset(decoder=None) gives them (fields a sample lacks are None)."""
    import tarfile

    from tests.io.datasets import tar_samples, write_tar

    src = tmp_path / "shards"
    write_tar(src / "a.tar", [*tar_samples("train/s", 5, varied_sizes=True),
                              ("train/broken", {"png": b"not a png", "cls": b"1"}),
                              ("train/notes", {"txt": b"no image in this sample"})])
    job = _job_rows(src)
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(src / "a.tar") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    fields = sorted({ext for s in samples.values() for ext in s})
    batch = {"__key__": list(samples), "__url__": [str(src / "a.tar")] * len(samples),
             **{f: [s.get(f) for s in samples.values()] for f in fields}}
    got = SmoothGradMaps(**SETTINGS, root=str(src))(batch).to_pandas()
    _assert_same_rows(got, job)
    assert list(got.source) == list(job.source)
    assert set(got.label) == {"0", "1", "2", "class1", "class0"}
