"""Deterministic per-image noise.

Every image draws its noise from its own generator, seeded with its own seed,
all ``n`` samples at once. The noise an image sees therefore depends only on
(seed, n, shape, device type): not on its batch neighbours, on how the samples
are chunked, or on a retry (DESIGN.md contract 2).
"""

from __future__ import annotations

from typing import Literal

import torch

NoiseKind = Literal["gaussian"]
NOISE_KINDS: tuple[str, ...] = ("gaussian",)


def standard_noise(
    n: int,
    shape: tuple[int, ...],
    seed: int,
    *,
    device: torch.device,
    kind: str = "gaussian",
) -> torch.Tensor:
    """Draws ``n`` standard-normal noise tensors of ``shape`` for one image.

    Returns:
        float32 tensor of shape ``(n, *shape)`` on ``device``.
    """
    if kind != "gaussian":
        raise ValueError(f"noise must be one of {NOISE_KINDS}; got {kind!r}")
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return torch.randn((n, *shape), generator=gen, device=device, dtype=torch.float32)
