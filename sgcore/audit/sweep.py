"""Parameter sweep: the SmoothGrad paper's figures for chosen images.

Smilkov et al. 2017 (arXiv:1706.03825) show maps over a grid of noise levels
(0-50 %) and sample counts (1-100+), and argue that 10-20 % noise with ~50
samples works well. This module recomputes that grid for a dataset's own
images, plus a convergence curve: the distance of the n-sample map to a
large-n reference map (drawn with a different seed) as n grows. The
distance of an unbiased Monte-Carlo mean falls like 1/sqrt(n).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from sgcore.attribution import reduce_channels
from sgcore.attribution.reliability import expected_agreement
from sgcore.audit.metrics import spearman
from sgcore.audit.sanity import MapSettings

DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.10, 0.15, 0.20, 0.30, 0.50)
DEFAULT_SAMPLE_COUNTS: tuple[int, ...] = (1, 5, 10, 25, 50, 100)
DEFAULT_CONVERGENCE_COUNTS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True, kw_only=True)
class SweepGrid:
    """Maps over the grid: ``maps[i, j]`` is ``(N, H, W)`` at ``noise_levels[i]``, ``sample_counts[j]``."""

    noise_levels: tuple[float, ...]
    sample_counts: tuple[int, ...]
    maps: np.ndarray  # (levels, counts, N, H, W) float32


@dataclass(frozen=True, kw_only=True)
class Convergence:
    """Per-image distance to the reference map, ``(len(counts), N)`` each.

    ``relative_l2`` is ``||m_n - m_ref|| / ||m_ref||`` of the 2-D maps;
    ``spearman`` is their rank correlation. ``estimated`` is the kernel's
    reliability estimate of each n-sample map (its Spearman with the
    *converged* map, from its own samples; NaN at n = 1) and
    ``reference_reliability`` ``(N,)`` that of the reference;
    ``reproducibility`` and ``reference_reproducibility`` the kernel's
    estimates of each map's Spearman with a twin of independent noise. The
    reference is itself an estimate whose reduction shares part of the n-sample
    map's bias, so the measured Spearman should come out near
    :func:`~sgcore.attribution.reliability.expected_agreement` of the two
    (:meth:`expected_spearman`), not near the product of the reliabilities.
    """

    sample_counts: tuple[int, ...]
    reference_samples: int
    relative_l2: np.ndarray
    spearman: np.ndarray
    estimated: np.ndarray
    reference_reliability: np.ndarray
    reproducibility: np.ndarray
    reference_reproducibility: np.ndarray

    def expected_spearman(self) -> np.ndarray:
        """``(len(counts), N)``: the Spearman with the reference the estimates predict."""
        return expected_agreement(self.estimated, self.reproducibility,
                                  self.reference_reliability[None, :], self.reference_reproducibility[None, :])


def sweep_grid(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    noise_levels: tuple[float, ...] = DEFAULT_NOISE_LEVELS,
    sample_counts: tuple[int, ...] = DEFAULT_SAMPLE_COUNTS,
    seeds: torch.Tensor | None = None,
    settings: MapSettings | None = None,
) -> SweepGrid:
    """SmoothGrad maps for every (noise level, sample count) pair.

    Args:
        model: classifier in eval mode.
        images: ``(B, C, H, W)`` model-input images (on the model's device).
        targets: ``(B,)`` explained classes.
        noise_levels: σ fractions, each in [0, 1].
        sample_counts: n values, each >= 1.
        seeds: ``(B,)`` noise seeds (the same for every cell).
        settings: the other kernel settings (aggregate, base, noise,
            reduction of the 2-D maps, ...); each cell replaces its
            ``noise_level`` and ``n_samples``. None: the defaults.
    """
    levels = tuple(float(v) for v in noise_levels)
    counts = tuple(sample_counts)
    if not levels or not counts:
        raise ValueError(f"noise_levels and sample_counts must not be empty; got {levels} and {counts}")
    settings = settings or MapSettings()
    rows = []
    for level in levels:
        row = []
        for n in counts:
            cell = replace(settings, n_samples=n, noise_level=level)
            row.append(_reduced(cell, model, images, targets, seeds))
        rows.append(np.stack(row))
    return SweepGrid(noise_levels=levels, sample_counts=counts, maps=np.stack(rows).astype(np.float32))


def convergence(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    sample_counts: tuple[int, ...] = DEFAULT_CONVERGENCE_COUNTS,
    reference_samples: int = 500,
    seeds: torch.Tensor | None = None,
    settings: MapSettings | None = None,
) -> Convergence:
    """Distance of n-sample maps to a ``reference_samples``-sample map, per n.

    The maps use ``settings`` (None: the defaults) at its noise level, with
    ``n_samples`` replaced by each n. The reference uses seeds ``seeds + 1``
    (independent noise), so the curve measures Monte-Carlo error rather than
    agreement of shared samples.
    """
    if reference_samples < max(sample_counts):
        raise ValueError(
            f"reference_samples must be >= the largest sample count {max(sample_counts)}; got {reference_samples}"
        )
    settings = settings or MapSettings()
    b = images.shape[0]
    seeds = seeds if seeds is not None else torch.zeros(b, dtype=torch.int64)
    ref, ref_rel, ref_rep = _reduced_with_reliability(replace(settings, n_samples=reference_samples), model, images,
                                                      targets, seeds + 1)
    ref_norm = np.linalg.norm(ref.reshape(b, -1), axis=1)
    l2, rho, est, rep = [], [], [], []
    for n in sample_counts:
        m, rel, twin = _reduced_with_reliability(replace(settings, n_samples=n), model, images, targets, seeds)
        diff = np.linalg.norm((m - ref).reshape(b, -1), axis=1)
        l2.append(diff / np.where(ref_norm > 0, ref_norm, 1.0))
        rho.append(np.atleast_1d(spearman(m, ref)))
        est.append(rel)
        rep.append(twin)
    return Convergence(
        sample_counts=tuple(sample_counts),
        reference_samples=reference_samples,
        relative_l2=np.stack(l2),
        spearman=np.stack(rho),
        estimated=np.stack(est),
        reference_reliability=ref_rel,
        reproducibility=np.stack(rep),
        reference_reproducibility=ref_rep,
    )


def _reduced(
    settings: MapSettings, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor | None
) -> np.ndarray:
    """2-D maps ``(B, H, W)`` float64 on the CPU, reduced with ``settings.reduction``."""
    full = settings.maps(model, images, targets, seeds)
    return reduce_channels(full, settings.reduction).cpu().numpy().astype(np.float64)


def _reduced_with_reliability(
    settings: MapSettings, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_reduced`'s maps (the same values), each one's reliability and reproducibility ``(B,)`` float64."""
    result = settings.maps_with_reliability(model, images, targets, seeds)
    maps = reduce_channels(result.maps, settings.reduction).cpu().numpy().astype(np.float64)
    return maps, *(e.cpu().numpy().astype(np.float64) for e in (result.reliability, result.reproducibility))
