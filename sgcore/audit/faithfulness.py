"""Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE: Randomized
Input Sampling for Explanation of Black-box Models", BMVC 2018).

Deletion removes pixels from the image in order of decreasing saliency and
tracks the target's softmax probability: a faithful map makes it fall fast
(low AUC). Insertion starts from a blurred image and puts the pixels back in
the same order: the probability should rise fast (high AUC). Both are
compared with a random pixel order on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgcore.audit.metrics import auc


@dataclass(frozen=True, kw_only=True)
class FaithfulnessResult:
    """Per-image curves, ``(N, steps + 1)`` probabilities at fractions 0..1."""

    deletion: np.ndarray
    insertion: np.ndarray
    deletion_random: np.ndarray
    insertion_random: np.ndarray

    def aucs(self) -> dict[str, np.ndarray]:
        """Per-image areas under each curve."""
        return {
            "deletion_auc": np.atleast_1d(auc(self.deletion)),
            "insertion_auc": np.atleast_1d(auc(self.insertion)),
            "deletion_auc_random": np.atleast_1d(auc(self.deletion_random)),
            "insertion_auc_random": np.atleast_1d(auc(self.insertion_random)),
        }


def saliency_order(maps: torch.Tensor) -> torch.Tensor:
    """Pixel indices ``(B, H*W)`` by decreasing ``|m|`` (ties: lower index first)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W); got {tuple(maps.shape)}")
    flat = maps.abs().reshape(maps.shape[0], -1).to(torch.float64)
    return torch.argsort(-flat, dim=1, stable=True)


def random_order(batch: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """A random pixel order ``(batch, pixels)`` per image from ``generator``, on its device.

    :func:`deletion_insertion` draws it on the CPU, so the order is the same
    whichever device evaluates the model.
    """
    return torch.stack([torch.randperm(pixels, generator=generator, device=generator.device) for _ in range(batch)])


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` per channel, reflect-padded."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0; got {sigma}")
    radius = max(1, int(3.0 * sigma + 0.5))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w = (w / w.sum()).to(images.dtype)
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def perturbation_curve(
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    *,
    steps: int = 32,
    max_batch: int = 256,
) -> np.ndarray:
    """Target probability as pixels switch from ``start`` to ``end`` in ``order``.

    At step ``k`` of ``steps`` the first ``round(k * H * W / steps)`` pixels
    of ``order`` (all channels) hold ``end``'s values, the rest ``start``'s.
    Deletion is ``start=image, end=baseline``; insertion is
    ``start=blurred, end=image``.

    Args:
        model: classifier returning logits.
        start, end: ``(B, C, H, W)`` model-input images.
        targets: ``(B,)`` classes whose probability is tracked.
        order: ``(B, H*W)`` pixel indices, most important first (any device).
        steps: number of steps; the curve has ``steps + 1`` points.
        max_batch: images per forward pass.

    Returns:
        float64 ``(B, steps + 1)`` softmax probabilities.
    """
    if start.shape != end.shape or start.dim() != 4:
        raise ValueError(
            f"start and end must be (B, C, H, W) of one shape; got {tuple(start.shape)} and {tuple(end.shape)}"
        )
    b, c, h, w = start.shape
    if tuple(order.shape) != (b, h * w):
        raise ValueError(f"order must have shape ({b}, {h * w}); got {tuple(order.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    device = start.device
    counts = [int(round(k * h * w / steps)) for k in range(steps + 1)]
    # rank[b, p] = position of pixel p in the order; pixel p is switched at
    # step k when rank < counts[k].
    order = order.to(device)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=device).expand(b, -1).contiguous())
    thresholds = torch.tensor(counts, device=device).view(1, -1, 1)
    switched = (rank.unsqueeze(1) < thresholds).view(b, steps + 1, 1, h, w)
    inputs = torch.where(switched, end.to(device).unsqueeze(1), start.unsqueeze(1)).reshape(-1, c, h, w)
    tgt = targets.to(device).repeat_interleave(steps + 1)
    probs = []
    with torch.no_grad():
        for i in range(0, inputs.shape[0], max_batch):
            logits = model(inputs[i : i + max_batch]).float()
            p = torch.softmax(logits, dim=1).gather(1, tgt[i : i + max_batch].unsqueeze(1))
            probs.append(p.squeeze(1))
    return torch.cat(probs).view(b, steps + 1).to(torch.float64).cpu().numpy()


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 32,
    blur_sigma: float | None = None,
    seed: int = 0,
    max_batch: int = 256,
) -> FaithfulnessResult:
    """Deletion and insertion curves for saliency order and a random order.

    Deletion replaces pixels with 0 in model-input space, i.e. the
    normalization mean colour (a neutral grey rather than an out-of-range
    black). Insertion starts from the image blurred with ``blur_sigma``
    pixels (None: ``min(H, W) / 16``, strong enough to wipe out object
    shape on small images; RISE uses σ = 5 at 224 px).

    Args:
        model: classifier in eval mode.
        images: ``(B, C, H, W)`` model-input images.
        targets: ``(B,)`` explained classes.
        maps: ``(B, H, W)`` saliency maps (magnitude gives the order), on any device.
        steps: points per curve minus one.
        blur_sigma: insertion start blur in pixels.
        seed: seed of the random orders (per call).
        max_batch: images per forward pass.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(maps.shape) != (b, h, w):
        raise ValueError(f"maps must have shape ({b}, {h}, {w}) to match images; got {tuple(maps.shape)}")
    x = images.detach().to(torch.float32)
    sigma = blur_sigma if blur_sigma is not None else max(1.0, min(h, w) / 16.0)
    blurred = blur(x, sigma)
    grey = torch.zeros_like(x)
    ordered = saliency_order(maps)
    generator = torch.Generator().manual_seed(int(seed))
    shuffled = random_order(b, h * w, generator)
    kw = {"steps": steps, "max_batch": max_batch}
    return FaithfulnessResult(
        deletion=perturbation_curve(model, x, grey, targets, ordered, **kw),
        insertion=perturbation_curve(model, blurred, x, targets, ordered, **kw),
        deletion_random=perturbation_curve(model, x, grey, targets, shuffled, **kw),
        insertion_random=perturbation_curve(model, blurred, x, targets, shuffled, **kw),
    )

