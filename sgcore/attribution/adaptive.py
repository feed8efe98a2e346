"""Adaptive SmoothGrad: each image is sampled in rounds until its map is reliable.

Every image draws its noise in blocks of ``reliability.BLOCK`` samples; block
``b`` comes from its own generator seeded with ``(image seed, b)``, so sample
``k`` of an image is always the same noise, however many samples it ends up
with (DESIGN.md contract 2). After each round of ``round_samples`` samples
(``min_samples`` first) the image's reliability is estimated from its samples
(``sgcore.attribution.reliability``); it stops once the estimate clears
``target_reliability`` by its own calibration error, or at ``max_samples``.
The estimate at ``n`` samples is off by about ``STOP_MARGIN * sqrt(16 / n)``
(0.024 / 0.014 / 0.011 at n = 16 / 32 / 64 on the demo, docs/performance.md
§13); an image stops only when ``estimate - STOP_MARGIN * sqrt(16 / n) >=
target_reliability``. Stopping on the bare estimate keeps exactly the images
whose noisy estimate has just crossed the target, lucky ones among them (a
winner's curse): with the margin, at the same worst-decile reliability, the
benchmark needs fewer evaluations for every noise kind on both trained models
(performance log §14). A round's per-sample maps are merged into the image's running
aggregate only once the round is complete, in sample order, so the map does not
depend on how rows were cut into forward passes.

Forward passes stay full: the rows of the images still sampling are packed
into chunks of ``max_batch`` rows, and when an image stops, the next image of
the call takes its place (a shard's images are best passed in one call).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from sgcore.attribution._checks import (
    check_choice,
    check_images,
    check_int,
    check_model,
    check_noise_level,
    check_seeds,
    check_targets,
)
from sgcore.attribution._noise import NOISE_TABLE, standard_noise
from sgcore.attribution.bases import BASE_TABLE
from sgcore.attribution.postprocess import REDUCTIONS
from sgcore.attribution.prepare import prefers_channels_last
from sgcore.attribution.reliability import BLOCK
from sgcore.attribution.smoothgrad import (
    AGGREGATES,
    PRECISIONS,
    SmoothGradResult,
    _Accumulator,
    _float32_mode,
    _input_gradient_fn,
    _input_gradients_only,
    default_max_batch,
)
from sgcore.settings import check_adaptive_policy as check_policy

# How far an image's estimate must clear the target at 16 samples (shrinking as
# 1/sqrt(n)): about the estimate's calibration error there (module docstring).
STOP_MARGIN = 0.03


def adaptive_bases() -> tuple[str, ...]:
    """The bases this kernel runs: the pointwise ones of ``BASE_TABLE``, in its order."""
    return tuple(name for name, cls in BASE_TABLE.items() if cls.pointwise)


def block_seed(seed: int, block: int) -> int:
    """Seed of noise block ``block`` of an image with seed ``seed`` (63 bits)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{int(block)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def smoothgrad_adaptive(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    target_reliability: float = 0.9,
    min_samples: int = 16,
    max_samples: int = 512,
    round_samples: int = 16,
    noise_level: float = 0.15,
    aggregate: str = "mean",
    base: str = "gradient",
    seeds: torch.Tensor | None = None,
    precision: str = "fp32",
    max_batch: int | None = None,
    noise: str = "gaussian",
    reliability_reduction: str = "abs_sum",
    on_done: Callable[[int], None] | None = None,
    stop_margin: float = STOP_MARGIN,
) -> SmoothGradResult:
    """SmoothGrad maps with as many samples per image as its reliability needs.

    Args: as ``smoothgrad``, plus
        target_reliability: stop an image once its estimated reliability
            reaches this (by ``stop_margin``), in (0, 1).
        min_samples, max_samples: bounds on an image's samples (multiples of
            ``reliability.BLOCK``).
        round_samples: samples added per round after ``min_samples``.
        on_done: called with an image's index as soon as its map is final
            (live progress over a long call).
        stop_margin: the estimate must exceed the target by
            ``stop_margin * sqrt(16 / n)`` at ``n`` samples (0: stop as soon as
            it reaches the target).

    Returns:
        ``SmoothGradResult``: maps ``(B, C, H, W)``, the reliability of each,
        and ``n_samples`` each used (within [min_samples, max_samples]).

    Raises:
        TypeError, ValueError: a bad argument (``integrated_gradients`` is not
        supported here: use ``smoothgrad`` with a fixed ``n_samples``).
    """
    check_model(model)
    batch, shape = check_images(images)
    targets = check_targets(targets, batch, images.device)
    seed_list = check_seeds(seeds, batch)
    check_choice("aggregate", aggregate, AGGREGATES)
    # One row per sample: the bases that need only the gradient at the noisy point.
    check_choice("base", base, adaptive_bases())
    check_choice("precision", precision, PRECISIONS)
    check_choice("noise", noise, NOISE_TABLE)
    check_choice("reliability_reduction", reliability_reduction, REDUCTIONS)
    target, low, high, step = check_policy(target_reliability, min_samples, max_samples, round_samples)
    noise_level = check_noise_level(noise_level)
    if isinstance(stop_margin, bool) or not isinstance(stop_margin, int | float) or not 0 <= stop_margin < 1:
        raise ValueError(f"stop_margin must be a number in [0, 1); got {stop_margin!r}")
    if on_done is not None and not callable(on_done):
        raise TypeError(f"on_done must be callable or None; got {type(on_done).__name__}")
    if max_batch is None:
        max_batch = default_max_batch(images.device, shape)
    max_batch = check_int("max_batch", max_batch, minimum=1)

    x = images.detach().to(torch.float32)
    method = BASE_TABLE[base](x)
    flat = x.reshape(batch, -1)
    sigma = noise_level * (flat.amax(dim=1) - flat.amin(dim=1))
    acc = _Accumulator(aggregate, batch, shape, x.device)
    acc.split(noise, blocked=True)
    reliability = torch.full((batch,), float("nan"), dtype=torch.float32, device=x.device)
    reproducibility = reliability.clone()
    grad_fn = _input_gradient_fn(model, precision, x.device, prefers_channels_last(model), int(targets.max()))

    def noisy(i: int, k0: int, k1: int) -> torch.Tensor:
        # Whole blocks, each from its own seed: sample k is the same noise for any n.
        b0, b1 = k0 // BLOCK, (k1 - 1) // BLOCK + 1
        eps = torch.cat([standard_noise(BLOCK, shape, block_seed(seed_list[i], b), device=x.device, kind=noise)
                         for b in range(b0, b1)])
        return x[i].unsqueeze(0) + sigma[i] * eps[k0 - b0 * BLOCK : k1 - b0 * BLOCK]

    # Per active image: [next sample to send, end of its open round, gradients of the round so far].
    state: dict[int, list] = {}
    waiting = deque(range(batch))
    with _input_gradients_only(model), _float32_mode(precision, x.device), method.hooks(model):
        while state or waiting:
            pieces: list[tuple[int, int, int]] = []
            room = max_batch
            for i in list(state):
                if room == 0:
                    break
                k, end, _ = state[i]
                take = min(room, end - k)
                if take > 0:
                    pieces.append((i, k, k + take))
                    room -= take
            while room > 0 and waiting:  # refill: the next image enters the batch
                i = waiting.popleft()
                state[i] = [0, low, []]
                take = min(room, low)
                pieces.append((i, 0, take))
                room -= take
            inputs = torch.cat([noisy(i, k0, k1) for i, k0, k1 in pieces])
            row_targets = torch.cat([targets[i].expand(k1 - k0) for i, k0, k1 in pieces])
            grads = grad_fn(inputs, row_targets)
            offset = 0
            for i, k0, k1 in pieces:
                g = method.sample_maps(i, grads[offset : offset + k1 - k0], inputs[offset : offset + k1 - k0])
                offset += k1 - k0
                st = state[i]
                st[0] = k1
                st[2].append(g)
                if k1 < st[1]:
                    continue
                round_start = st[1] - sum(p.shape[0] for p in st[2])
                acc.add(i, torch.cat(st[2]), round_start)
                st[2] = []
                est = acc.reliability(reliability_reduction, [i], seeds=seed_list)
                rel = float(est.reliability[0])
                reliability[i], reproducibility[i] = rel, float(est.reproducibility[0])
                if noise_level == 0.0 or rel - stop_margin * (16 / st[1]) ** 0.5 >= target or st[1] >= high:
                    del state[i]
                    if on_done is not None:
                        on_done(i)
                else:
                    st[1] = min(high, st[1] + step)
    if noise_level == 0.0:
        reliability.fill_(1.0)
        reproducibility.fill_(1.0)
    counts = torch.tensor(acc.count, dtype=torch.int64)
    return SmoothGradResult(acc.result(), reliability, counts, reproducibility)
