"""What every base map shares: the :class:`Base` protocol and the :class:`Pointwise` helper."""

from __future__ import annotations

import contextlib
from typing import ClassVar, Protocol

import torch
from torch import nn


class Base(Protocol):
    """One sensitivity map ``M(x̃)`` of a noisy point, built from input gradients of the target score.

    The kernels build one instance per call, ``cls(x, **options)`` with ``x``
    the float32 images ``(B, C, H, W)``: ``smoothgrad`` passes its options
    ``ig_steps`` and ``ig_baseline`` (a base checks those it uses and ignores
    the others); ``smoothgrad_adaptive`` passes none, and takes pointwise bases
    only. Beyond that the kernels use only what is below.
    Rows are what the model sees: sample ``k`` of image ``i`` is the noisy point
    ``x̃_k``; a base with ``steps > 1`` turns each point into ``steps`` rows, and
    its map of the point is ``sample_maps(i, Σ_j weights[j] · g_j, x̃)``, the
    gradients ``g_j`` of its rows summed with ``weights``.

    Attributes:
        name: the ``base`` value (``sgcore.settings.Base``).
        pointwise: True when the map of ``x̃`` needs the gradient at ``x̃``
            only: one row per sample, no quadrature. The adaptive kernel takes
            these bases only.
        steps: model rows per sample (1 for a pointwise base).
        weights: float32 ``(steps,)`` on the images' device: how the rows'
            gradients of one sample are summed (unused when ``pointwise``).
    """

    name: ClassVar[str]
    pointwise: ClassVar[bool]
    steps: int
    weights: torch.Tensor

    def hooks(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """A context entered around every forward and backward pass of the call."""
        ...

    def rows(self, i: int, points: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Model inputs ``(m, C, H, W)`` of image ``i``: row ``r`` at ``points[r]``, quadrature step ``step[r]``."""
        ...

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Per-sample maps ``(m, C, H, W)`` of image ``i`` from its (summed) gradients at ``points``."""
        ...


class Pointwise:
    """Defaults of a pointwise base: one row per sample at ``x̃``, no hooks.

    A new pointwise base subclasses this, sets ``name`` and overrides
    ``sample_maps`` (and ``hooks`` where the backward pass must change).
    """

    name: ClassVar[str]
    pointwise: ClassVar[bool] = True

    def __init__(self, x: torch.Tensor, **options: object) -> None:
        self.steps = 1
        self.weights = torch.ones(1, dtype=torch.float32, device=x.device)

    def hooks(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def rows(self, i: int, points: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return points

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return grads
