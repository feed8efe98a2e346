"""The audit's reliability section, the sweep's estimate beside its measurement, and --compare against noise."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from sgcore.audit import AuditConfig, MapSettings, convergence, run_audit
from sgcore.audit.compare import ImageChange, compare_results
from sgcore.audit.reliability import figures_at_risk, reliability_summary
from sgcore.audit.results import load_images
from sgcore.errors import ConfigError
from sgcore.models import load_model
from sgcore.results import open_results_dir
from tests.audit.job_output import write_results


def _rows(values: list[float | None], labels: list[str]) -> list[dict]:
    return [{"image_id": f"{lab}/{i}.png", "label": lab, "reliability": v, "n_samples": 50}
            for i, (v, lab) in enumerate(zip(values, labels, strict=True))]


def test_the_distribution_counts_maps_below_the_threshold_per_class() -> None:
    rows = _rows([0.95, 0.9, 0.5, None, 0.85, 0.7, 0.99], ["a", "a", "a", "a", "b", "b", "b"])
    info = reliability_summary(rows, threshold=0.8)
    assert info is not None
    assert info["images"] == 6 and info["missing"] == 1 and info["below"] == 2
    assert info["below_share"] == pytest.approx(2 / 6)
    assert info["quantiles"]["min"] == pytest.approx(0.5) and info["quantiles"]["p50"] == pytest.approx(0.875)
    assert sum(info["histogram"]["counts"]) == 6
    by = {c["name"]: c for c in info["classes"]}
    assert by["a"]["images"] == 3 and by["a"]["below"] == 1 and by["b"]["below"] == 1
    assert [c["name"] for c in info["classes"]] == ["a", "b"]  # least reliable (10th percentile) first
    assert [r["reliability"] for r in info["least_reliable"][:3]] == pytest.approx([0.5, 0.7, 0.85])
    assert all(math.isfinite(r["reliability"]) for r in info["least_reliable"])  # the row without one is not listed
    assert reliability_summary(_rows([None, None], ["a", "b"])) is None


def test_figures_at_risk_recompute_localization_on_the_reliable_maps_and_list_flagged_clusters() -> None:
    rows = _rows([0.95, 0.5, 0.9, 0.6], ["a", "a", "b", "b"])
    for r, mass in zip(rows, [0.8, 0.2, 0.6, 0.1], strict=True):
        r["mass_in_mask"] = mass
    for r, (k, flagged) in zip(rows, [(0, False), (1, True), (0, False), (1, True)], strict=True):
        r.update(strategy_class=r["label"], strategy=k, strategy_flagged=flagged)
    risks = {r["figure"]: r for r in figures_at_risk(rows, 0.8, heavy_ids=["a/0.png", "b/3.png"], heavy_note="x")}
    loc = risks["localization: mass in the object"]
    assert loc["images"] == 4 and loc["below"] == 2
    assert loc["value"] == pytest.approx(0.425) and loc["value_reliable"] == pytest.approx(0.7)
    assert risks["strategy a #1 (flagged)"]["below"] == 1 and risks["strategy a #1 (flagged)"]["images"] == 1
    assert "strategy a #0 (flagged)" not in risks  # unflagged clusters are not conclusions of the report
    heavy = risks["sanity and faithfulness sample"]
    assert heavy["images"] == 2 and heavy["below"] == 1 and heavy["note"] == "x"


def test_a_change_is_significant_only_beyond_the_maps_own_noise() -> None:
    def change(rho: float, ra: float, rb: float) -> ImageChange:
        return ImageChange(image_id="x", label="a", spearman=rho, ssim=math.nan, predicted_a=0, predicted_b=0,
                           reliability_a=ra, reliability_b=rb)

    assert change(0.75, 0.9, 0.9).noise_floor == pytest.approx(0.81)
    assert change(0.78, 0.9, 0.9).significant(0.06) is False  # within the floor's margin
    assert change(0.70, 0.9, 0.9).significant(0.06) is True
    assert change(0.99, 1.0, 1.0).significant(0.0) is True  # exact maps: any change counts
    assert change(0.2, math.nan, 0.9).significant() is None  # no estimate: not judged
    # Twins that share the reduction's bias agree at their reproducibility, above the product.
    twins = ImageChange(image_id="x", label="a", spearman=0.78, ssim=math.nan, predicted_a=0, predicted_b=0,
                        reliability_a=0.9, reliability_b=0.9, reproducibility_a=0.86, reproducibility_b=0.86)
    assert twins.noise_floor == pytest.approx(0.86)
    assert twins.significant(0.06) is True  # 0.78 is within the product's margin, not within the twins'


def test_convergence_reports_the_estimate_beside_the_measurement(demo_root: Path) -> None:
    """On the trained demo model, in the calibrated range (n >= 16), the estimates predict the measurement."""
    loaded = load_model("demo")
    sources = sorted(str(p) for p in (demo_root / "images").rglob("*.png"))[::6][:4]
    x = loaded.preprocess.normalize(torch.from_numpy(load_images(sources, loaded.preprocess, {})))
    with torch.no_grad():
        t = loaded.model(x).argmax(dim=1)
    conv = convergence(loaded.model, x, t, sample_counts=(1, 16, 64), reference_samples=512,
                       seeds=torch.tensor([1, 2, 3, 4]), settings=MapSettings())
    assert conv.estimated.shape == (3, 4) and conv.reference_reliability.shape == (4,)
    assert np.isnan(conv.estimated[0]).all()  # one sample has no split halves
    est = conv.estimated[1:].mean(axis=1)
    assert est[0] < est[1] < 1.0
    # The measured Spearman with the (finite) reference is what the two estimates predict.
    np.testing.assert_allclose(conv.expected_spearman()[1:].mean(axis=1), conv.spearman[1:].mean(axis=1), atol=0.05)


@pytest.fixture(scope="module")
def runs_at_32(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """At n = 32 (the reliability estimate is calibrated from n = 16): the trained demo model with seeds 0
    and 1, and an untrained one."""
    trained = [write_results(tmp_path_factory.mktemp(f"results_n32_seed{seed}"), demo_root / "images",
                             n_samples=32, seed=seed) for seed in (0, 1)]
    torch.manual_seed(0)  # DemoNet() draws its init from the global RNG
    untrained = write_results(tmp_path_factory.mktemp("results_n32_random"), demo_root / "images", weights="none",
                              n_samples=32)
    return trained[0], trained[1], untrained


def test_the_audit_reports_the_runs_reliability_and_judges_changes_against_noise(
    runs_at_32: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    results, other_seed, untrained = runs_at_32
    base = dict(results=str(results), sanity=False, faithfulness=False, strategies=False, examples=0,
                num_actors=0)
    summary = run_audit(AuditConfig(report=str(tmp_path / "same"), compare=str(other_seed), **base),
                        log=lambda m: None)
    # The distribution is the parts' own reliability column, read here with pyarrow.
    table = pq.ParquetDataset(str(results)).read(columns=["status", "reliability"])
    stored = np.sort(table.filter(pc.equal(table["status"], "ok"))["reliability"].to_numpy())
    info = summary["reliability"]
    assert info["images"] == len(stored) == 24
    assert info["quantiles"]["min"] == pytest.approx(float(stored[0]))
    assert info["quantiles"]["p50"] == pytest.approx(float(np.median(stored)))
    assert info["below"] == int((stored < info["threshold"]).sum())
    assert {f["figure"] for f in info["figures"]} == {"localization: mass in the object"}
    with open(tmp_path / "same" / "per_image.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert sorted(float(r["reliability"]) for r in csv_rows) == pytest.approx(stored.tolist())
    assert {r["n_samples"] for r in csv_rows} == {"32"}
    page = (tmp_path / "same" / "index.html").read_text()
    assert 'id="reliability"' in page and "img/reliability.png" in page
    assert any(f["section"] == "reliability" for f in summary["findings"])

    # The same model with independent noise: its maps differ, but within their own noise.
    same = summary["compare"]
    assert same["judged"] == 24 and same["spearman"] < 0.99
    print("same model, seeds 0 and 1:", same["spearman"], same["noise_floor"], same["significant"])
    assert same["spearman"] == pytest.approx(same["noise_floor"], abs=0.1)
    assert same["significant_share"] <= 0.1
    # An untrained model: most maps changed beyond the noise.
    other = run_audit(AuditConfig(report=str(tmp_path / "random"), compare=str(untrained), **base),
                      log=lambda m: None)["compare"]
    print("trained vs untrained:", other["spearman"], other["noise_floor"], other["significant"])
    assert other["significant_share"] >= 0.8
    assert json.loads((tmp_path / "random" / "summary.json").read_text())["compare"]["significant"] == other["significant"]


def test_runs_that_drew_the_same_noise_are_compared_paired(runs_at_32: tuple[Path, Path, Path]) -> None:
    """Same seed and settings: the noise is the same, so an unchanged model's maps are identical (none
    flagged) and every change is the model's (floor 1); other seeds stay judged against noise."""
    results, other_seed, untrained = runs_at_32
    itself = compare_results(open_results_dir(str(results)), open_results_dir(str(results)))
    assert len(itself) == 24 and all(c.paired and c.noise_floor == 1.0 and c.significant() is False for c in itself)
    untrained_rows = compare_results(open_results_dir(str(results)), open_results_dir(str(untrained)))
    assert all(c.paired for c in untrained_rows)
    assert sum(bool(c.significant()) for c in untrained_rows) >= 0.9 * len(untrained_rows)
    seeds = compare_results(open_results_dir(str(results)), open_results_dir(str(other_seed)))
    assert not any(c.paired for c in seeds) and all(c.noise_floor < 1.0 for c in seeds)


def test_bad_threshold_and_margin_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"reliability_threshold must be a number in \[0, 1\]; got 1.5"):
        AuditConfig(results="r", report="o", reliability_threshold=1.5)
    with pytest.raises(ConfigError, match=r"compare_margin must be a number in \[0, 1\]; got -0.1"):
        AuditConfig(results="r", report="o", compare_margin=-0.1)
