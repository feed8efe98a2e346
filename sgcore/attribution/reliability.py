"""How far a SmoothGrad map still is from its converged value.

A SmoothGrad map is a Monte Carlo mean over ``n`` noisy samples. Its
*reliability* is the estimated Spearman correlation between the stored 2-D map
(channels reduced) and the map the same settings converge to as ``n → ∞``,
estimated from the samples already drawn, without another forward or backward
pass.

Estimator: split-half variance, then an empirical-Bayes parametric bootstrap.

1. The samples of an image are split into two halves ``A`` and ``B`` that are
   each a valid SmoothGrad estimator: i.i.d. Gaussian samples alternate;
   antithetic pairs ``(ε, −ε)`` are kept whole (a half holding one member of a
   pair would lose the cancellation the pair exists for); quasi-random blocks
   are kept whole where the kernel draws them in blocks (adaptive sampling),
   so each half keeps its strata. Per element, ``(a − b)² / (1/m_A + 1/m_B)``
   estimates the per-sample variance, hence ``v = s² / n`` the variance of the
   stored (unreduced) map ``μ̂``; pairs and strata count as they should because
   the halves are made of whole ones.
2. Per image, a Gaussian prior over the converged map's elements,
   ``μ ~ N(0, τ²)`` with ``τ² = mean(μ̂²) − mean(v)``, gives the posterior
   ``μ | μ̂ ~ N(w μ̂, w v)``, ``w = τ² / (τ² + v)``. Draw a converged map from
   it, draw a stored map around that (``+ N(0, v)``), reduce both to 2-D and
   take their Spearman correlation; average a few draws (seeded from the
   image's seed, so the figure is as deterministic as the map).
3. ``τ²`` is kept at least ``TAU_FLOOR`` (a quarter) of ``mean(max(μ̂² − v, 0))``.
   Without the floor, a few elements of huge Monte Carlo variance (heavy-tailed
   gradients) made ``mean(v)`` all but equal ``mean(μ̂²)`` on about one demo map
   in a hundred at n = 16–32: the prior collapsed and a map measured at 0.90
   read 0.04. The positive part does not collapse; alone it is optimistic
   (+0.06 at n = 16 on the demo), a quarter of it only lifts the collapsed
   cases. On 96 demo maps (two sets of 48 images, n = 1024 references) the
   floor removed every collapse and the mean error at n = 16 went from 0.040 /
   0.035 to 0.029 / 0.031, unchanged at n = 64 and on the digits model
   (docs/performance.md §9).

Why not the textbook split-half Spearman–Brown step-up (``step_up`` below,
kept for the synthetic tests)? Measured on the trained demo model it is far
too optimistic (0.955 at n=16 where the correlation with an n=1024 reference
was 0.84): the stored map is a *reduction* (``abs_sum``) of the mean, and
``|μ̂|`` is biased upwards where the signal is weak, by an amount set by the
local gradient variance. That bias pattern is the same in both halves, so the
halves agree with each other much better than either agrees with the limit.
The bootstrap above simulates exactly that reduction, bias included. Its
calibration against n = 4096 references with independent seeds is in
docs/performance.md; it errs on the pessimistic side at small ``n``.
"""

from __future__ import annotations

import math

import torch

from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.settings import ADAPTIVE_BLOCK

# Floor of the prior variance: this share of the mean positive part of μ̂² − v.
TAU_FLOOR = 0.25

# Samples per noise block in adaptive sampling (sobol strata, antithetic
# pairs and the split halves never straddle a block).
BLOCK = ADAPTIVE_BLOCK


def group_size(noise: str, *, blocked: bool) -> int:
    """How many consecutive samples must stay in the same half."""
    if noise == "antithetic":
        return 2
    if noise == "sobol" and blocked:
        return BLOCK
    return 1


def half_mask(k0: int, k1: int, noise: str, *, blocked: bool, device: torch.device) -> torch.Tensor:
    """True where sample ``k`` of ``k0:k1`` belongs to half ``A``."""
    g = group_size(noise, blocked=blocked)
    k = torch.arange(k0, k1, device=device)
    return (k // g) % 2 == 0


def step_up(r: torch.Tensor, m_a: torch.Tensor | float, m_b: torch.Tensor | float) -> torch.Tensor:
    """Correlation with the converged map of a map made of both halves.

    Args:
        r: ``(N,)`` correlation between the two half-maps.
        m_a, m_b: samples in each half (numbers or ``(N,)``).

    Returns:
        ``(N,)`` float64 in [0, 1]: ``1 / sqrt(1 + λ / (m_a + m_b))`` with
        ``λ`` solved from ``r² = 1 / ((1 + λ/m_a)(1 + λ/m_b))``; 0 where
        ``r ≤ 0``, NaN where ``r`` is NaN.
    """
    r = r.double()
    m_a = torch.as_tensor(m_a, dtype=torch.float64, device=r.device)
    m_b = torch.as_tensor(m_b, dtype=torch.float64, device=r.device)
    rc = r.clamp(min=1e-12, max=1.0)
    # λ²/(m_a m_b) + λ (1/m_a + 1/m_b) + 1 − 1/r² = 0, the positive root.
    a = 1.0 / (m_a * m_b)
    b = 1.0 / m_a + 1.0 / m_b
    c = 1.0 - 1.0 / rc.square()
    lam = (-b + torch.sqrt(b.square() - 4.0 * a * c)) / (2.0 * a)
    rho = 1.0 / torch.sqrt(1.0 + lam / (m_a + m_b))
    rho = torch.where(r > 0, rho, torch.zeros_like(rho))
    return torch.where(torch.isnan(r), r, rho)


def bootstrap_reliability(
    maps: torch.Tensor,
    half_a: torch.Tensor,
    half_b: torch.Tensor,
    m_a: torch.Tensor,
    m_b: torch.Tensor,
    *,
    reduction: str = "abs_sum",
    seeds: list[int] | None = None,
    draws: int = 4,
) -> torch.Tensor:
    """Estimated Spearman correlation of each reduced map with its limit (module docstring).

    Args:
        maps: ``(N, C, H, W)`` stored maps (all samples), before reduction.
        half_a, half_b: ``(N, C, H, W)`` the same aggregate over each half.
        m_a, m_b: ``(N,)`` samples in each half (both > 0).
        reduction: the channel reduction of the stored 2-D map.
        seeds: per-map seeds for the bootstrap draws (default 0).
        draws: bootstrap draws per map.

    Returns:
        ``(N,)`` float64 in [-1, 1]; NaN where a simulated map is constant.
    """
    n = maps.shape[0]
    view = (-1,) + (1,) * (maps.dim() - 1)
    m_a = m_a.to(device=maps.device, dtype=torch.float32).view(view)
    m_b = m_b.to(device=maps.device, dtype=torch.float32).view(view)
    s2 = (half_a - half_b).square() / (1.0 / m_a + 1.0 / m_b)
    v = s2 / (m_a + m_b)
    flat_mu2 = maps.square().reshape(n, -1).mean(dim=1)
    flat_v = v.reshape(n, -1).mean(dim=1)
    # A few elements of huge Monte Carlo variance (heavy-tailed gradients) can
    # make mean(v) all but equal mean(μ̂²) while the bulk of the map is signal:
    # the prior then collapses (τ² → 0) and a map measured at 0.90 reads 0.04.
    # The positive part of μ̂² − v, averaged, does not collapse; a quarter of it
    # is the floor (module docstring).
    flat_pos = (maps.square() - v).clamp(min=0).reshape(n, -1).mean(dim=1)
    tau2 = torch.maximum(flat_mu2 - flat_v, TAU_FLOOR * flat_pos)
    tau2 = tau2.clamp(min=torch.finfo(torch.float32).tiny).view(view)
    w = tau2 / (tau2 + v)
    centre, post_sd, sd = w * maps, (w * v).sqrt(), v.sqrt()
    seeds = [0] * n if seeds is None else seeds
    # One generator per map (its figure does not depend on its batch
    # neighbours), one batched reduction and rank correlation for all maps.
    shape = (draws, *maps.shape[1:])
    z = torch.empty((n, 2, *shape), dtype=maps.dtype, device=maps.device)
    for i in range(n):
        gen = torch.Generator(device=maps.device)
        gen.manual_seed(int(seeds[i]) ^ 0x5EED_BEEF)
        z[i] = torch.randn((2, *shape), generator=gen, device=maps.device, dtype=maps.dtype)
    truth = centre.unsqueeze(1) + post_sd.unsqueeze(1) * z[:, 0]
    stored = truth + sd.unsqueeze(1) * z[:, 1]
    flat = (n * draws, *maps.shape[1:])
    rho = _spearman_continuous(reduce_channels(stored.reshape(flat), reduction),
                               reduce_channels(truth.reshape(flat), reduction))
    return rho.view(n, draws).mean(dim=1)


def _spearman_continuous(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman of maps without ties (simulated Gaussian draws): one sort per map.

    ``ranks.spearman`` averages tied ranks, which these draws never have (ties
    have probability zero), at several times the cost.
    """
    def ranks(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        order = flat.argsort(dim=1)
        pos = torch.arange(flat.shape[1], dtype=torch.float64, device=x.device).expand_as(order)
        return torch.empty_like(pos).scatter_(1, order, pos)

    ra, rb = ranks(a), ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    rho = ((ra * rb).sum(dim=1) / den.clamp(min=torch.finfo(torch.float64).tiny)).clamp(-1.0, 1.0)
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan")))


def split_half_reliability(
    half_a: torch.Tensor, half_b: torch.Tensor, m_a: torch.Tensor | float, m_b: torch.Tensor | float
) -> torch.Tensor:
    """Reliability of the maps made of both halves (module docstring).

    Args:
        half_a, half_b: ``(N, H, W)`` 2-D maps of each half, reduced like the
            stored map.
        m_a, m_b: samples in each half.

    Returns:
        ``(N,)`` float64; NaN where a half-map is constant.
    """
    return step_up(spearman(half_a, half_b), m_a, m_b)


def samples_for(reliability: float, target: float, n: int) -> float:
    """Samples the additive-noise model predicts for ``target``, from ``reliability`` at ``n``."""
    if not 0.0 < reliability < 1.0:
        return math.inf if reliability <= 0.0 else float(n)
    lam = n * (1.0 / reliability**2 - 1.0)
    return lam / (1.0 / target**2 - 1.0)
