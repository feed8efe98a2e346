"""sgcore.ray_data: SmoothGradMaps in Ray Data pipelines gives the job's rows."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import result_schema
from sgcore.ray_data import SmoothGradMaps, check_settings, read_results
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
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local) -> dict:
    """Images in class folders plus a corrupt one, and the job's rows for them."""
    from sgcore.pipeline import run_job

    base = tmp_path_factory.mktemp("raydata")
    root = base / "images"
    good = write_images(root, n_per_class=2)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    job_out = base / "job"
    run_job(JobConfig(input=str(root), output=str(job_out), shard_size=3, progress=False,
                      **SETTINGS))
    return {"base": base, "root": root, "good": good, "job_out": job_out,
            "job": _read_dir(job_out)}


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


# ------------------------------------------------------------ in Ray Data
def _run(ds, out: Path, *, actors: int = 1, **settings) -> pd.DataFrame:
    import ray

    mapped = ds.map_batches(SmoothGradMaps, fn_constructor_kwargs=SmoothGradMaps.settings(**settings),
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=0.5,
                            batch_size=3)
    mapped.write_parquet(str(out))
    return _read_dir(out)


def test_read_images_to_parquet_gives_the_jobs_rows(data, tmp_path):
    import ray

    root = data["root"]
    ds = ray.data.read_images([str(root / r) for r in data["good"]], include_paths=True)
    got = _run(ds, tmp_path / "out", **SETTINGS, root=str(root))
    job = data["job"][data["job"].status == "ok"]
    _assert_rows_match(got, job, columns=[*SAME, "source", "target_name", "score"])
    # The same columns and types as the job's parts (shard is null: Ray Data has none).
    schema = pq.read_schema(next((tmp_path / "out").glob("*.parquet")))
    job_schema = pq.read_schema(next(data["job_out"].glob("part-*.parquet")))
    assert schema.names == job_schema.names
    for name in schema.names:
        assert str(schema.field(name).type) == str(job_schema.field(name).type), name
    assert got.shard.isna().all()


def test_read_binary_files_with_a_corrupt_file_and_two_actors(data, tmp_path):
    import ray

    root = data["root"]
    ds = ray.data.read_binary_files(str(root), include_paths=True)
    one = _run(ds, tmp_path / "one", **SETTINGS, root=str(root))
    _assert_rows_match(one, data["job"])  # the corrupt file included
    bad = one[one.image_id == "cat/broken.jpg"]
    assert list(bad.status) == ["error"] and "cannot decode image" in bad.error.iloc[0]
    two = _run(ds, tmp_path / "two", actors=2, **SETTINGS, root=str(root))
    a, b = _maps(one), _maps(two)
    assert a.keys() == b.keys() and len(a) == len(data["good"])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_read_parquet_of_image_bytes_gives_the_jobs_rows(data, tmp_path):
    import ray

    from sgcore.pipeline import run_job

    root = data["root"]
    table = pa.table({"id": data["good"], "label": [r.split("/")[0] for r in data["good"]],
                      "image": [(root / r).read_bytes() for r in data["good"]]})
    src = tmp_path / "table"
    src.mkdir()
    pq.write_table(table, src / "images.parquet", row_group_size=2)
    run_job(JobConfig(input=str(src), output=str(tmp_path / "job"), id_column="id",
                      label_column="label", image_column="image", progress=False, **SETTINGS))
    got = _run(ray.data.read_parquet(str(src)), tmp_path / "out", **SETTINGS, id_column="id",
               label_column="label", image_column="image")
    _assert_rows_match(got, _read_dir(tmp_path / "job"))


def test_read_webdataset_gives_the_jobs_rows(data, tmp_path):
    import ray

    from sgcore.pipeline import run_job

    root = data["root"]
    src = tmp_path / "tars"
    src.mkdir()
    with tarfile.open(src / "shard-0.tar", "w") as tar:
        for i, rel in enumerate(data["good"]):
            for name, blob in ((f"s{i:03d}.png", _png(root / rel)), (f"s{i:03d}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    run_job(JobConfig(input=str(src), output=str(tmp_path / "job"), progress=False, **SETTINGS))
    job = _read_dir(tmp_path / "job")
    got = _run(ray.data.read_webdataset(str(src)), tmp_path / "out", **SETTINGS, root=str(src))
    _assert_rows_match(got, job, columns=[*SAME, "source"])
    assert set(got.label) == {"0", "1"}


def _png(path: Path) -> bytes:
    """The image as PNG (Ray's WebDataset decoder reads .png and .jpg members alike)."""
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_read_results_gives_maps_as_tensors(data):
    ds = read_results(str(data["job_out"]), ok_only=True)
    batch = next(ds.iter_batches(batch_format="numpy", batch_size=100))
    assert batch["saliency"].shape == (len(data["good"]), 32, 32)
    assert batch["saliency"].dtype == np.float16
    assert set(batch["status"]) == {"ok"}
    assert read_results(str(data["job_out"])).count() == len(data["good"]) + 1
