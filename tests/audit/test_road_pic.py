"""ROAD (Rong et al. 2022) against Quantus' imputation, PIC (Kapishnikov et al. 2019) against
the authors' ``saliency`` package, and what both must show on a model that reads one region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.audit.pic import PicSkipped, pic_curve, random_mask
from sgcore.audit.road import noisy_linear_imputation, road


def test_imputation_matches_quantus() -> None:
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    rng = np.random.default_rng(0)
    x = rng.random((3, 12, 10))
    removed = rng.random((12, 10)) < 0.4
    removed[0, 0] = removed[11, 9] = removed[0, 9] = True  # corners: neighbours renormalized
    expected = perturb.noisy_linear_imputation(x.copy(), np.flatnonzero(removed.ravel()), noise=0.0)
    np.testing.assert_allclose(noisy_linear_imputation(x, removed, noise=0.0), expected, atol=1e-12)


def test_imputation_keeps_kept_pixels_and_fills_smoothly() -> None:
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float64)
    plane = np.stack([xx + 2 * yy])  # linear: the neighbour mean reproduces it inside
    removed = np.zeros((16, 16), bool)
    removed[5:9, 6:10] = True
    out = noisy_linear_imputation(plane, removed, noise=0.0)
    np.testing.assert_allclose(out, plane, atol=1e-9)
    noisy = noisy_linear_imputation(plane, removed, noise=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(noisy[:, ~removed], plane[:, ~removed])
    assert 0.2 < np.std(noisy[:, removed] - plane[:, removed]) < 0.8


class _Region(nn.Module):
    """Class 1 wins when channel 0 is bright in the top-left quarter: a model that reads one region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.5) * 8
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_road_morf_falls_where_the_model_looks_and_lerf_stays() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 0.2
    x[:, 0, :8, :8] += 1.0
    targets = torch.ones(4, dtype=torch.int64)
    good = torch.zeros(4, 16, 16)
    good[:, :8, :8] = 1.0 + torch.rand(4, 8, 8, generator=g)
    model = _Region()
    faithful = road(model, x, targets, good, fractions=(0.1, 0.25, 0.5), seed=3)
    flipped = road(model, x, targets, -good + 3.0, fractions=(0.1, 0.25, 0.5), seed=3)
    s, f = faithful.summary(), flipped.summary()
    assert s["road_gap"] > 0.2 and f["road_gap"] < -0.2  # LeRF above MoRF only for the faithful map
    assert faithful.morf[:, -1].max() < 0.6 and faithful.lerf[:, 0].min() > 0.9
    again = road(model, x, targets, good, fractions=(0.1, 0.25, 0.5), seed=3)
    np.testing.assert_array_equal(again.morf, faithful.morf)  # seeded noise
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\)"):
        road(model, x, targets, good[:, :8])


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.float64)
    img[10:30, 12:34] = [240, 30, 30]
    img[14:18, 16:30] = [20, 200, 20]
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    sal = np.zeros((48, 48))
    sal[10:30, 12:34] = 1
    return img, sal + 0.1 * rng.random((48, 48))


def _predict(x: np.ndarray) -> np.ndarray:  # softmax-like score of "red object"
    return 1 / (1 + np.exp(-(x[:, 10:30, 12:34, 0].astype(float).mean(axis=(1, 2)) - 150) / 20))


def test_pic_matches_the_authors_compute_pic_metric() -> None:
    pic = pytest.importorskip("saliency.metrics.pic")
    if not hasattr(np, "trapz"):  # the package calls np.trapz, gone in numpy 2
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    img, sal = _scene(0)
    mask = random_mask(48, 48, 0.01, seed=1)
    thresholds = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75]
    for saliency in (sal, np.random.default_rng(2).random((48, 48))):
        expected = pic.compute_pic_metric(img, saliency, mask, _predict, saliency_thresholds=thresholds,
                                          min_pred_value=0.0)
        got = pic_curve(img, saliency, mask, _predict, thresholds=thresholds)
        np.testing.assert_allclose(got.y, expected.curve_y, atol=1e-12)
        assert got.auc == pytest.approx(expected.auc, abs=1e-12)


def test_pic_ranks_a_faithful_map_above_a_random_one_and_skips_undefined_images() -> None:
    img, sal = _scene(0)
    mask = random_mask(48, 48, 0.01, seed=1)
    good = pic_curve(img, sal, mask, _predict).auc
    bad = pic_curve(img, np.random.default_rng(3).random((48, 48)), mask, _predict).auc
    assert good > bad + 0.05
    with pytest.raises(PicSkipped, match="below min_pred_value"):
        pic_curve(img, sal, mask, lambda x: np.full(len(x), 0.1), min_pred_value=0.5)
    with pytest.raises(PicSkipped, match="fully blurred image scores"):
        pic_curve(img, sal, mask, lambda x: np.full(len(x), 0.7))


def test_audit_reports_road_and_pic(demo_results, tmp_path) -> None:  # noqa: ANN001
    import json

    from sgcore.audit import AuditConfig, run_audit

    config = AuditConfig(results=str(demo_results), report=str(tmp_path), sanity=False, strategies=False,
                         sample=2, steps=4, n_samples=4, examples=0, num_actors=0)
    summary = run_audit(config, log=lambda m: None)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    road, pic = on_disk["road"], on_disk["pic"]
    assert road["images"] == pic["images"] == 2
    assert len(road["morf_curve"]) == len(road["fractions"]) == 9
    assert 0.0 <= road["road_morf_auc"] <= 0.8 and 0.0 <= road["road_lerf_auc"] <= 0.8
    assert road["road_gap"] == pytest.approx(road["road_lerf_auc"] - road["road_morf_auc"])
    assert pic["sic_scored"] >= 1 and 0.0 <= pic["sic_auc"] <= 1.0
    assert summary["road"]["road_gap"] == road["road_gap"]
    assert "ROAD and PIC" in (tmp_path / "index.html").read_text()
