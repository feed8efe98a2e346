"""Helpers for the base maps: guided-backprop hooks, IG quadrature, layout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # A copy, so that a later in-place op on the ReLU output cannot
        # invalidate this node (ResNets use ReLU(inplace=True)).
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.clamp(min=0)


def _guided_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # ReLU's own backward masks by (input > 0); clamping the incoming gradient
    # first gives guided backprop's (input > 0) · max(grad, 0).
    return _PositiveGradient.apply(output)


@contextlib.contextmanager
def guided_relu_hooks(model: nn.Module) -> Iterator[None]:
    """Turns every ``nn.ReLU`` of ``model`` into a guided-backprop ReLU for the block.

    Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806) zeroes
    negative gradients at each ReLU on the way back. The hooks are removed on
    exit, also after an error.
    """
    handles = [m.register_forward_hook(_guided_hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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


def prefers_channels_last(model: nn.Module) -> bool:
    """True when the model's first 4-D weight is stored channels_last."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False
