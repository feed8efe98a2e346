"""Deterministic per-image noise: Gaussian, antithetic pairs and shifted van der Corput."""

from __future__ import annotations

import pytest
import torch

from sgcore.attribution._noise import NOISE_KINDS, standard_noise

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_deterministic_per_seed_and_shape(kind):
    a = standard_noise(9, (2, 3, 4), 7, device=CPU, kind=kind)
    b = standard_noise(9, (2, 3, 4), 7, device=CPU, kind=kind)
    c = standard_noise(9, (2, 3, 4), 8, device=CPU, kind=kind)
    assert a.shape == (9, 2, 3, 4) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_standard_normal_marginals(kind):
    eps = standard_noise(64, (3, 32, 32), 1, device=CPU, kind=kind)
    assert abs(float(eps.mean())) < 0.01
    assert abs(float(eps.std()) - 1.0) < 0.01
    # Every single sample is N(0, I) across elements: same mean and spread.
    per_sample = eps.flatten(1)
    assert per_sample.mean(1).abs().max() < 0.1
    assert (per_sample.std(1) - 1).abs().max() < 0.1
    assert torch.isfinite(eps).all()


def test_antithetic_pairs_cancel_and_odd_n_ends_unpaired():
    eps = standard_noise(5, (4, 4), 3, device=CPU, kind="antithetic")
    assert torch.equal(eps[0], -eps[1]) and torch.equal(eps[2], -eps[3])
    assert not torch.equal(eps[4], -eps[3])
    # The first pairs do not depend on n (one draw of ceil(n/2) halves).
    assert torch.equal(standard_noise(4, (4, 4), 3, device=CPU, kind="antithetic"), eps[:4])


def test_sobol_is_stratified_per_element():
    n = 16
    eps = standard_noise(n, (3, 5, 5), 4, device=CPU, kind="sobol").double()
    u = torch.special.ndtr(eps)
    strata = torch.floor(u * n).long().flatten(1)  # (n, elements)
    for e in range(strata.shape[1]):
        assert sorted(strata[:, e].tolist()) == list(range(n))
    # The shift differs between elements: sample 0 is not the same everywhere.
    assert eps[0].unique().numel() > 1


def test_sobol_mean_error_is_far_below_gaussian():
    # Stratification: the mean over n of a smooth function converges at ~1/n,
    # not 1/sqrt(n). Here E[ε²] = 1 with 64 samples over 4096 elements.
    g = standard_noise(64, (4096,), 5, device=CPU, kind="gaussian")
    s = standard_noise(64, (4096,), 5, device=CPU, kind="sobol")
    err_g = (g.square().mean(0) - 1).abs().mean()
    err_s = (s.square().mean(0) - 1).abs().mean()
    assert err_s < 0.2 * err_g


def test_unknown_kind():
    with pytest.raises(ValueError, match="noise must be one of gaussian, antithetic, sobol; got 'pink'"):
        standard_noise(2, (3,), 0, device=CPU, kind="pink")


def test_sobol_elements_are_independent_across_samples():
    # Two elements' sample sequences must not be tied together (an XOR-shifted
    # shared sequence would give |correlation| near 1 for some pairs).
    eps = standard_noise(256, (64,), 9, device=CPU, kind="sobol")
    corr = torch.corrcoef(eps.T)
    off = corr[~torch.eye(64, dtype=torch.bool)]
    assert off.abs().max() < 0.3
