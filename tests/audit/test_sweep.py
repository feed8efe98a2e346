"""The noise x samples grid and the convergence curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sgcore import smoothgrad
from sgcore.attribution import reduce_channels
from sgcore.audit import MapSettings, SweepConfig, convergence, sweep_grid
from sgcore.errors import ConfigError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def test_grid_cells_equal_direct_kernel_calls() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    t = torch.tensor([0, 2])
    seeds = torch.tensor([4, 5])
    grid = sweep_grid(model, x, t, noise_levels=(0.0, 0.2), sample_counts=(1, 6), seeds=seeds)
    assert grid.maps.shape == (2, 2, 2, 12, 12)
    direct = reduce_channels(smoothgrad(model, x, t, n_samples=6, noise_level=0.2, seeds=seeds)).numpy()
    np.testing.assert_allclose(grid.maps[1, 1], direct, rtol=1e-6)
    # Zero noise: every sample count is the plain gradient.
    np.testing.assert_allclose(grid.maps[0, 0], grid.maps[0, 1], rtol=1e-6)


def test_grid_uses_every_setting() -> None:
    """Aggregate, base map, noise kind and reduction reach the kernel; each cell sets n and the noise level."""
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    t = torch.tensor([1, 0])
    seeds = torch.tensor([3, 9])
    settings = MapSettings(n_samples=99, noise_level=0.9, aggregate="square", base="input_x_gradient",
                           noise="antithetic", reduction="max_abs")
    grid = sweep_grid(model, x, t, noise_levels=(0.1,), sample_counts=(4,), seeds=seeds, settings=settings)
    direct = smoothgrad(model, x, t, n_samples=4, noise_level=0.1, aggregate="square", base="input_x_gradient",
                        noise="antithetic", seeds=seeds)
    np.testing.assert_allclose(grid.maps[0, 0], reduce_channels(direct, "max_abs").numpy(), rtol=1e-6)
    default = sweep_grid(model, x, t, noise_levels=(0.1,), sample_counts=(4,), seeds=seeds)
    assert not np.allclose(default.maps, grid.maps, rtol=0.1)
    conv = convergence(model, x, t, sample_counts=(4,), reference_samples=8, seeds=seeds, settings=settings)
    ref = smoothgrad(model, x, t, n_samples=8, noise_level=0.9, aggregate="square", base="input_x_gradient",
                     noise="antithetic", seeds=seeds + 1)
    m4 = reduce_channels(smoothgrad(model, x, t, n_samples=4, noise_level=0.9, aggregate="square",
                                    base="input_x_gradient", noise="antithetic", seeds=seeds), "max_abs")
    ref2 = reduce_channels(ref, "max_abs")
    expected = ((m4 - ref2).flatten(1).norm(dim=1) / ref2.flatten(1).norm(dim=1)).numpy()
    np.testing.assert_allclose(conv.relative_l2[0], expected, rtol=1e-5)


def test_convergence_error_falls_with_n() -> None:
    model = _model()
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 1, 2])
    conv = convergence(model, x, t, sample_counts=(1, 4, 32), reference_samples=256,
                       seeds=torch.tensor([1, 2, 3]), settings=MapSettings(noise_level=0.3))
    err = conv.relative_l2.mean(axis=1)
    assert conv.relative_l2.shape == (3, 3)
    assert err[0] > err[1] > err[2]
    # Monte-Carlo rate: 32x the samples should cut the error by roughly sqrt(32) ~ 5.7 (loosely).
    assert err[0] / err[2] > 2.5
    assert conv.spearman.mean(axis=1)[2] > conv.spearman.mean(axis=1)[0]


def test_convergence_rejects_small_reference() -> None:
    with pytest.raises(ValueError, match="reference_samples must be >= the largest sample count 100; got 50"):
        convergence(_model(), torch.zeros(1, 3, 4, 4), torch.tensor([0]), sample_counts=(1, 100),
                    reference_samples=50)


def test_sweep_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sweep needs --results URL or --input URL; got neither"):
        SweepConfig(report=str(tmp_path))
    with pytest.raises(ConfigError, match=r"noise levels must be in \[0, 1\]; got 1.5"):
        SweepConfig(report=str(tmp_path), input="x", noise_levels=(0.1, 1.5))
    with pytest.raises(ConfigError, match="sample counts must be positive integers; got 0"):
        SweepConfig(report=str(tmp_path), input="x", sample_counts=(0, 10))
    with pytest.raises(ConfigError, match="reference_samples must be >= the largest convergence count 100; got 10"):
        SweepConfig(report=str(tmp_path), input="x", reference_samples=10)
    with pytest.raises(ConfigError, match="aggregate must be one of mean, square, var; got 'median'"):
        SweepConfig(report=str(tmp_path), input="x", aggregate="median")
    with pytest.raises(ConfigError, match="reduction must be one of abs_sum, sum, max_abs; got 'l2'"):
        SweepConfig(report=str(tmp_path), input="x", reduction="l2")
