"""The whole job end to end: real files, real Parquet; on a local Ray (the first test), and in
process in CI for the rest (``job_backend``: on Ray too under ``slow``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sgcore import smoothgrad
from sgcore.attribution import prepare_model, reduce_channels
from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import decode_image
from sgcore.models import load_model
from sgcore.pipeline import run_job
from sgcore.seeds import image_seed

SMALL = dict(model="resnet18", weights="none", image_size=32, n_samples=4, shard_size=3,
             batch_size=4, progress=False)


def _read(out) -> pd.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


@pytest.mark.usefixtures("job_backend")
def test_one_row_per_image_corrupt_file_is_an_error_row(image_dir, tmp_path):
    out = tmp_path / "out"
    result = run_job(JobConfig(input=str(image_dir), output=str(out), **SMALL))
    df = _read(out)
    assert len(df) == 7 and df.image_id.is_unique  # 6 images + 1 corrupt; notes.txt skipped
    bad = df[df.status == "error"]
    assert list(bad.image_id) == ["cat/broken.jpg"] and "cannot decode image" in bad.error.iloc[0]
    ok = df[df.status == "ok"]
    assert ok.error.isna().all() and ok.saliency.notna().all()
    # Every ok row says how converged its map is; an error row has no map to rate.
    assert ok.reliability.between(0.0, 1.0).all() and bad.reliability.isna().all()
    assert ok.reproducibility.between(0.0, 1.0).all() and bad.reproducibility.isna().all()
    assert set(ok.label) == {"cat", "dog"}
    assert (result.rows, result.ok, result.errors, result.shards) == (7, 6, 1, 3)
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS", "_lease.json", "_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["totals"]["rows"] == 7
    assert {s["status"] for s in manifest["shards"].values()} == {"committed"}
    assert manifest["versions"]["torch"] and manifest["config"]["model"] == "resnet18"
    assert "storage_options" not in manifest["config"]
    table = pq.read_table(out / "part-00000.parquet")
    assert str(table.schema.field("saliency").type).startswith("extension<arrow.fixed_shape_tensor")
    assert table.schema.field("reliability").type == pa.float32()
    assert table.schema.field("reproducibility").type == pa.float32()


@pytest.mark.usefixtures("job_backend")
def test_maps_equal_the_kernel_called_directly(image_dir, tmp_path):
    out = tmp_path / "out"
    run_job(JobConfig(input=str(image_dir), output=str(out), **SMALL))
    df = _read(out).set_index("image_id")
    loaded = load_model("resnet18", "none", image_size=32)
    # weights "none" must still be the same network in every process: seeded init.
    row = df.loc["dog/dog_0.png"]
    arr, _ = decode_image((image_dir / "dog/dog_0.png").read_bytes(),
                          resize_size=loaded.preprocess.resize_size, crop_size=32)
    x = loaded.preprocess.normalize(torch.from_numpy(arr[None]))
    result = smoothgrad(loaded.model.eval(), x, torch.tensor([int(row.target)]), n_samples=4,
                        seeds=torch.tensor([image_seed(0, "dog/dog_0.png")]), return_reliability=True)
    maps = result.maps
    # Maps agree to float16 storage; the bootstrap figure then to a few hundredths.
    assert abs(float(row.reliability) - float(result.reliability[0])) < 0.05
    assert abs(float(row.reproducibility) - float(result.reproducibility[0])) < 0.05
    expected = maps.abs().sum(1)[0].numpy()
    got = row.saliency.reshape(32, 32).astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-3 * float(np.abs(expected).max()))
    assert int(row.seed) == image_seed(0, "dog/dog_0.png")


@pytest.mark.usefixtures("job_backend")
def test_rerun_resumes_and_a_different_config_is_refused(image_dir, tmp_path):
    out = tmp_path / "out"
    cfg = JobConfig(input=str(image_dir), output=str(out), **SMALL)
    run_job(cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    first = json.loads((out / "_manifest.json").read_text())
    again = run_job(cfg)
    assert again.shards_skipped == 3 and again.rows == 7
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == stamps
    # the rerun is appended to the record; the first run's entry, the shards it
    # wrote and the output's versions stay as they were
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(first["runs"]) == 1 and len(manifest["runs"]) == 2
    assert manifest["runs"][0] == first["runs"][0]
    assert first["runs"][0]["seconds"] > 0 and first["runs"][0]["actors"] >= 1
    assert first["runs"][0]["rows"] == 7 and first["runs"][0]["shards"] == 3
    assert first["runs"][0]["worker_max_rss_mb"] > 0 and first["runs"][0]["versions"]["torch"]
    assert manifest["runs"][1]["shards"] == 0 and manifest["runs"][1]["rows"] == 0
    assert manifest["runs"][1]["shards_skipped"] == 3 and manifest["runs"][1]["actors"] == 0
    assert manifest["shards"] == first["shards"]
    assert all(e["run"] == 1 and e["seconds"] > 0 for e in manifest["shards"].values())
    assert (manifest["created"], manifest["git_revision"], manifest["versions"]) == (
        first["created"], first["git_revision"], first["versions"])
    totals = manifest["totals"]
    assert (totals["rows"], totals["ok"], totals["errors"], totals["shards"]) == (7, 6, 1, 3)
    assert totals["seconds"] >= first["totals"]["seconds"] and totals["runs"] == 2
    assert totals["actors"] == first["totals"]["actors"] >= 1
    assert totals["worker_max_rss_mb"] == first["totals"]["worker_max_rss_mb"] > 0
    assert manifest["status"] == "complete" and (out / "_SUCCESS").exists()
    with pytest.raises(ConfigError, match="holds results of another config.*n_samples: 4 -> 5"):
        run_job(JobConfig(input=str(image_dir), output=str(out), **{**SMALL, "n_samples": 5}))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == stamps


@pytest.mark.usefixtures("job_backend")
def test_checkpoint_of_another_model_stops_the_job_at_once(image_dir, tmp_path):
    # The demo net's weights for a resnet18: every replica would fail to start.
    from sgcore.models import DEMO_WEIGHTS_PATH

    out = tmp_path / "out"
    cfg = JobConfig(input=str(image_dir), output=str(out), **{**SMALL, "weights": str(DEMO_WEIGHTS_PATH)})
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"does not fit resnet18") as e:
        run_job(cfg)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    assert time.perf_counter() - t0 < 20  # in the driver, before Ray starts
    assert not out.exists()  # a run that never started leaves nothing behind
    # Nothing was written, so the fixed command is not refused as "another config".
    run_job(JobConfig(input=str(image_dir), output=str(out), **SMALL))
    assert (out / "_SUCCESS").exists() and len(_read(out)) == 7


@pytest.mark.usefixtures("job_backend")
def test_output_that_is_a_file_is_refused(image_dir, tmp_path):
    out = tmp_path / "results.parquet"
    out.write_bytes(b"not a folder")
    with pytest.raises(ConfigError, match=r"--output .*results.parquet is a file; give a directory"):
        run_job(JobConfig(input=str(image_dir), output=str(out), **SMALL))
    assert out.read_bytes() == b"not a folder"


# Each setting away from its default, so that a flag dropped on the way to the
# kernel changes the maps: "sum" needs signed maps (square and var are >= 0,
# where it equals abs_sum). The trained demo net, unlike a randomly initialised
# resnet (no biases after folding, so positively homogeneous), makes integrated
# gradients depend on ig_steps and bf16 differ from float32.
FLAGS = [
    dict(aggregate="var", noise="sobol", base="integrated_gradients", ig_steps=4,
         reduction="max_abs", precision="fp32"),
    dict(aggregate="mean", noise="antithetic", base="guided_backprop", reduction="sum",
         precision="bf16"),
]


@pytest.mark.usefixtures("job_backend")
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: f"{f['aggregate']}-{f['base']}")
def test_method_flags_reach_the_kernel(image_dir, tmp_path, flags):
    out = tmp_path / "out"
    run_job(JobConfig(input=str(image_dir), output=str(out),
                      **{**SMALL, "model": "demo", "weights": "default", **flags}))
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    assert len(rows) == 6
    method = {"var": "vargrad", "mean": "smoothgrad"}[flags["aggregate"]]
    assert {(r["method"], r["base"], r["n_samples"]) for r in rows} == {(method, flags["base"], 4)}
    config = json.loads((out / "_manifest.json").read_text())["config"]
    assert {k: config[k] for k in flags} == flags
    # The kernel called directly on the same tensors, seeds and targets, with
    # the model prepared as the actor prepares it (BatchNorm folded).
    loaded = load_model("demo", "default", image_size=32)
    pre = loaded.preprocess
    model = prepare_model(loaded.model.eval(), fold_bn=True)
    pixels = np.stack([
        decode_image((image_dir / r["image_id"]).read_bytes(), resize_size=pre.resize_size,
                     crop_size=pre.crop_size, interpolation=pre.interpolation)[0] for r in rows])
    x = pre.normalize(torch.from_numpy(pixels))
    seeds = torch.tensor([image_seed(0, r["image_id"]) for r in rows])
    assert seeds.tolist() == [r["seed"] for r in rows]
    maps = smoothgrad(model, x, torch.tensor([r["target"] for r in rows]), n_samples=4,
                      seeds=seeds, aggregate=flags["aggregate"], base=flags["base"],
                      noise=flags["noise"], ig_steps=flags.get("ig_steps", 32),
                      precision=flags["precision"])
    expected = reduce_channels(maps, flags["reduction"]).numpy()
    got = np.stack([np.asarray(r["saliency"], dtype=np.float32).reshape(32, 32) for r in rows])
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-3, atol=1e-3 * float(np.abs(e).max()))


@pytest.mark.slow
def test_pipeline_benchmark_reports_both_rates(tmp_path):
    from sgcore.bench.pipeline import run_pipeline_bench, to_markdown

    result = run_pipeline_bench(images=8, n_samples=2, shard_size=4, repeats=1,
                                data_dir=str(tmp_path))
    assert result["images"] == 8 and result["kernel_images_per_s"] > 0
    assert 0 < result["ratio"] <= result["ratio_steady"] * 1.5
    assert "ratio job / kernel" in to_markdown(result)


def test_fault_injection_is_an_explicit_option(tmp_path, monkeypatch):
    from sgcore.pipeline._faults import InjectedFault, maybe_inject, parse_faults

    # The environment variable of older versions is not read any more.
    monkeypatch.setenv("SGCORE_INJECT_FAULTS", "raise:x")
    assert JobConfig(input="i", output="o").inject_faults is None
    assert parse_faults("exit:crash-me@0, raise:poison") == [("exit", "crash-me", 0), ("raise", "poison", None)]
    maybe_inject("raise:poison@1", ["a/poison.png"], attempt=0)  # another attempt: nothing
    with pytest.raises(InjectedFault, match=r"injected fault \(raise:poison\) on attempt 2"):
        maybe_inject("raise:poison", ["a/poison.png"], attempt=2)
    with pytest.raises(ConfigError, match=r"inject_faults items must be exit:<marker>.*; got 'boom:x'"):
        run_job(JobConfig(input=str(tmp_path), output=str(tmp_path / "out"), inject_faults="boom:x"))
    assert not (tmp_path / "out").exists()
