"""A job's output, error rows included, reads cleanly in every documented reader; the README's
Python snippets all run on it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sgcore.config import JobConfig
from tests.conftest import write_images

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def output(ray_local, tmp_path_factory) -> Path:
    """A real job's output: 6 ok rows and one error row (a corrupt JPEG), with --store-full.

    Its replicas run in this process (the output is the same; Ray is here for Ray Data)."""
    from sgcore.pipeline import run_job
    from sgcore.pipeline.inprocess import InProcessJobBackend

    root = tmp_path_factory.mktemp("readers")
    write_images(root / "in", n_per_class=3, size=24)
    (root / "in" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = root / "out"
    result = run_job(JobConfig(input=str(root / "in"), output=str(out), model="resnet18", weights="none",
                               image_size=16, n_samples=2, shard_size=4, store_full=True, progress=False),
                     backend=InProcessJobBackend())
    assert (result.rows, result.ok, result.errors) == (7, 6, 1)
    assert (out / "_manifest.json").exists()
    return out


@pytest.mark.slow  # in CI: the README snippet test below reads the output with ray.data.read_parquet, and
# tests/test_ray_data_pipeline.py::test_read_results_gives_maps_as_tensors reads it with Ray Data
def test_ray_data_reads_every_way_with_error_rows(output):
    import ray

    ds = ray.data.read_parquet(str(output))
    batch = ds.take_batch(10)
    assert batch["saliency"].shape == (7, 16, 16) and sorted(batch["status"]) == ["error"] + ["ok"] * 6
    rows = ds.take(10)
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 1 and "cannot decode" in bad[0]["error"] and not np.asarray(bad[0]["saliency"]).any()
    sums = ds.map_batches(lambda b: {"s": np.abs(b["saliency"].astype(np.float32)).sum(axis=(1, 2)),
                                     "status": b["status"]}).take_all()
    assert sum(r["s"] > 0 for r in sums) == 6
    ok = ds.filter(lambda r: r["status"] == "ok").take_all()
    assert len(ok) == 6 and all(np.asarray(r["saliency"]).shape == (16, 16) for r in ok)


def test_pyarrow_pandas_polars_duckdb_read_the_output_with_error_rows(output):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    table = pq.read_table(str(output))
    assert table.num_rows == 7 and table.column("saliency").null_count == 0
    assert table.column("saliency").combine_chunks().to_numpy_ndarray().shape == (7, 16, 16)
    df = pd.read_parquet(str(output))
    err = df[df.status == "error"].iloc[0]
    assert err.saliency.reshape(err.map_height, err.map_width).shape == (16, 16)
    with pytest.raises(Exception, match=r"_manifest.json|_lease.json"):  # what the README's glob is for
        pl.read_parquet(str(output))
    pdf = pl.read_parquet(f"{output}/part-*.parquet")
    assert pdf.height == 7 and pdf["saliency"].null_count() == 0
    assert pdf.filter(pl.col("status") == "ok").height == 6
    n, errors = duckdb.sql(f"SELECT count(*), count(*) FILTER (status = 'error') "
                           f"FROM '{output}/part-*.parquet'").fetchall()[0]
    assert (n, errors) == (7, 1)
    assert len(duckdb.sql(f"SELECT saliency FROM '{output}/part-*.parquet'").fetchall()[0][0]) == 256


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_every_readme_snippet_runs_on_an_output_with_error_rows(output, tmp_path, monkeypatch):
    import torch

    from sgcore.models import load_model

    snippets = _snippets()
    assert len(snippets) >= 5
    # The two Ray Data pipelines (pretrained weights, an S3 bucket, `...`) are fenced
    # `py`: tests/test_ray_data.py runs the same stage on local images.
    assert len(re.findall(r"```py\n", README.read_text())) == 2
    monkeypatch.chdir(tmp_path)
    # What the kernel's snippet takes as given: a model, images and targets.
    namespace: dict = {"torch": torch, "model": load_model("resnet18", "none", image_size=16).model,
                       "images": torch.rand(2, 3, 16, 16), "targets": torch.tensor([0, 1])}
    for code in snippets:
        code = code.replace("outputs/demo", str(output)).replace("s3://bucket/maps", str(output))
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert Path("map.png").exists()  # the overlay snippet wrote its file
