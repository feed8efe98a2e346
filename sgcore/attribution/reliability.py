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
   estimates the per-sample variance with one degree of freedom; it is
   averaged over the channels and a ``VAR_WINDOW`` (3 × 3) box, which gives
   about ``9·C`` (Monte Carlo variance is smooth in space), and ``v = s² / n``
   is the variance of the stored (unreduced) map ``μ̂``. Pairs and strata count
   as they should because the halves are made of whole ones. With one degree
   of freedom the simulated noise was far more uneven than the real one (a
   χ²₁ variance puts most elements near zero): the estimate read +0.04 too
   high on the demo model at n = 16–64 (docs/performance.md §12).
2. Per pixel, a Gaussian prior over the converged map's elements,
   ``μ ~ N(0, τ²)`` with ``τ² = box(μ̂²) − box(v)`` over a ``PRIOR_WINDOW``
   (5 × 5) box and all channels, gives the posterior ``μ | μ̂ ~ N(w μ̂, w v)``,
   ``w = τ² / (τ² + v)``. Saliency concentrates on regions, and its variance
   with it: one prior for the whole image shrank the strong, high-variance
   pixels as much as the background (pessimistic by 0.04 at n = 16 even with
   the true variance). Draw a converged map from the posterior, draw a stored
   map around that (``+ N(0, v)``), reduce both to 2-D and take their Spearman
   correlation; average a few draws (seeded from the image's seed, so the
   figure is as deterministic as the map).
3. ``τ²`` is kept at least ``TAU_FLOOR`` (a quarter) of the box mean of
   ``max(μ̂² − v, 0)``. Without the floor, a few elements of huge Monte Carlo
   variance (heavy-tailed gradients) made the prior collapse (``τ² → 0``) on
   about one demo map in a hundred at n = 16–32 and a map measured at 0.90
   read 0.04 (docs/performance.md §11).
4. Every simulated noise field (the posterior's and each stored map's) is a
   wild bootstrap of the halves' differences ``d`` over the ``VAR_WINDOW``
   box: ``Σ_j z_j d_j / sqrt(K)`` with one standard normal ``z_j`` per pixel
   shared by its channels, scaled to ``n`` samples. Its covariance is the
   real noise's, pooled over the box, *across the channels* too. Drawn
   independently per channel (until 2026-12), the noise of the reduced map
   was too small where the channels' noise correlates: on EfficientNet-Lite0
   (per-sample gradients correlate 0.26-0.38 across R, G, B) twins agreed
   0.46 / 0.51 / 0.56 / 0.59 at n = 16 / 32 / 48 / 64 where the estimate said
   0.58 / 0.61 / 0.64 / 0.66, and ``--compare`` flagged most seed changes
   (docs/performance.md §15).
5. The same draws give the *reproducibility*: a twin map drawn around the
   same simulated converged map with independent noise, and the Spearman of
   the stored map with it (:class:`Estimate`). Two finite maps of one image
   share the reduction's bias (below), so they agree more than the product of
   their reliabilities: on the demo at n = 32, 0.84 measured, 0.73 by the
   product, 0.85 by this figure. :func:`expected_agreement` turns the two
   figures of two maps (any ``n``) into the agreement their noise alone
   allows: the noise floor of ``jobs.audit --compare`` and the prediction of
   ``jobs.sweep``'s convergence curve. The twin's noise keeps the stored
   map's covariance pattern (across channels and neighbours) but takes its
   level from a wider ``TWIN_WINDOW`` (7 × 7) box: a twin shares the image's
   expected variance, not the places where this map's own samples happened to
   be large. With the stored map's 3 × 3 level the twin's noise sat exactly
   where the stored map's did, the reduction lifted both there, and the twins
   agreed too well where noise dominates: on EfficientNet-Lite0 at n = 16 the
   least reliable photo (chelsea, reliability 0.30) read +0.061 above its
   measured twin agreement over 66 pairs, and ``--compare`` flagged 39 of 462
   seed-only pairs; with the 7 × 7 level +0.035, and 0 of 462
   (docs/performance.md §21).

Why not the textbook split-half Spearman–Brown step-up (``step_up`` below,
kept for the synthetic tests)? Measured on the trained demo model it is far
too optimistic (0.955 at n=16 where the correlation with an n=1024 reference
was 0.84): the stored map is a *reduction* (``abs_sum``) of the mean, and
``|μ̂|`` is biased upwards where the signal is weak, by an amount set by the
local gradient variance. That bias pattern is the same in both halves, so the
halves agree with each other much better than either agrees with the limit.
The bootstrap above simulates exactly that reduction, bias included. Its
calibration against n = 4096 references with independent seeds is in
docs/performance.md §12.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from sgcore.attribution._noise import NOISE_TABLE
from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.settings import ADAPTIVE_BLOCK

# Floor of the prior variance: this share of the mean positive part of μ̂² − v.
TAU_FLOOR = 0.25
# Side of the box that pools each element's split-half variance.
VAR_WINDOW = 3
# Side of the box over which the prior's variance is estimated per pixel.
PRIOR_WINDOW = 5
# Side of the box that sets the level of a twin's noise (step 5): wider than VAR_WINDOW, because
# only the expected variance is shared with the stored map, not where its own samples were large.
TWIN_WINDOW = 7

# Samples per noise block in adaptive sampling (sobol strata, antithetic
# pairs and the split halves never straddle a block).
BLOCK = ADAPTIVE_BLOCK


def group_size(noise: str, *, blocked: bool) -> int:
    """How many consecutive samples must stay in the same half (the noise kind says)."""
    return NOISE_TABLE[noise].group_size(blocked=blocked)


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
) -> Estimate:
    """Estimated Spearman correlation of each reduced map with its limit, and with a twin (module docstring).

    Args:
        maps: ``(N, C, H, W)`` stored maps (all samples), before reduction.
        half_a, half_b: ``(N, C, H, W)`` the same aggregate over each half.
        m_a, m_b: ``(N,)`` samples in each half (both > 0).
        reduction: the channel reduction of the stored 2-D map.
        seeds: per-map seeds for the bootstrap draws (default 0).
        draws: bootstrap draws per map.

    Returns:
        :class:`Estimate` of ``(N,)`` float64 in [-1, 1]; NaN where a
        simulated map is constant.
    """
    if maps.dim() != 4:
        raise ValueError(f"bootstrap_reliability needs (N, C, H, W) maps; got shape {tuple(maps.shape)}")
    n = maps.shape[0]
    view = (-1,) + (1,) * (maps.dim() - 1)
    m_a = m_a.to(device=maps.device, dtype=torch.float32).view(view)
    m_b = m_b.to(device=maps.device, dtype=torch.float32).view(view)
    s2 = (half_a - half_b).square() / (1.0 / m_a + 1.0 / m_b)
    # One split gives each element's variance one degree of freedom; pooled
    # over the channels and a VAR_WINDOW box (Monte Carlo variance is smooth in
    # space) it has about 9·C (module docstring, step 1).
    v = (_box(s2.mean(dim=1, keepdim=True), VAR_WINDOW) / (m_a + m_b)).expand_as(maps)
    # The prior's variance, per pixel from a PRIOR_WINDOW box over all
    # channels (step 2); floored (step 3) where heavy-tailed variance would
    # make it collapse.
    mu2 = maps.square()
    local_mu2 = _box(mu2.mean(dim=1, keepdim=True), PRIOR_WINDOW)
    local_v = _box(v.mean(dim=1, keepdim=True), PRIOR_WINDOW)
    local_pos = _box((mu2 - v).clamp(min=0).mean(dim=1, keepdim=True), PRIOR_WINDOW)
    tau2 = torch.maximum(local_mu2 - local_v, TAU_FLOOR * local_pos)
    tau2 = tau2.clamp(min=torch.finfo(torch.float32).tiny)
    w = tau2 / (tau2 + v)
    # Each simulated noise field is a wild bootstrap of the halves' differences
    # over the VAR_WINDOW box (step 4): its covariance across the channels and
    # between neighbours is the real noise's, pooled like ``v``.
    diff = (half_a - half_b) / (1.0 / m_a + 1.0 / m_b).sqrt() / (m_a + m_b).sqrt()
    seeds = [0] * n if seeds is None else seeds
    # One generator per map (its figure does not depend on its batch
    # neighbours), one batched reduction and rank correlation for all maps.
    shape = (draws, 1, *maps.shape[2:])
    z = torch.empty((n, 3, *shape), dtype=maps.dtype, device=maps.device)
    for i in range(n):
        gen = torch.Generator(device=maps.device)
        gen.manual_seed(int(seeds[i]) ^ 0x5EED_BEEF)
        z[i] = torch.randn((3, *shape), generator=gen, device=maps.device, dtype=maps.dtype)
    flat = (n * draws, *maps.shape[1:])
    count = _box_sum(torch.ones_like(maps[:1, :1]), VAR_WINDOW)
    # The twin's noise has the stored map's covariance pattern at the level of a wider box (step 5).
    d2 = diff.square().mean(dim=1, keepdim=True)
    level = (_box(d2, TWIN_WINDOW) / _box(d2, VAR_WINDOW).clamp(min=torch.finfo(diff.dtype).tiny)).sqrt()

    def per_draw(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(n, draws, *maps.shape[1:]).reshape(flat)

    d, d_twin = per_draw(diff), per_draw(diff * level)

    def noise(k: int, source: torch.Tensor = d) -> torch.Tensor:
        return (_box_sum(source * z[:, k].reshape(n * draws, 1, *maps.shape[2:]), VAR_WINDOW) / count.sqrt()).view(
            n, draws, *maps.shape[1:])

    truth = (w * maps).unsqueeze(1) + w.sqrt().unsqueeze(1) * noise(0)
    stored = _unit_ranks(reduce_channels((truth + noise(1)).reshape(flat), reduction))
    twin = _unit_ranks(reduce_channels((truth + noise(2, d_twin)).reshape(flat), reduction))
    truth = _unit_ranks(reduce_channels(truth.reshape(flat), reduction))
    rho = _rank_correlation(stored, truth).view(n, draws).mean(dim=1)
    rep = _rank_correlation(stored, twin).view(n, draws).mean(dim=1)
    return Estimate(rho, rep)


class Estimate(NamedTuple):
    """The two figures of :func:`bootstrap_reliability`, each ``(N,)``.

    Attributes:
        reliability: Spearman of the stored 2-D map with its converged map.
        reproducibility: Spearman of the stored map with a *twin*, another map
            of the same image, settings and ``n`` with independent noise.
            Higher than ``reliability²`` (the product rule) where the channel
            reduction is biased: ``|μ̂|`` is lifted where the signal is weak,
            by the same pattern in both maps (module docstring).
    """

    reliability: torch.Tensor
    reproducibility: torch.Tensor


def expected_agreement(
    rel_a: np.ndarray | float, rep_a: np.ndarray | float, rel_b: np.ndarray | float, rep_b: np.ndarray | float
) -> np.ndarray:
    """Spearman expected between two maps of one image that differ only in their Monte Carlo noise.

    Each map is ``(reliability, reproducibility)`` (:class:`Estimate`); the
    maps may have different ``n``. Model: a reduced map is ``T + b + e``,
    the converged map ``T`` (unit variance), a bias ``b`` of variance ``β``
    whose pattern is the same in every map of the image (the reduction's lift
    where the local noise is strong, smaller at larger ``n``), and independent
    noise ``e``. Then ``reliability = 1/sqrt(1 + β + ε)`` and
    ``reproducibility = (1 + β) · reliability²``, so ``β = rep / rel² − 1``,
    and two maps agree at ``rel_a · rel_b · (1 + sqrt(β_a β_b))``. For twins
    (same ``n``) that is the reproducibility itself; against a converged map
    (``β_b = 0``) the reliability. A NaN reproducibility counts as ``β = 0``
    (the product rule, a lower floor).

    Returns:
        float64 array in [-1, 1] of the broadcast shape; NaN where a
        reliability is NaN.
    """
    rel_a, rep_a, rel_b, rep_b = (np.asarray(v, dtype=np.float64) for v in (rel_a, rep_a, rel_b, rep_b))

    def bias(rel: np.ndarray, rep: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = rep / np.square(rel) - 1.0
        return np.where(np.isfinite(beta), np.maximum(beta, 0.0), 0.0)

    return np.clip(rel_a * rel_b * (1.0 + np.sqrt(bias(rel_a, rep_a) * bias(rel_b, rep_b))), -1.0, 1.0)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a ``size × size`` window around each element (edges: the part inside)."""
    if size <= 1:
        return x
    return torch.nn.functional.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def _box_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over a ``size × size`` window around each element (edges: the part inside)."""
    if size <= 1:
        return x
    return torch.nn.functional.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=True) * size**2


def _unit_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of each map ``(M, ...)`` as ``(M, L)`` float64, centred and of unit norm: one sort per map.

    For simulated Gaussian draws, which have no ties (probability zero):
    ``ranks.spearman`` averages tied ranks at several times the cost. A map of
    one element has no ranks to correlate: NaN.
    """
    flat = x.reshape(x.shape[0], -1)
    order = flat.argsort(dim=1)
    pos = torch.arange(flat.shape[1], dtype=torch.float64, device=x.device).expand_as(order)
    r = torch.empty_like(pos).scatter_(1, order, pos)
    r = r - r.mean(dim=1, keepdim=True)
    return r / r.norm(dim=1, keepdim=True)  # 0/0 = NaN for one element


def _rank_correlation(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Spearman of maps from their :func:`_unit_ranks`."""
    return (ra * rb).sum(dim=1).clamp(-1.0, 1.0)


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
