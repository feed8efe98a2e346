"""Input × gradient, x̃ ⊙ ∂S_c/∂x̃ (Shrikumar et al. 2016, arXiv:1605.01713)."""

from __future__ import annotations

import torch

from sgcore.attribution.bases.base import Pointwise


class InputXGradient(Pointwise):
    """The gradient at the noisy point times the point itself."""

    name = "input_x_gradient"

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return grads * points
