"""A tar larger than --shard-size through the real job: several parts, the same rows as one shard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sgcore.config import JobConfig
from sgcore.pipeline import run_job
from tests.io.datasets import tar_samples, write_tar

pytestmark = pytest.mark.usefixtures("job_backend")

SMALL = dict(model="resnet18", weights="none", image_size=32, n_samples=4, batch_size=16, progress=False)


def _read(out) -> pd.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).set_index("image_id")


def test_a_50_sample_tar_at_shard_size_16_is_4_parts_with_the_rows_of_one_shard(tmp_path):
    write_tar(tmp_path / "wds" / "big.tar", tar_samples("s", 50))
    split, whole = tmp_path / "split", tmp_path / "whole"
    result = run_job(JobConfig(input=str(tmp_path / "wds"), output=str(split), shard_size=16, **SMALL))
    run_job(JobConfig(input=str(tmp_path / "wds"), output=str(whole), shard_size=64, **SMALL))
    assert sorted(p.name for p in split.glob("part-*.parquet")) == [
        f"part-00000-000{k}.parquet" for k in range(4)]
    assert [p.name for p in whole.glob("part-*.parquet")] == ["part-00000.parquet"]
    a, b = _read(split), _read(whole)
    assert (result.rows, result.shards) == (50, 4) and len(a) == 50 and a.index.is_unique
    assert sorted(a.index) == sorted(b.index) == [f"big.tar/s{i:04d}" for i in range(50)]
    b = b.loc[a.index]
    assert (a.seed == b.seed).all() and (a.source == b.source).all() and (a.label == b.label).all()
    assert (a.status == "ok").all()
    # Deterministic noise (contract 2): the same maps, however the tar was cut.
    np.testing.assert_array_equal(np.stack(a.saliency.to_numpy()), np.stack(b.saliency.to_numpy()))
    manifest = json.loads((split / "_manifest.json").read_text())
    assert {k: v["images"] for k, v in manifest["shards"].items()} == {
        "00000-0000": 16, "00000-0001": 16, "00000-0002": 16, "00000-0003": 2}
    # A resume of the split output finds every part committed.
    again = run_job(JobConfig(input=str(tmp_path / "wds"), output=str(split), shard_size=16, **SMALL))
    assert (again.rows, again.shards_skipped) == (50, 4) and sorted(p.name for p in split.glob("part-*.parquet")) == [
        f"part-00000-000{k}.parquet" for k in range(4)]
