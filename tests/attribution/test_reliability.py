"""The per-map reliability estimate: synthetic truths, the kernel's result, calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgcore.attribution import SmoothGradResult, smoothgrad, step_up
from sgcore.attribution.calibration import calibrate
from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.attribution.reliability import bootstrap_reliability, expected_agreement, half_mask


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize(("m_a", "m_b"), [(8, 8), (16, 8), (64, 64)])
def test_step_up_recovers_the_correlation_with_the_truth(m_a, m_b):
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(200, 4000, generator=gen, dtype=torch.float64)
    lam = 6.0  # noise variance per sample over signal variance
    a = truth + (lam / m_a) ** 0.5 * torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    b = truth + (lam / m_b) ** 0.5 * torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    full = (m_a * a + m_b * b) / (m_a + m_b)
    want = (1.0 / (1.0 + lam / (m_a + m_b))) ** 0.5
    got = step_up(_pearson(a, b), m_a, m_b)
    assert abs(float(got.mean()) - want) < 0.005
    assert abs(float(_pearson(full, truth).mean()) - want) < 0.005


def test_step_up_edges():
    got = step_up(torch.tensor([1.0, 0.0, -0.3, float("nan")]), 4, 4)
    assert got[0] == 1.0 and got[1] == 0.0 and got[2] == 0.0 and torch.isnan(got[3])


@pytest.mark.parametrize("n", [8, 32, 128])
def test_bootstrap_matches_the_known_correlation_of_synthetic_estimates(n):
    # Heavy-tailed converged maps, per-sample noise whose scale varies in space:
    # the measured Spearman of the reduced mean against the reduced truth is known.
    gen = torch.Generator().manual_seed(n)
    batch, shape = 6, (3, 24, 24)
    truth = torch.randn((batch, *shape), generator=gen) ** 3
    scale = 1.0 + 2.0 * torch.rand((batch, 1, *shape[1:]), generator=gen)
    samples = truth.unsqueeze(1) + scale.unsqueeze(1) * torch.randn((batch, n, *shape), generator=gen)
    maps = samples.mean(dim=1)
    a, b = samples[:, 0::2].mean(dim=1), samples[:, 1::2].mean(dim=1)
    m = torch.full((batch,), n / 2)
    est = bootstrap_reliability(maps, a, b, m, m)
    measured = spearman(reduce_channels(maps), reduce_channels(truth))
    assert abs(float(est.reliability.mean() - measured.mean())) < 0.04, (est, measured)
    # A twin: the same truth, independent samples. The two maps agree more than
    # the product of their reliabilities (the reduction's bias is shared), as
    # the estimate says.
    twin = (truth.unsqueeze(1) + scale.unsqueeze(1) * torch.randn((batch, n, *shape), generator=gen)).mean(dim=1)
    agree = spearman(reduce_channels(maps), reduce_channels(twin))
    assert abs(float(est.reproducibility.mean() - agree.mean())) < 0.04, (est, agree)
    shared_bias = 0.01 if n <= 32 else 0.0  # the bias fades as n grows
    assert float(agree.mean()) > float(measured.square().mean()) + shared_bias


@pytest.mark.parametrize("n", [16, 32])
def test_noise_correlated_across_channels_is_simulated_as_it_is(n):
    # A trained ImageNet model's per-sample gradients correlate 0.26-0.38 across
    # R, G, B (EfficientNet-Lite0 on the photos); here 0.81, with a noise scale
    # smooth in space. Simulated as independent per channel, the reduced map's
    # noise was too small: reliability +0.05..0.07 and reproducibility
    # +0.05 above the measured figures, so --compare flagged seed changes.
    gen = torch.Generator().manual_seed(n)
    batch, shape = 8, (3, 32, 32)
    truth = torch.randn((batch, *shape), generator=gen) ** 3 * 0.3
    coarse = 1.0 + 2.0 * torch.rand((batch, 1, 4, 4), generator=gen)
    scale = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear")

    def draw() -> torch.Tensor:
        shared = torch.randn((batch, n, 1, *shape[1:]), generator=gen)
        own = torch.randn((batch, n, *shape), generator=gen)
        return truth.unsqueeze(1) + scale.unsqueeze(1) * (0.9 * shared + 0.19**0.5 * own)

    samples = draw()
    maps = samples.mean(dim=1)
    m = torch.full((batch,), n / 2)
    est = bootstrap_reliability(maps, samples[:, 0::2].mean(dim=1), samples[:, 1::2].mean(dim=1), m, m)
    measured = spearman(reduce_channels(maps), reduce_channels(truth))
    agree = spearman(reduce_channels(maps), reduce_channels(draw().mean(dim=1)))
    assert abs(float(est.reliability.mean() - measured.mean())) < 0.03, (est, measured)
    # Never above the measured twin agreement by more than noise: --compare's floor.
    assert -0.05 < float(est.reproducibility.mean() - agree.mean()) < 0.02, (est, agree)


def test_expected_agreement_is_the_reproducibility_of_twins_and_the_reliability_against_the_limit():
    rel, rep = np.array([0.9, 0.8, 0.7]), np.array([0.85, 0.72, 0.49])
    np.testing.assert_allclose(expected_agreement(rel, rep, rel, rep), rep)  # twins: the reproducibility
    np.testing.assert_allclose(expected_agreement(rel, rep, 1.0, 1.0), rel)  # against the converged map
    # Different n: between the product (no shared bias) and the geometric mean of the reproducibilities.
    got = expected_agreement(0.8, 0.72, 0.95, 0.92)
    assert 0.8 * 0.95 < got < (0.72 * 0.92) ** 0.5
    # No reproducibility (or one below rel²): the product; NaN reliability: NaN.
    assert expected_agreement(0.9, np.nan, 0.9, 0.85) == pytest.approx(0.81)
    assert expected_agreement(0.9, 0.5, 0.9, 0.85) == pytest.approx(0.81)
    assert np.isnan(expected_agreement(np.nan, 0.5, 0.9, 0.85))


def test_antithetic_pairs_and_blocks_stay_in_one_half():
    assert half_mask(0, 6, "gaussian", blocked=False, device=torch.device("cpu")).tolist() == [
        True, False, True, False, True, False]
    assert half_mask(0, 6, "antithetic", blocked=False, device=torch.device("cpu")).tolist() == [
        True, True, False, False, True, True]
    sobol = half_mask(0, 16, "sobol", blocked=True, device=torch.device("cpu")).tolist()
    assert sobol == [True] * 8 + [False] * 8


@pytest.mark.parametrize("noise", ["gaussian", "antithetic", "sobol"])
def test_kernel_result_keeps_the_maps_and_adds_a_figure(cnn, images, targets, seeds, noise):
    plain = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=12, noise=noise, max_batch=5)
    got = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=12, noise=noise, max_batch=5,
                     return_reliability=True)
    assert isinstance(got, SmoothGradResult)
    assert torch.equal(got.maps, plain)
    assert got.reliability.dtype == torch.float32 and got.reliability.shape == (images.shape[0],)
    assert bool(((got.reliability >= 0) & (got.reliability <= 1)).all())
    assert got.reproducibility.dtype == torch.float32 and got.reproducibility.shape == (images.shape[0],)
    assert bool(((got.reproducibility >= 0) & (got.reproducibility <= 1)).all())
    assert got.n_samples.tolist() == [12] * images.shape[0]
    again = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=12, noise=noise, max_batch=64,
                       return_reliability=True)
    torch.testing.assert_close(again.reliability, got.reliability, atol=1e-4, rtol=0)
    torch.testing.assert_close(again.reproducibility, got.reproducibility, atol=1e-4, rtol=0)


def test_reliability_grows_with_n_and_is_exact_without_noise(cnn, images, targets, seeds):
    kw = dict(seeds=seeds, return_reliability=True)
    low = smoothgrad(cnn, images, targets, n_samples=4, **kw).reliability
    high = smoothgrad(cnn, images, targets, n_samples=256, **kw).reliability
    assert float(high.mean()) > float(low.mean())
    exact = smoothgrad(cnn, images, targets, noise_level=0.0, **kw)
    assert exact.reliability.tolist() == exact.reproducibility.tolist() == [1.0] * images.shape[0]
    one = smoothgrad(cnn, images, targets, n_samples=1, **kw)
    assert torch.isnan(one.reliability).all() and torch.isnan(one.reproducibility).all()


def test_reliability_arguments_are_checked(cnn, images, targets):
    with pytest.raises(ValueError, match="reliability_reduction must be one of"):
        smoothgrad(cnn, images, targets, return_reliability=True, reliability_reduction="l2")
    with pytest.raises(TypeError, match="return_reliability must be a bool"):
        smoothgrad(cnn, images, targets, return_reliability=1)


@pytest.fixture(scope="module")
def digits():
    from sgcore.demo.digits import accuracy, load_digits_data, load_digits_model

    data = load_digits_data()
    model = load_digits_model()
    assert accuracy(model, data.test_x, data.test_y) > 0.9  # a trained model, not noise
    x = data.test_x[:4]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    return model, x, targets


def test_calibration_on_a_trained_model_at_small_sizes(digits):
    # The full check (n=16..128 against n=4096) is in docs/performance.md; here
    # n=16 and 64 against n=512, the reference's own noise discounted.
    model, x, targets = digits
    out = calibrate(model, x, targets, ns=(16, 64), reference_n=512, repeats=2)
    errors = [row["abs_error_vs_ref"] for row in out["rows"]]
    assert sum(errors) / len(errors) <= 0.03, out["rows"]
    # The two repeats are twins: their agreement is what their reproducibility says.
    twin_errors = [row["twin_abs_error"] for row in out["rows"]]
    assert sum(twin_errors) / len(twin_errors) <= 0.03, out["rows"]


@pytest.mark.parametrize("seed", range(6))
def test_a_few_elements_of_huge_variance_do_not_collapse_the_estimate(seed):
    # The bulk of the map is clear signal; 8 of 1024 elements have zero mean and
    # a per-sample spread 300x the bulk's (heavy-tailed gradients). Their
    # variance dominates mean(v) and nearly equals mean(μ̂²): without a floor on
    # the prior variance the estimate read ~0 where the measured Spearman is ~0.9.
    gen = torch.Generator().manual_seed(seed)
    batch, n, shape = 8, 16, (1, 32, 32)
    truth = torch.rand((batch, *shape), generator=gen) + 0.5
    scale = torch.full((batch, *shape), 0.6)
    spikes = torch.randint(0, 32, (batch, 8, 2), generator=gen)
    for i in range(batch):
        truth[i, 0, spikes[i, :, 0], spikes[i, :, 1]] = 0.0
        scale[i, 0, spikes[i, :, 0], spikes[i, :, 1]] = 180.0
    samples = truth.unsqueeze(1) + scale.unsqueeze(1) * torch.randn((batch, n, *shape), generator=gen)
    maps = samples.mean(dim=1)
    a, b = samples[:, 0::2].mean(dim=1), samples[:, 1::2].mean(dim=1)
    m = torch.full((batch,), n / 2)
    est = bootstrap_reliability(maps, a, b, m, m).reliability
    measured = spearman(reduce_channels(maps), reduce_channels(truth))
    assert float(measured.min()) > 0.6
    assert float((est - measured).abs().max()) < 0.2, (est, measured)
