"""Average ranks and Spearman's rank correlation against scipy, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sgcore.attribution.ranks import average_ranks, spearman


def test_average_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(4, 50)).astype(np.float64)  # many ties
    got = average_ranks(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, stats.rankdata(x, axis=1))
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_spearman_matches_scipy_on_sparse_maps():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 8, 8, generator=gen)
    b = a + 0.3 * torch.rand(3, 8, 8, generator=gen)
    # Dead regions: runs of exact zeros, as ReLU nets and guided backprop give.
    a[:, :4] = 0
    b[:, :3] = 0
    got = spearman(a, b)
    for i in range(3):
        want = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-12)


def test_a_map_against_a_monotone_transform_of_itself_is_one():
    a = torch.zeros(2, 100)
    a[:, 60:] = torch.arange(1, 41, dtype=torch.float32)
    a[1] = a[1].flip(0)
    b = a.sqrt() * 3  # same order, same zero run
    torch.testing.assert_close(spearman(a, b), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_constant_map_is_nan_and_shapes_must_match():
    rho = spearman(torch.ones(2, 4, 4), torch.rand(2, 4, 4))
    assert torch.isnan(rho).all()
    with pytest.raises(ValueError, match=r"same shape; got \(2, 4\) and \(2, 5\)"):
        spearman(torch.rand(2, 4), torch.rand(2, 5))
