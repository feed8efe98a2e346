"""Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365) of the noisy point.

    M(x̃) = (x̃ − x') ⊙ ∫₀¹ ∂S_c/∂x(x' + α(x̃ − x')) dα

The integral is a Gauss–Legendre quadrature on [0, 1] (Captum's default
``method="gausslegendre"``): each sample becomes ``ig_steps`` rows. The
SmoothGrad paper smooths IG too.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from sgcore.attribution._checks import check_int


class IntegratedGradients:
    """Path integral of the gradient from the baseline ``x'`` to the noisy point.

    Options: ``ig_steps`` (integration points, >= 1) and ``ig_baseline`` (a
    number, or a tensor broadcastable to the images' ``(B, C, H, W)``). One
    step is the midpoint rule, not the plain gradient: never pointwise.
    """

    name = "integrated_gradients"
    pointwise = False

    def __init__(self, x: torch.Tensor, *, ig_steps: object, ig_baseline: object, **options: object) -> None:
        self.steps = check_int("ig_steps", ig_steps, minimum=1)
        self.baseline = check_baseline(ig_baseline, x)
        self.alphas, self.weights = integration_rule(self.steps, device=x.device)

    def hooks(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def rows(self, i: int, points: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        ref = self.baseline[i].unsqueeze(0)
        alpha = self.alphas[step].view(-1, *([1] * (points.dim() - 1)))
        return ref + alpha * (points - ref)

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return grads * (points - self.baseline[i].unsqueeze(0))


def integration_rule(steps: int, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights on [0, 1] for integrated gradients.

    The same rule as Captum's default ``method="gausslegendre"``; the weights
    sum to 1.

    Returns:
        ``(alphas, weights)``, two float32 tensors of shape ``(steps,)``.
    """
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor(0.5 * (nodes + 1.0), dtype=torch.float32, device=device)
    return alphas, torch.tensor(0.5 * weights, dtype=torch.float32, device=device)


def check_baseline(baseline: object, x: torch.Tensor) -> torch.Tensor:
    """``ig_baseline`` as a float32 tensor of the images' shape."""
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise TypeError(f"ig_baseline must be a number or a torch.Tensor; got {type(baseline).__name__}")
    if not isinstance(baseline, torch.Tensor):
        return torch.full_like(x, float(baseline))
    try:
        return torch.broadcast_to(baseline.detach().to(device=x.device, dtype=torch.float32), x.shape)
    except RuntimeError as e:
        raise ValueError(
            f"ig_baseline must be broadcastable to {tuple(x.shape)}; got {tuple(baseline.shape)}"
        ) from e
