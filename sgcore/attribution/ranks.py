"""Rank statistics of maps: average ranks and Spearman's rank correlation.

One implementation for the benchmark's map agreement and the audit's sanity
checks (Adebayo et al. 2018, arXiv:1810.03292, compare maps by Spearman rank
correlation). Ties get their average rank, as ``scipy.stats.rankdata``: maps
often hold runs of exact zeros (dead ReLUs, guided backprop), and breaking
those ties in an arbitrary order would lower the correlation at random.
"""

from __future__ import annotations

import torch


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension, ties sharing their average rank.

    Args:
        x: ``(..., D)`` values.

    Returns:
        float64 ranks of the same shape.
    """
    flat = x.reshape(-1, x.shape[-1]).double()
    values, order = flat.sort(dim=1, stable=True)
    n = flat.shape[1]
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.cumsum(dim=1) - 1  # run of equal values each sorted slot belongs to
    position = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(values)
    total = torch.zeros_like(values).scatter_add_(1, group, position)
    count = torch.zeros_like(values).scatter_add_(1, group, torch.ones_like(values))
    mean_rank = (total / count.clamp(min=1)).gather(1, group)
    ranks = torch.empty_like(values).scatter_(1, order, mean_rank)
    return ranks.reshape(x.shape)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of paired maps, one value per leading index.

    Args:
        a, b: ``(N, ...)`` maps of the same shape; each ``a[i]`` is flattened
            and compared with ``b[i]``.

    Returns:
        ``(N,)`` float64; NaN where a map is constant (it has no ranking).

    Raises:
        ValueError: the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = average_ranks(a.reshape(a.shape[0], -1))
    rb = average_ranks(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    rho = ((ra * rb).sum(dim=1) / den.clamp(min=torch.finfo(torch.float64).tiny)).clamp(-1.0, 1.0)
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan")))
