"""Turning (B, C, H, W) attributions into 2-D maps for storage and display."""

from __future__ import annotations

import torch

from sgcore.settings import REDUCTIONS, Reduction  # noqa: F401 - the owner; re-exported


def reduce_channels(maps: torch.Tensor, how: Reduction = "abs_sum") -> torch.Tensor:
    """Collapses the channel axis: ``(B, C, H, W)`` -> ``(B, H, W)``.

    ``abs_sum`` is the paper's grayscale view (sum of absolute values over
    colour channels); ``sum`` keeps the sign; ``max_abs`` takes the channel of
    largest magnitude.

    Args:
        maps: ``(B, C, H, W)`` attributions.
        how: ``"abs_sum"``, ``"sum"`` or ``"max_abs"``.

    Returns:
        ``(B, H, W)`` tensor of the dtype of ``maps``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a tensor of shape (B, C, H, W); got {got}")
    if how == "abs_sum":
        return maps.abs().sum(dim=1)
    if how == "sum":
        return maps.sum(dim=1)
    if how == "max_abs":
        return maps.abs().amax(dim=1)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {how!r}")


def clip_percentile(maps: torch.Tensor, q: float = 99.0, *, signed: bool = False) -> torch.Tensor:
    """Scales 2-D maps for display, clipping outliers at the ``q``-th percentile.

    As in the authors' visualisations: absolute maps go to [0, 1] with the
    per-image ``q``-th percentile of |m| mapped to 1; with ``signed=True`` maps
    go to [-1, 1] for a diverging colour map.

    Args:
        maps: ``(B, H, W)`` or ``(H, W)`` tensor.
        q: percentile in (0, 100].
        signed: keep the sign (diverging view) instead of the magnitude.

    Returns:
        float32 tensor of the shape of ``maps``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a tensor of shape (B, H, W) or (H, W); got {got}")
    if isinstance(q, bool) or not isinstance(q, (int, float)):
        raise TypeError(f"q must be a float; got {type(q).__name__}")
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q must be in (0, 100]; got {q}")
    single = maps.dim() == 2
    m = maps.unsqueeze(0) if single else maps
    m = m.to(torch.float32)
    mag = m.abs().reshape(m.shape[0], -1)
    scale = torch.quantile(mag, q / 100.0, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    out = (m / scale).clamp(-1.0, 1.0) if signed else (m.abs() / scale).clamp(0.0, 1.0)
    return out[0] if single else out
