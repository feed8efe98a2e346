"""SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) as one batched kernel.

    M̂(x) = 1/n · Σ_k M(x + ε_k),   ε_k ~ N(0, σ²),   σ = noise_level · (max(x) − min(x))

σ is taken per image over its whole model-input tensor, as the paper and the
authors' library do. The noisy copies of all images in a call go through the
model as one expanded batch, cut into chunks of at most ``max_batch`` samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from sgcore.attribution._noise import standard_noise

Aggregate = Literal["mean", "square", "var"]
Base = Literal["gradient", "input_x_gradient"]
Precision = Literal["fp32", "bf16"]

AGGREGATES: tuple[str, ...] = ("mean", "square", "var")
BASES: tuple[str, ...] = ("gradient", "input_x_gradient")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# Upper bound on samples per forward pass when the caller gives none.
_CPU_SAMPLE_BUDGET = 2**23  # float32 input elements per chunk on the CPU


def smoothgrad(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_samples: int = 50,
    noise_level: float = 0.15,
    aggregate: Aggregate = "mean",
    base: Base = "gradient",
    seeds: torch.Tensor | None = None,
    precision: Precision = "fp32",
    max_batch: int | None = None,
) -> torch.Tensor:
    """SmoothGrad maps for a batch of images.

    Args:
        model: classifier returning logits ``(N, num_classes)``. Run it in the
            mode you want (``eval()`` for batch-independent maps); the kernel
            leaves its mode, parameters, ``requires_grad`` flags and ``.grad``
            exactly as they were.
        images: ``(B, C, H, W)`` float tensor in model-input space (after
            normalization). Never modified.
        targets: ``(B,)`` integer class indices whose score ``S_c`` is explained.
        n_samples: noisy samples per image (the paper: ~50 is plenty).
        noise_level: σ as a fraction of each image's value range, in [0, 1].
            0 returns the base attribution exactly.
        aggregate: ``"mean"`` (SmoothGrad), ``"square"`` (mean of squares,
            SmoothGrad²) or ``"var"`` (VarGrad, never negative).
        base: sensitivity map that is smoothed: ``"gradient"`` (∂S_c/∂x) or
            ``"input_x_gradient"`` ((x+ε) ⊙ ∂S_c/∂x at the noisy point).
        seeds: ``(B,)`` integer seed per image; the map of an image depends only
            on its own seed, never on its batch neighbours or on ``max_batch``.
            None uses seed 0 for every image.
        precision: ``"fp32"``, or ``"bf16"`` autocast with float32 accumulation.
        max_batch: at most this many noisy samples per forward pass; None picks
            a bound from the input size.

    Returns:
        float32 tensor ``(B, C, H, W)`` on the device of ``images``.
    """
    _check_model(model)
    batch, shape = _check_images(images)
    targets = _check_targets(targets, batch, images.device)
    seed_list = _check_seeds(seeds, batch)
    _check_choice("aggregate", aggregate, AGGREGATES)
    _check_choice("base", base, BASES)
    _check_choice("precision", precision, PRECISIONS)
    n_samples = _check_int("n_samples", n_samples, minimum=1)
    noise_level = _check_noise_level(noise_level)
    if max_batch is not None:
        max_batch = _check_int("max_batch", max_batch, minimum=1)
    else:
        max_batch = default_max_batch(images.device, shape)

    x = images.detach().to(torch.float32)
    # With no noise every sample is the same point: one sample is the exact
    # base attribution, where averaging n copies would add rounding error.
    n = 1 if noise_level == 0.0 else n_samples
    flat = x.reshape(batch, -1)
    sigma = noise_level * (flat.amax(dim=1) - flat.amin(dim=1))

    acc = _Accumulator(aggregate, batch, shape, x.device)
    grad_fn = _input_gradient_fn(model, precision, x.device)
    with _input_gradients_only(model):
        for pieces, noisy, chunk_targets in _chunks(x, sigma, seed_list, targets, n, max_batch):
            grads = grad_fn(noisy, chunk_targets)
            maps = grads * noisy if base == "input_x_gradient" else grads
            acc.add(pieces, maps)
    return acc.result()


def default_max_batch(device: torch.device, shape: tuple[int, ...]) -> int:
    """A chunk size that keeps one forward+backward within a sane memory bound."""
    numel = 1
    for s in shape:
        numel *= s
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Activations of a deep CNN take roughly 100–300× the input per sample.
        return max(1, min(1024, int(free // (numel * 4 * 300))))
    return max(1, min(256, _CPU_SAMPLE_BUDGET // numel))


# --------------------------------------------------------------------------- #
# Chunking: the expanded batch (images × samples) in fixed-size pieces.
# --------------------------------------------------------------------------- #


def _chunks(
    x: torch.Tensor,
    sigma: torch.Tensor,
    seeds: list[int],
    targets: torch.Tensor,
    n: int,
    max_batch: int,
) -> Iterator[tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]]:
    """Yields (pieces, noisy inputs, targets) per chunk of ≤ ``max_batch`` samples.

    A piece ``(image, start, stop)`` says that rows ``start:stop`` of that
    image's noise are in the chunk, in order. Each image's noise is drawn once,
    whole, from its own seed, and sliced across chunks.
    """
    shape = tuple(x.shape[1:])
    pieces: list[tuple[int, int, int]] = []
    parts: list[torch.Tensor] = []
    part_targets: list[torch.Tensor] = []
    room = max_batch
    for i in range(x.shape[0]):
        noise = standard_noise(n, shape, seeds[i], device=x.device)
        start = 0
        while start < n:
            stop = min(n, start + room)
            pieces.append((i, start, stop))
            parts.append(x[i].unsqueeze(0) + sigma[i] * noise[start:stop])
            part_targets.append(targets[i].expand(stop - start))
            room -= stop - start
            start = stop
            if room == 0:
                yield pieces, torch.cat(parts), torch.cat(part_targets)
                pieces, parts, part_targets, room = [], [], [], max_batch
    if pieces:
        yield pieces, torch.cat(parts), torch.cat(part_targets)


class _Accumulator:
    """Per-image running mean / mean of squares / variance in float32.

    Variance uses Chan et al.'s pairwise update, whose terms are all
    non-negative, so VarGrad can never come out below zero.
    """

    def __init__(self, aggregate: str, batch: int, shape: tuple[int, ...], device: torch.device):
        self.aggregate = aggregate
        self.count = [0] * batch
        self.mean = torch.zeros((batch, *shape), dtype=torch.float32, device=device)
        self.m2 = torch.zeros_like(self.mean) if aggregate == "var" else None

    def add(self, pieces: list[tuple[int, int, int]], maps: torch.Tensor) -> None:
        offset = 0
        for i, start, stop in pieces:
            block = maps[offset : offset + stop - start]
            offset += stop - start
            n_b = stop - start
            if self.aggregate == "square":
                block = block * block
            mean_b = block.mean(dim=0)
            n_a = self.count[i]
            total = n_a + n_b
            delta = mean_b - self.mean[i]
            if self.m2 is not None:
                m2_b = (block - mean_b).square().sum(dim=0)
                self.m2[i] += m2_b + delta.square() * (n_a * n_b / total)
            self.mean[i] += delta * (n_b / total)
            self.count[i] = total

    def result(self) -> torch.Tensor:
        if self.m2 is not None:
            counts = torch.tensor(self.count, dtype=torch.float32, device=self.m2.device)
            return self.m2 / counts.view(-1, *([1] * (self.m2.dim() - 1)))
        return self.mean


# --------------------------------------------------------------------------- #
# Gradients of the target score with respect to the input only.
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Freezes parameters for the call and restores every flag afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _input_gradient_fn(
    model: nn.Module, precision: str, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def autocast() -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_fn(noisy: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        noisy = noisy.detach().requires_grad_(True)
        with autocast():
            logits = model(noisy)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model must return logits of shape (N, num_classes); got {got}")
        if int(targets.max()) >= logits.shape[1]:
            raise ValueError(
                f"targets must be class indices below num_classes={logits.shape[1]}; "
                f"got {int(targets.max())}"
            )
        score = logits.float().gather(1, targets.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(score, noisy)
        return grad.to(torch.float32)

    return grad_fn


# --------------------------------------------------------------------------- #
# Argument checks: say what was expected and what came.
# --------------------------------------------------------------------------- #


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def _check_images(images: object) -> tuple[int, tuple[int, ...]]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W); got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor; got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image; got an empty batch")
    return images.shape[0], tuple(images.shape[1:])


def _check_targets(targets: object, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of shape (B,); got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"targets must be an integer tensor; got {targets.dtype}")
    if tuple(targets.shape) != (batch,):
        raise ValueError(f"targets must have shape ({batch},) to match images; got {tuple(targets.shape)}")
    if batch and int(targets.min()) < 0:
        raise ValueError(f"targets must be non-negative class indices; got {int(targets.min())}")
    return targets.to(device=device, dtype=torch.int64)


def _check_seeds(seeds: object, batch: int) -> list[int]:
    if seeds is None:
        return [0] * batch
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be a torch.Tensor of shape (B,) or None; got {type(seeds).__name__}")
    if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.is_complex():
        raise TypeError(f"seeds must be an integer tensor; got {seeds.dtype}")
    if tuple(seeds.shape) != (batch,):
        raise ValueError(f"seeds must have shape ({batch},) to match images; got {tuple(seeds.shape)}")
    return [int(s) for s in seeds.tolist()]


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _check_noise_level(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"noise_level must be a float; got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"noise_level must be in [0, 1]; got {value}")
    return value
