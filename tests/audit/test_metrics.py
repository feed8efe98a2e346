"""Map metrics against hand-computed cases and reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgcore.audit.metrics import (
    auc,
    border_mask,
    border_share,
    entropy,
    gini,
    mask_area,
    mass_in_mask,
    minmax,
    pointing_game,
    rankdata,
    spearman,
    ssim,
)

# --------------------------------------------------------------------------- entropy


def test_entropy_hand_cases() -> None:
    uniform = np.ones((4, 4))
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 5.0
    half = np.zeros((4, 4))
    half[0, :2] = 1.0  # two pixels of equal mass: log(2) nats
    assert entropy(uniform) == pytest.approx(1.0)
    assert entropy(one_hot) == pytest.approx(0.0)
    assert entropy(half, normalized=False) == pytest.approx(math.log(2))
    assert entropy(half) == pytest.approx(math.log(2) / math.log(16))
    # Sign does not matter: magnitudes are the distribution.
    assert entropy(-half) == pytest.approx(entropy(half))


def test_entropy_batch_matches_singles(rng: np.random.Generator) -> None:
    maps = rng.random((5, 8, 9))
    batch = entropy(maps)
    assert batch.shape == (5,)
    np.testing.assert_allclose(batch, [entropy(m) for m in maps])


def test_entropy_all_zero_map_is_uniform() -> None:
    assert entropy(np.zeros((3, 3))) == pytest.approx(1.0)


def test_entropy_matches_scipy(rng: np.random.Generator) -> None:
    stats = pytest.importorskip("scipy.stats")
    m = rng.normal(size=(7, 6))
    p = np.abs(m).ravel()
    assert entropy(m, normalized=False) == pytest.approx(stats.entropy(p / p.sum()))


# --------------------------------------------------------------------------- gini


def test_gini_hand_cases() -> None:
    assert gini(np.ones((4, 4))) == pytest.approx(0.0)
    one = np.zeros((4, 4))
    one[3, 3] = 2.0
    assert gini(one) == pytest.approx(1.0 - 1.0 / 16)
    # Values 0, 0, 1, 1 -> sorted c = (0, 0, 1, 1); sum (2k - 5) c_k = 1 + 3 = 4; 4 / (4 * 2) = 0.5.
    assert gini(np.array([[0.0, 1.0], [0.0, -1.0]])) == pytest.approx(0.5)
    assert gini(np.zeros((3, 3))) == 0.0


def test_gini_matches_pairwise_definition(rng: np.random.Generator) -> None:
    m = rng.random((5, 5))
    x = np.abs(m).ravel()
    n = len(x)
    # Mean absolute difference form: G = sum_ij |x_i - x_j| / (2 n^2 mean) = ... / (2 n sum).
    expected = np.abs(x[:, None] - x[None, :]).sum() / (2 * n * x.sum())
    assert gini(m) == pytest.approx(expected)


# --------------------------------------------------------------------------- border


def test_border_mask_band() -> None:
    mask = border_mask(8, 8, width_fraction=0.25)  # band of 2 px
    assert mask.sum() == 64 - 16
    assert not mask[2:6, 2:6].any()
    assert mask[0].all() and mask[:, 7].all()


def test_border_share_hand_cases() -> None:
    centre = np.zeros((8, 8))
    centre[3:5, 3:5] = 1.0
    edge = np.zeros((8, 8))
    edge[0, :] = 1.0
    uniform = np.ones((8, 8))
    assert border_share(centre, width_fraction=0.25) == pytest.approx(0.0)
    assert border_share(edge, width_fraction=0.25) == pytest.approx(1.0)
    assert border_share(uniform, width_fraction=0.25) == pytest.approx(48 / 64)
    mixed = centre + edge  # 4 px inside, 8 px on the band, equal values
    assert border_share(mixed, width_fraction=0.25) == pytest.approx(8 / 12)


@pytest.mark.parametrize("fraction", [0.0, 0.5, -0.1])
def test_border_mask_rejects_bad_width(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"width_fraction must be in \(0, 0.5\); got"):
        border_mask(8, 8, width_fraction=fraction)


# --------------------------------------------------------------------------- spearman


def test_rankdata_ties_match_scipy(rng: np.random.Generator) -> None:
    stats = pytest.importorskip("scipy.stats")
    x = rng.integers(0, 5, size=40).astype(float)
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x))
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_spearman_hand_cases() -> None:
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert spearman(a, a**3) == pytest.approx(1.0)  # monotone transform: same ranks
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones((4, 4))))


def test_spearman_matches_scipy(rng: np.random.Generator) -> None:
    stats = pytest.importorskip("scipy.stats")
    a = rng.normal(size=(3, 6, 7))
    b = a + rng.normal(size=a.shape)
    b[0, :2] = 0.0  # ties
    rho = spearman(a, b)
    for i in range(3):
        assert rho[i] == pytest.approx(stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic)


def test_spearman_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"maps must have the same shape; got \(1, 4\) and \(1, 6\)"):
        spearman(np.ones((2, 2)), np.ones((2, 3)))


# --------------------------------------------------------------------------- ssim


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. (2004) written out pixel by pixel with an explicit 11x11 Gaussian window."""
    x = np.arange(-5, 6)
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for r in range(a.shape[0] - 10):
        for c in range(a.shape[1] - 10):
            pa, pb = a[r : r + 11, c : c + 11], b[r : r + 11, c : c + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one_and_matches_reference(rng: np.random.Generator) -> None:
    a = rng.random((16, 15))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(_ssim_reference(a, b), rel=1e-9)
    assert ssim(a, b) < 0.95


def test_ssim_matches_skimage(rng: np.random.Generator) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    a = rng.random((24, 20))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)
    ref = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_ssim_rejects_small_maps() -> None:
    with pytest.raises(ValueError, match=r"maps must be at least 11x11 for SSIM; got 8x8"):
        ssim(np.ones((8, 8)), np.ones((8, 8)))


def test_ssim_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match=r"data_range must be > 0; got 0"):
        ssim(np.ones((12, 12)), np.ones((12, 12)), data_range=0)


def test_minmax() -> None:
    out = minmax(np.array([[2.0, 4.0], [6.0, 10.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])
    assert (minmax(np.full((3, 3), 7.0)) == 0).all()


# --------------------------------------------------------------------------- masks


def test_mass_in_mask_and_area_hand_cases() -> None:
    m = np.zeros((4, 4))
    m[0, 0] = 3.0
    m[3, 3] = -1.0  # magnitude counts
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 255
    assert mass_in_mask(m, mask) == pytest.approx(0.75)
    assert mask_area(mask) == pytest.approx(4 / 16)
    # A map blind to the object scores the mask's area.
    assert mass_in_mask(np.ones((4, 4)), mask) == pytest.approx(mask_area(mask))


def test_pointing_game_hand_cases() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, 1:3] = True
    hit = np.zeros((5, 5))
    hit[2, 2] = 1.0
    miss = np.zeros((5, 5))
    miss[4, 4] = 1.0
    near = np.zeros((5, 5))
    near[3, 3] = 1.0  # one pixel diagonally off the mask
    assert pointing_game(hit, mask) is True
    assert pointing_game(miss, mask) is False
    assert pointing_game(near, mask) is False
    assert pointing_game(near, mask, tolerance=1) is True
    assert pointing_game(-hit * 5, mask) is True  # by magnitude
    batch = pointing_game(np.stack([hit, miss]), np.stack([mask, mask]))
    assert batch.tolist() == [True, False]


def test_pointing_game_rejects_negative_tolerance() -> None:
    with pytest.raises(ValueError, match=r"tolerance must be a non-negative int; got -1"):
        pointing_game(np.ones((3, 3)), np.ones((3, 3)), tolerance=-1)


# --------------------------------------------------------------------------- auc and input checks


def test_auc_hand_cases() -> None:
    assert auc(np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert auc(np.array([0.0, 1.0, 0.0])) == pytest.approx(0.5)
    np.testing.assert_allclose(auc(np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])), [0.25, 1.0])


def test_auc_rejects_short_curves() -> None:
    with pytest.raises(ValueError, match=r"curve must have shape \(S,\) or \(N, S\) with S >= 2; got \(1,\)"):
        auc(np.array([1.0]))


def test_metrics_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"maps must have shape \(H, W\) or \(N, H, W\); got \(4,\)"):
        entropy(np.ones(4))
    with pytest.raises(ValueError, match="maps must be finite; got NaN or inf values"):
        gini(np.array([[1.0, np.nan]]))
    with pytest.raises(TypeError, match="maps must be a numeric array; got dtype <U1"):
        gini(np.array([["a", "b"]]))
