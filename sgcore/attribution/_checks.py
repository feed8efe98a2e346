"""Argument checks of the kernels: each says what was expected and what came."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn


def check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def check_images(images: object) -> tuple[int, tuple[int, ...]]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W); got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor; got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image; got an empty batch")
    return images.shape[0], tuple(images.shape[1:])


def check_targets(targets: object, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of shape (B,); got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"targets must be an integer tensor; got {targets.dtype}")
    if tuple(targets.shape) != (batch,):
        raise ValueError(f"targets must have shape ({batch},) to match images; got {tuple(targets.shape)}")
    if batch and int(targets.min()) < 0:
        raise ValueError(f"targets must be non-negative class indices; got {int(targets.min())}")
    return targets.to(device=device, dtype=torch.int64)


def check_seeds(seeds: object, batch: int) -> list[int]:
    if seeds is None:
        return [0] * batch
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be a torch.Tensor of shape (B,) or None; got {type(seeds).__name__}")
    if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.is_complex():
        raise TypeError(f"seeds must be an integer tensor; got {seeds.dtype}")
    if tuple(seeds.shape) != (batch,):
        raise ValueError(f"seeds must have shape ({batch},) to match images; got {tuple(seeds.shape)}")
    return [int(s) for s in seeds.tolist()]


def check_choice(name: str, value: object, choices: Collection[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def check_noise_level(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"noise_level must be a float; got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"noise_level must be in [0, 1]; got {value}")
    return value
