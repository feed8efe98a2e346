"""python -m jobs.audit and python -m jobs.sweep as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import audit as audit_job
from jobs import sweep as sweep_job
from sgcore.attribution.reliability import expected_agreement
from sgcore.audit import (
    MapSettings,
    load_images,
    map_statistics,
    open_results_dir,
    read_index,
    sweep_grid,
)
from sgcore.models import load_model
from tests.audit.job_output import write_results


def test_audit_job_writes_the_report(demo_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = audit_job.main(["--results", str(demo_results), "--report", str(out), "--sample", "2",
                           "--n-samples", "2", "--steps", "4", "--examples", "1", "--num-actors", "0"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["sanity"]) == 7 and summary["faithfulness"]["images"] == 2
    assert summary["device"] == ["cpu"]  # no --gpus-per-actor: the CPU
    assert summary["localization"]["images"] == 24
    assert (out / "index.html").stat().st_size > 1000


def test_audit_job_reports_missing_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = audit_job.main(["--results", str(tmp_path / "nope"), "--report", str(tmp_path / "r")])
    assert code == 2
    assert "no _manifest.json under" in capsys.readouterr().err


def test_sweep_job_from_results(demo_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code = sweep_job.main(["--results", str(demo_results), "--report", str(out), "--images", "2",
                           "--noise-levels", "0,0.15,0.5", "--sample-counts", "1,4",
                           "--convergence-counts", "1,4,16", "--reference-samples", "32"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid"]["noise_levels"] == [0.0, 0.15, 0.5]
    assert len(summary["grid"]["cells"]) == 6 and len(summary["images"]) == 2
    l2 = [p["relative_l2"] for p in summary["convergence"]["points"]]
    assert l2[0] > l2[-1]
    assert (out / "img" / "grid_00.png").exists() and (out / "img" / "convergence.png").exists()
    # The kernel's reliability estimate beside the measured Spearman (none at n = 1: no split halves).
    points = summary["convergence"]["points"]
    assert points[0]["estimated_reliability"] is None
    est = [p["estimated_reliability"] for p in points[1:]]
    assert 0.0 < est[0] < est[1] < 1.0
    ref = summary["convergence"]["reference_reliability"]
    assert 0.0 < ref <= 1.0
    ref_twin = summary["convergence"]["reference_reproducibility"]
    for p in points[1:]:
        # What both maps' reliability and reproducibility predict (means of per-image figures); the
        # reference is only 32 samples, so it shares much of the map's bias: above the product.
        mean_prediction = expected_agreement(p["estimated_reliability"], p["estimated_reproducibility"], ref, ref_twin)
        assert p["expected_spearman"] == pytest.approx(float(mean_prediction), abs=0.03)
        assert p["expected_spearman"] > p["estimated_reliability"] * ref
    assert "expected_spearman" in (out / "index.html").read_text()


def test_sweep_job_from_an_image_folder(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code = sweep_job.main(["--input", str(demo_root / "images"), "--model", "demo", "--report", str(out),
                           "--images", "1", "--noise-levels", "0.1", "--sample-counts", "2",
                           "--convergence-counts", "1,2", "--reference-samples", "8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["label"] in ("circle", "square", "triangle", "cross")


RUN_SETTINGS = {"aggregate": "square", "base": "input_x_gradient", "noise": "antithetic", "reduction": "max_abs"}
SWEEP_ARGS = ["--images", "2", "--noise-levels", "0.1", "--sample-counts", "3", "--convergence-counts", "1,2",
              "--reference-samples", "4"]


@pytest.fixture(scope="module")
def square_results(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of a run with non-default SmoothGrad settings (8 images)."""
    return write_results(tmp_path_factory.mktemp("square"), demo_root / "images", limit=8, n_samples=2,
                         noise_level=0.3, **RUN_SETTINGS)


def _expected_gini(results: Path, summary: dict, settings: MapSettings) -> float:
    """Mean Gini of the sweep's one cell, recomputed from the images the sweep names."""
    run = open_results_dir(str(results))
    index = read_index(run)
    position = {i: k for k, i in enumerate(index.column("image_id").to_pylist())}
    rows = [position[im["image_id"]] for im in summary["images"]]
    src, seeds = index.column("source").to_pylist(), index.column("seed").to_pylist()
    loaded = load_model("demo", "default")
    x = loaded.preprocess.normalize(torch.from_numpy(load_images([src[r] for r in rows], loaded.preprocess)))
    t = torch.tensor([im["target"] for im in summary["images"]])
    grid = sweep_grid(loaded.model, x, t, noise_levels=(0.1,), sample_counts=(3,), settings=settings,
                      seeds=torch.tensor([seeds[r] for r in rows]))
    return float(map_statistics(grid.maps[0, 0])["gini"].mean())


def test_sweep_uses_the_runs_settings_unless_flags_say_otherwise(square_results: Path, tmp_path: Path) -> None:
    code = sweep_job.main(["--results", str(square_results), "--report", str(tmp_path / "run"), *SWEEP_ARGS])
    assert code == 0
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {k: run["settings"][k] for k in RUN_SETTINGS} == RUN_SETTINGS
    assert run["convergence"]["noise_level"] == 0.3  # the run's noise level
    gini = run["grid"]["cells"][0]["gini"]
    assert gini == pytest.approx(_expected_gini(square_results, run, MapSettings(**RUN_SETTINGS)), rel=1e-6)

    flags = ["--aggregate", "mean", "--base", "gradient", "--noise", "gaussian", "--reduction", "abs_sum"]
    code = sweep_job.main(["--results", str(square_results), "--report", str(tmp_path / "flags"), *SWEEP_ARGS, *flags])
    assert code == 0
    over = json.loads((tmp_path / "flags" / "summary.json").read_text())
    assert over["settings"]["aggregate"] == "mean" and over["settings"]["reduction"] == "abs_sum"
    assert over["grid"]["cells"][0]["gini"] == pytest.approx(_expected_gini(square_results, over, MapSettings()),
                                                             rel=1e-6)
    assert over["grid"]["cells"][0]["gini"] != pytest.approx(gini, rel=1e-3)


def test_sweep_labels_images_as_the_job_does(tmp_path: Path) -> None:
    """The class of an image under --input is its folder's name, as the job's reader has it, not the whole path."""
    from PIL import Image

    from sgcore.io import plan_shards, read_shard

    root = tmp_path / "data"
    (root / "set1" / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "set1" / "cat" / "a.png")
    code = sweep_job.main(["--input", str(root), "--model", "demo", "--report", str(tmp_path / "out"),
                           "--images", "1", "--noise-levels", "0", "--sample-counts", "1",
                           "--convergence-counts", "1", "--reference-samples", "1"])
    assert code == 0
    label = json.loads((tmp_path / "out" / "summary.json").read_text())["images"][0]["label"]
    (sample,) = read_shard(plan_shards(str(root), shard_size=8)[0])
    assert label == sample.label == "cat"


def test_headline_reads_the_summary_and_skips_missing_sections():
    from jobs.audit import headline

    summary = {
        "images": {"ok": 240, "rows": 240, "errors": 0},
        "sanity": [{"layer": "classifier", "spearman_abs": 0.7786}, {"layer": "features.0", "spearman_abs": 0.1907}],
        "localization": {"ground_truth": "boxes", "mass_in_mask": 0.6712, "mask_area": 0.3561},
        "faithfulness": {"deletion_auc": 0.3279, "deletion_auc_random": 0.4995, "insertion_auc": 0.9116,
                         "insertion_auc_random": 0.8411},
    }
    assert headline(summary) == (
        "audited 240 of 240 images | sanity: spearman_abs 0.78 (classifier randomized) -> 0.19 (fully randomized) | "
        "saliency inside the boxes 0.67 vs their area 0.36 | deletion AUC 0.33 vs 0.50 random, insertion 0.91 vs 0.84")
    assert headline({"images": {"ok": 10, "rows": 12, "errors": 2}, "sanity": [], "localization": None}) == (
        "audited 10 of 12 images (2 error rows: see the report)")
    with_reliability = {"images": {"ok": 240, "rows": 240, "errors": 0},
                        "reliability": {"below": 22, "images": 240, "threshold": 0.8, "quantiles": {"p50": 0.9096}},
                        "compare": {"significant": 3, "judged": 240}}
    assert headline(with_reliability) == (
        "audited 240 of 240 images | 22 of 240 maps below reliability 0.8 (median 0.91) | "
        "compare: 3 of 240 maps changed beyond Monte Carlo noise")
