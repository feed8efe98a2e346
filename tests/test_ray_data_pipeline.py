"""sgcore.ray_data in real Ray Data pipelines on a local Ray: the job's rows from every reader."""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.ray_data import SettingsError, SmoothGradMaps, read_results
from tests.test_ray_data import (
    SAME,
    SETTINGS,
    _assert_rows_match,
    _job_rows,
    _maps,
    _read_dir,
    make_images,
)

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local) -> dict:
    """The images of tests/test_ray_data.py and the job's output for them."""
    from sgcore.pipeline import run_job

    base = tmp_path_factory.mktemp("raydata-pipeline")
    root = base / "images"
    good = make_images(root)
    job_out = base / "job"
    run_job(JobConfig(input=str(root), output=str(job_out), shard_size=3, progress=False,
                      **SETTINGS))
    return {"root": root, "good": good, "job_out": job_out, "job": _read_dir(job_out)}


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


@pytest.mark.slow  # in CI: tests/test_ray_data.py gives each format's rows in process
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


@pytest.mark.slow  # in CI: tests/test_ray_data.py gives each format's rows in process
def test_read_parquet_and_read_binary_files_read_what_the_job_reads(data, tmp_path):
    """No image column named: a lone ``content`` column is the job's image column; ``notes.txt``
    beside the photos is no image: read_binary_files reads it, and neither side gives it a row."""
    import shutil

    import ray

    root, good = data["root"], data["good"]
    src = tmp_path / "table"
    src.mkdir()
    pq.write_table(pa.table({"id": good, "content": [(root / r).read_bytes() for r in good]}),
                   src / "images.parquet", row_group_size=2)
    got = _run(ray.data.read_parquet(str(src)), tmp_path / "out", **SETTINGS, id_column="id")
    _assert_rows_match(got, _job_rows(src, id_column="id"))

    photos = tmp_path / "photos"
    shutil.copytree(root, photos)
    (photos / "notes.txt").write_text("shot in the garden, 2024")
    got = _run(ray.data.read_binary_files(str(photos), include_paths=True), tmp_path / "files",
               **SETTINGS, root=str(photos))
    _assert_rows_match(got, _job_rows(photos), columns=[*SAME, "source", "error"])
    assert len(got) == len(good) + 1  # the corrupt image is an error row; notes.txt no row


def test_read_results_gives_maps_as_tensors(data):
    ds = read_results(str(data["job_out"]), ok_only=True)
    batch = next(iter(ds.iter_batches(batch_format="numpy", batch_size=100)))
    assert batch["saliency"].shape == (len(data["good"]), 32, 32)
    assert batch["saliency"].dtype == np.float16
    assert set(batch["status"]) == {"ok"}
    assert read_results(str(data["job_out"])).count() == len(data["good"]) + 1


@pytest.mark.slow  # in CI: tests/test_ray_data.py::test_a_webdataset_batch_gives_the_jobs_rows
def test_read_webdataset_gives_the_jobs_rows(tmp_path):
    """Images of different sizes, png and jpg fields, cls and json labels, a corrupt image
    and a sample without one: Ray Data keeps the bytes (decoder=None), the stage does the rest."""
    import ray

    from sgcore.pipeline import run_job
    from tests.io.datasets import tar_samples, write_tar

    src = tmp_path / "shards"
    write_tar(src / "a.tar", [*tar_samples("train/s", 5, varied_sizes=True),
                              ("train/broken", {"png": b"not a png", "cls": b"1"}),
                              ("train/notes", {"txt": b"no image in this sample"})])
    write_tar(src / "b.tar", tar_samples("t", 2, seed=10, varied_sizes=True))
    run_job(JobConfig(input=str(src), output=str(tmp_path / "job"), progress=False, **SETTINGS))
    job = _read_dir(tmp_path / "job")
    assert len(job) == 8 and "a.tar/train/s0001" in set(job.image_id)  # the job's WebDataset ids

    ds = ray.data.read_webdataset(str(src), decoder=None)
    got = _run(ds, tmp_path / "out", **SETTINGS, root=str(src))
    _assert_rows_match(got, job, columns=[*SAME, "source", "error", "target_name", "score"])
    assert set(got.label) == {"0", "1", "2", "class0", "class1"}  # from cls and from json
    assert list(got[got.image_id == "a.tar/train/broken"].status) == ["error"]


def _stage_actors() -> int:
    """Actors of SmoothGradMaps stages this Ray has ever started (dead ones included)."""
    from ray._private import state

    return sum("SmoothGradMaps" in a["ActorClassName"] for a in state.actors().values())


def _plain_dict_stage(data: dict, **settings):
    import ray

    ds = ray.data.read_binary_files(str(data["root"]), include_paths=True)
    return ds.map_batches(SmoothGradMaps, fn_constructor_kwargs={**SETTINGS, **settings},
                          compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5, batch_size=3)


@pytest.mark.parametrize("settings, message", [
    (dict(n_samples=0), r"^SmoothGradMaps: n_samples must be a positive integer; got 0$"),
    (dict(model="nope"), r"^SmoothGradMaps: unknown model 'nope'; choose one of list_models\(\)"),
    (dict(aggregate="x"), r"^SmoothGradMaps: aggregate must be one of mean, square, var; got 'x'$"),
    (dict(modle="demo"), r"^SmoothGradMaps has no setting 'modle'; did you mean 'model'\?"),
])
def test_a_bad_plain_dict_fails_on_the_driver_in_one_line(data, tmp_path, capfd, settings, message):
    """fn_constructor_kwargs=dict(...), not SmoothGradMaps.settings: still checked on the
    driver when the pipeline starts, before any actor; Ray Data calls it the user's error."""
    capfd.readouterr()
    before = _stage_actors()
    with pytest.raises(SettingsError, match=message) as e:
        _plain_dict_stage(data, **settings).write_parquet(str(tmp_path / "out"))
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    # What the user sees last: the one line, not chained to Ray's SystemException.
    assert traceback.format_exception(e.value)[-1] == f"sgcore.ray_data.SettingsError: {e.value}\n"
    assert e.value.__cause__ is None
    assert _stage_actors() == before  # no actor was started
    printed = "".join(capfd.readouterr())
    assert "internal code" not in printed and "ActorDiedError" not in printed
    assert not list((tmp_path / "out").glob("*.parquet"))  # nothing written


def test_without_the_driver_check_each_actor_fails_with_the_same_line(data, tmp_path):
    """Where Ray Data lacks the planner rule, the actor's own check is the last line the user sees."""
    from ray.data._internal.logical.optimizers import get_logical_ruleset

    from sgcore.ray_data import _CheckSmoothGradMaps

    get_logical_ruleset().remove(_CheckSmoothGradMaps)
    try:
        with pytest.raises(Exception) as e:
            _plain_dict_stage(data, n_samples=0).write_parquet(str(tmp_path / "out"))
    finally:
        get_logical_ruleset().add(_CheckSmoothGradMaps)
    assert type(e.value).__name__ == "ActorDiedError"
    assert str(e.value).splitlines()[-1] == (
        "sgcore.errors.ConfigError: SmoothGradMaps: n_samples must be a positive integer; got 0")
