"""Storage that stays down, and models that cannot run: failures that come fast and say why.

Real Ray workers read through ``flaky://`` (sgcore.io._flaky), whose outages are set
by storage options, so they hold in every worker process alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sgcore.config import JobConfig
from sgcore.errors import ConfigError, ModelError
from sgcore.io import DecodedShard, Record
from sgcore.models import load_model
from sgcore.pipeline import JobFailed, run_job
from sgcore.pipeline.worker import ShardProcessor
from tests.conftest import write_images

SMALL = dict(model="resnet18", weights="none", image_size=32, n_samples=2, shard_size=2,
             batch_size=2, progress=False)


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))],
                     ignore_index=True)


@pytest.mark.usefixtures("job_backend")
def test_outage_past_the_retry_budget_fails_the_shard_and_the_rerun_redoes_it(tmp_path):
    ids = sorted(write_images(tmp_path / "in", n_per_class=2, size=24))
    down = {"fail_fraction": 1.0, "until": time.time() + 3600, "error": "timeout", "ops": ["cat_file"]}
    cfg = dict(input=f"flaky://{tmp_path}/in", output=str(tmp_path / "out"), max_retries=1,
               storage_retry_s=0.2, **SMALL)
    result = run_job(JobConfig(storage_options=down, **cfg))
    out = tmp_path / "out"
    # Not one committed error row: every shard failed (twice), the output is not complete.
    assert not result.success and result.shards_failed == 2 and result.ok == 0
    assert not (out / "_SUCCESS").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_shards"] == ["00000", "00001"]
    for entry in manifest["shards"].values():
        assert entry["status"] == "failed" and entry["attempts"] == 2
        assert "still failing after" in entry["failures"][0] and "TimeoutError" in entry["failures"][0]
    # The store is back: the same command redoes exactly those shards.
    again = run_job(JobConfig(storage_options={"fail_fraction": 0.0}, **cfg))
    df = _rows(out)
    assert again.success and sorted(df.image_id) == ids and (df.status == "ok").all()
    assert (out / "_SUCCESS").exists()


@pytest.mark.usefixtures("job_backend")
def test_a_short_outage_within_the_budget_loses_nothing(tmp_path):
    ids = sorted(write_images(tmp_path / "in", n_per_class=2, size=24))
    # Down for the first 4 s of the run (longer than the old fixed 3 s of retries).
    outage = {"fail_fraction": 1.0, "until": time.time() + 4.0, "error": "slowdown", "ops": ["cat_file"]}
    result = run_job(JobConfig(input=f"flaky://{tmp_path}/in", output=str(tmp_path / "out"),
                               storage_options=outage, storage_retry_s=30, max_retries=0, **SMALL))
    df = _rows(tmp_path / "out")
    assert result.success and sorted(df.image_id) == ids and (df.status == "ok").all()


@pytest.mark.usefixtures("job_backend")
def test_a_store_down_for_good_stops_the_job_within_the_bound_naming_shards_and_cause(tmp_path):
    write_images(tmp_path / "in", n_per_class=6, size=24)  # 12 images, 6 shards
    down = {"fail_fraction": 1.0, "until": time.time() + 3600, "error": "server", "ops": ["cat_file"]}
    t0 = time.perf_counter()
    with pytest.raises(JobFailed) as e:
        run_job(JobConfig(input=f"flaky://{tmp_path}/in", output=str(tmp_path / "out"),
                          storage_options=down, storage_retry_s=0.3, storage_outage_s=1.0,
                          max_retries=3, **SMALL))
    took = time.perf_counter() - t0
    text = str(e.value)
    assert text.startswith("storage unavailable for "), text
    assert "over --storage-outage-s 1" in text and "failed (00000" in text
    assert "cause: read flaky://" in text and "still failing after" in text
    assert "rerun the same command once the store is back" in text and "\n" not in text
    # 6 shards x 4 attempts x 0.3 s would be 7 s of retries alone; the bound stops it sooner
    assert took < 60
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_shards"]
    assert not any(s["status"] == "running" for s in manifest["shards"].values())


def test_image_size_the_model_cannot_take_fails_in_the_driver_with_its_own_message(image_dir, tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"model 'demo' fails on its input \(a batch of shape \(1, 3, 1, 1\), "
                                         r"float32, --image-size 1\): RuntimeError: .*Output size is too small"):
        run_job(JobConfig(input=str(image_dir), output=str(out), model="demo", image_size=1,
                          n_samples=2, progress=False))
    assert time.perf_counter() - t0 < 20  # no Ray, no retries
    assert not out.exists()  # a run that never started leaves nothing behind


class _OnlyOneAtATime(torch.nn.Module):
    """Runs on a batch of one, fails on more: passes the driver's probe, fails in a replica."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.shape[0]}x192 and 1x192)")
        return self.fc(x.flatten(1))


def test_a_deterministic_model_error_in_a_replica_is_a_model_error_not_a_retry():
    loaded = load_model("demo", "none", image_size=8)
    loaded.model = loaded.network = _OnlyOneAtATime()  # the network is what a replica prepares
    proc = ShardProcessor(JobConfig(input="-", output="-", n_samples=2, image_size=8), loaded=loaded)
    records = [Record(image_id=f"{i}.png", source=f"{i}.png", label=None, index=i, error=None, geometry=None)
               for i in range(2)]
    decoded = DecodedShard(shard_id="00000", images=np.zeros((2, 8, 8, 3), np.uint8), records=records)
    with pytest.raises(ModelError, match=r"fails on its input \(a batch of shape \(2, 3, 8, 8\), float32, "
                                         r"--image-size 8\): RuntimeError: mat1 and mat2 shapes"):
        proc.compute_rows(decoded)
    assert issubclass(ModelError, ConfigError)  # the driver stops the job at its first occurrence

