"""The plain gradient ∂S_c/∂x̃ (Simonyan et al. 2014, arXiv:1312.6034)."""

from __future__ import annotations

from sgcore.attribution.bases.base import Pointwise


class Gradient(Pointwise):
    """The gradient of the target score at the noisy point: SmoothGrad's own base."""

    name = "gradient"
