"""Pure metrics on saliency maps: numpy arrays in, numbers out.

Every function takes one map ``(H, W)`` or a batch ``(N, H, W)`` and returns a
float or an ``(N,)`` float64 array. Maps are read as magnitudes unless a
function says otherwise (``spearman`` and ``ssim`` compare maps as given).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sgcore.attribution.ranks import average_ranks
from sgcore.attribution.ranks import spearman as rank_correlation

_EPS = 1e-12


def entropy(maps: np.ndarray, *, normalized: bool = True) -> np.ndarray | float:
    """Shannon entropy of ``|m| / sum |m|`` (the "Complexity" of Bhatt et al. 2020).

    Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model
    Explanations", IJCAI 2020. Low entropy = mass on few pixels.

    Args:
        maps: ``(H, W)`` or ``(N, H, W)``.
        normalized: divide by ``log(H * W)`` so that a uniform map scores 1 and
            a single-pixel map 0; otherwise nats.

    Returns:
        Entropy per map. An all-zero map counts as uniform.
    """
    m, single = _batch(maps, "maps")
    p = _distribution(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    h = terms.sum(axis=1)
    if normalized:
        size = p.shape[1]
        h = h / math.log(size) if size > 1 else np.zeros_like(h)
    return _unbatch(h, single)


def gini(maps: np.ndarray) -> np.ndarray | float:
    """Gini index of ``|m|``: 0 for a uniform map, ``1 - 1/N`` for one pixel.

    The sparseness measure of Hurley & Rickard, "Comparing Measures of
    Sparsity", IEEE Trans. Inf. Theory 2009, used for attributions by
    Chalasani et al., "Concise Explanations of Neural Networks using
    Adversarial Training", ICML 2020:
    ``G = sum_k (2k - N - 1) c_(k) / (N sum_k c_(k))`` over sorted magnitudes.

    Args:
        maps: ``(H, W)`` or ``(N, H, W)``. An all-zero map scores 0.
    """
    m, single = _batch(maps, "maps")
    c = np.sort(np.abs(m), axis=1)
    n = c.shape[1]
    total = c.sum(axis=1)
    k = np.arange(1, n + 1, dtype=np.float64)
    num = ((2.0 * k - n - 1.0) * c).sum(axis=1)
    g = np.divide(num, n * total, out=np.zeros_like(total), where=total > _EPS)
    return _unbatch(g, single)


def border_mask(height: int, width: int, *, width_fraction: float = 0.125) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the band along the image edges.

    The band is ``round(width_fraction * min(height, width))`` pixels wide
    (at least one pixel) on every side.
    """
    if not 0.0 < width_fraction < 0.5:
        raise ValueError(f"width_fraction must be in (0, 0.5); got {width_fraction}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive; got {height}x{width}")
    band = max(1, int(round(width_fraction * min(height, width))))
    mask = np.ones((height, width), dtype=bool)
    mask[band : height - band, band : width - band] = False
    return mask


def border_share(maps: np.ndarray, *, width_fraction: float = 0.125) -> np.ndarray | float:
    """Share of ``|m|`` mass on the border band (see :func:`border_mask`).

    A map that ignores position scores the band's area share
    (``border_mask(...).mean()``); a model that explains by the background
    frame scores well above it, one that looks at a centred object below it.
    An all-zero map counts as uniform.
    """
    m2, single = _batch(maps, "maps", flatten=False)
    mask = border_mask(m2.shape[1], m2.shape[2], width_fraction=width_fraction)
    p = _distribution(m2.reshape(m2.shape[0], -1))
    share = p[:, mask.reshape(-1)].sum(axis=1)
    return _unbatch(share, single)


def finite_mean(values: Any) -> float | None:
    """Mean of the finite values (NaN marks "no estimate"); None when there is none."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else None


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average rank) along the last axis."""
    v = np.asarray(values, dtype=np.float64)
    return average_ranks(torch.from_numpy(v)).numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Spearman rank correlation between paired maps, over all pixels.

    Used by Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
    to compare maps of a trained and a randomized model. Ties get average
    ranks (as ``scipy.stats.spearmanr``). A constant map has no ranking: the
    result is NaN for that pair.

    Args:
        a, b: ``(H, W)`` or ``(N, H, W)`` of the same shape.
    """
    x, single = _batch(a, "a")
    y, _ = _batch(b, "b")
    _same_shape(x, y)
    rho = rank_correlation(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)),
                           torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))).numpy()
    return _unbatch(rho, single)


def minmax(maps: np.ndarray) -> np.ndarray:
    """Scales each map to [0, 1] (a constant map becomes all zeros)."""
    m, single = _batch(maps, "maps", flatten=False)
    lo = m.reshape(m.shape[0], -1).min(axis=1)[:, None, None]
    hi = m.reshape(m.shape[0], -1).max(axis=1)[:, None, None]
    span = hi - lo
    out = np.divide(m - lo, span, out=np.zeros_like(m), where=span > _EPS)
    return out[0] if single else out


def _gaussian_window(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of ``(N, H, W)`` with the 1-D window ``w``."""
    k = len(w)
    h = img.shape[1] - k + 1
    wd = img.shape[2] - k + 1
    rows = sum(w[i] * img[:, i : i + h, :] for i in range(k))
    return sum(w[j] * rows[:, :, j : j + wd] for j in range(k))


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray | float:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of paired maps.

    Gaussian-weighted local statistics (σ = 1.5, an 11-pixel window), averaged
    over the positions where the window fits inside the map; this equals
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range)``.
    Adebayo et al. (NeurIPS 2018) compare min-max normalized maps with it:
    pass ``minmax(a), minmax(b)``.

    Args:
        a, b: ``(H, W)`` or ``(N, H, W)`` of the same shape, at least 11 pixels
            on each side.
        data_range: value range of the maps (1 for min-max normalized).
    """
    x, single = _batch(a, "a", flatten=False)
    y, _ = _batch(b, "b", flatten=False)
    _same_shape(x, y)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0; got {data_range}")
    w = _gaussian_window(sigma, 3.5)
    if min(x.shape[1:]) < len(w):
        raise ValueError(
            f"maps must be at least {len(w)}x{len(w)} for SSIM; got {x.shape[1]}x{x.shape[2]}"
        )
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx * mx
    vy = _filter_valid(y * y, w) - my * my
    cxy = _filter_valid(x * y, w) - mx * my
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return _unbatch(s.reshape(s.shape[0], -1).mean(axis=1), single)


def mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray | float:
    """Share of ``|m|`` mass inside a binary object mask.

    The "relevance mass accuracy" of Arras, Osman & Samek, "CLEVR-XAI",
    Information Fusion 2022 (also the energy-based pointing game of Wang et
    al., Score-CAM, CVPRW 2020). Compare it with :func:`mask_area`: a map
    that ignores the object scores about the mask's share of the image. An
    all-zero map counts as uniform.

    Args:
        maps: ``(H, W)`` or ``(N, H, W)``.
        masks: same shape, boolean or {0, 1} (anything > 0 is inside).
    """
    m, single = _batch(maps, "maps")
    k, _ = _batch(masks, "masks")
    _same_shape(m, k)
    p = _distribution(m)
    return _unbatch((p * (k > 0)).sum(axis=1), single)


def mask_area(masks: np.ndarray) -> np.ndarray | float:
    """Share of the image inside each mask: ``(H, W)`` or ``(N, H, W)``."""
    k, single = _batch(masks, "masks")
    return _unbatch((k > 0).mean(axis=1), single)


def pointing_game(maps: np.ndarray, masks: np.ndarray, *, tolerance: int = 0) -> np.ndarray | bool:
    """Whether the map's maximum falls on the object (Zhang et al., ECCV 2016).

    "Top-down Neural Attention by Excitation Backprop": a hit when the most
    salient pixel lies inside the mask, or within ``tolerance`` pixels of it
    (the paper uses 15 px at 224 px). When several pixels share the maximum,
    a hit on any of them counts, as in Quantus' ``PointingGame``.

    Args:
        maps: ``(H, W)`` or ``(N, H, W)``, compared by magnitude.
        masks: same shape, boolean or {0, 1}.
        tolerance: pixels of slack around the mask (a square neighbourhood).

    Returns:
        Boolean hit per map.
    """
    m, single = _batch(maps, "maps", flatten=False)
    k, _ = _batch(masks, "masks", flatten=False)
    _same_shape(m, k)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int; got {tolerance!r}")
    inside = k > 0
    if tolerance:
        inside = _dilate(inside, tolerance)
    mag = np.abs(m).reshape(m.shape[0], -1)
    top = mag == mag.max(axis=1, keepdims=True)
    hits = (top & inside.reshape(inside.shape[0], -1)).any(axis=1)
    return bool(hits[0]) if single else hits


def auc(curve: np.ndarray) -> np.ndarray | float:
    """Area under curves sampled at equal steps over [0, 1] (trapezoid rule).

    Args:
        curve: ``(S,)`` or ``(N, S)`` with ``S >= 2`` points at fractions
            ``0, 1/(S-1), ..., 1``.
    """
    c = np.asarray(curve, dtype=np.float64)
    single = c.ndim == 1
    if c.ndim not in (1, 2) or c.shape[-1] < 2:
        raise ValueError(f"curve must have shape (S,) or (N, S) with S >= 2; got {c.shape}")
    c2 = c[None] if single else c
    area = (c2[:, 1:] + c2[:, :-1]).sum(axis=1) / (2.0 * (c2.shape[1] - 1))
    return float(area[0]) if single else area


# --------------------------------------------------------------------------- #
# Helpers.
# --------------------------------------------------------------------------- #


def _batch(x: np.ndarray, name: str, *, flatten: bool = True) -> tuple[np.ndarray, bool]:
    """``(H, W)`` or ``(N, H, W)`` -> float64 ``(N, H*W)`` (or ``(N, H, W)``)."""
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array; got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (N, H, W); got {arr.shape}")
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; got NaN or inf values")
    if flatten:
        arr = arr.reshape(arr.shape[0], -1)
    return arr, single


def _unbatch(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape; got {a.shape} and {b.shape}")


def _distribution(m: np.ndarray) -> np.ndarray:
    """``|m|`` per row scaled to sum 1; all-zero rows become uniform."""
    mag = np.abs(m)
    total = mag.sum(axis=1, keepdims=True)
    uniform = np.full_like(mag, 1.0 / mag.shape[1])
    return np.where(total > _EPS, mag / np.where(total > _EPS, total, 1.0), uniform)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of ``(N, H, W)`` boolean masks by ``radius`` pixels."""
    out = mask.copy()
    h, w = mask.shape[1:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = mask[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[:, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out
