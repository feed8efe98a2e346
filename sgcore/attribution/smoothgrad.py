"""SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) as one batched kernel.

    M̂(x) = 1/n · Σ_k M(x + ε_k),   ε_k ~ N(0, σ²),   σ = noise_level · (max(x) − min(x))

σ is taken per image over its whole model-input tensor, as the paper and the
authors' library do. The noisy copies of all images in a call go through the
model as one expanded batch of rows (image × sample × integration step), cut
into chunks of at most ``max_batch`` rows. Only input gradients are computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

from sgcore.attribution import bases
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
from sgcore.attribution.reliability import Estimate, bootstrap_reliability, half_mask

# The choices have one owner, the torch-free sgcore.settings (the job's config
# and the CLI read them without importing torch); re-exported here.
from sgcore.settings import (  # noqa: F401 - re-exported
    AGGREGATES,
    BASES,
    NOISES,
    PRECISIONS,
    Aggregate,
    Base,
    Noise,
    Precision,
)

# Upper bound on rows per forward pass on the CPU when the caller gives none:
# float32 input elements per chunk (32 MiB of input; activations are ~100x).
_CPU_ELEMENT_BUDGET = 2**23
_CPU_MAX_ROWS = 256
_CUDA_MAX_ROWS = 1024
# Activations of a deep CNN take roughly 100–300× the input per sample.
_CUDA_BYTES_PER_INPUT_BYTE = 300
# fp16 gradients underflow below ~6e-8; the score is scaled up before the
# backward pass and the gradient scaled back in float32.
_FP16_GRAD_SCALE = 1024.0


class SmoothGradResult(NamedTuple):
    """Maps with their Monte Carlo reliability (``smoothgrad(..., return_reliability=True)``).

    Attributes:
        maps: float32 ``(B, C, H, W)``, the same tensor ``smoothgrad`` returns.
        reliability: float32 ``(B,)``, the estimated Spearman correlation of
            each 2-D map with its converged map (``sgcore.attribution.reliability``);
            1 where ``noise_level=0`` (exact), NaN where it cannot be estimated
            (one sample, or a constant half-map).
        n_samples: int64 ``(B,)``, samples each map averages.
        reproducibility: float32 ``(B,)``, the estimated Spearman correlation
            of each 2-D map with a twin: a map of the same image and settings
            with independent noise (``reliability.Estimate``); 1 where exact,
            NaN where the reliability is.
    """

    maps: torch.Tensor
    reliability: torch.Tensor
    n_samples: torch.Tensor
    reproducibility: torch.Tensor


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
    noise: Noise = "gaussian",
    ig_steps: int = 32,
    ig_baseline: float | torch.Tensor = 0.0,
    return_reliability: bool = False,
    reliability_reduction: str = "abs_sum",
    on_done: Callable[[int], None] | None = None,
) -> torch.Tensor | SmoothGradResult:
    """SmoothGrad maps for a batch of images.

    Smilkov et al. 2017 ("SmoothGrad: removing noise by adding noise",
    arXiv:1706.03825) average a base sensitivity map over noisy copies of the
    input; SmoothGrad² averages its square and VarGrad (Adebayo et al. 2018,
    arXiv:1810.03307) takes its variance.

    Args:
        model: classifier returning logits ``(N, num_classes)``. Run it in the
            mode you want (``eval()`` for batch-independent maps); the kernel
            leaves its mode, parameters, ``requires_grad`` flags, ``.grad`` and
            hooks exactly as they were.
        images: ``(B, C, H, W)`` float tensor in model-input space (after
            normalization). Never modified.
        targets: ``(B,)`` integer class indices whose score ``S_c`` is explained.
        n_samples: noisy samples per image (the paper: ~50 is plenty).
        noise_level: σ as a fraction of each image's value range, in [0, 1].
            0 returns the base attribution exactly.
        aggregate: ``"mean"`` (SmoothGrad), ``"square"`` (mean of squares,
            SmoothGrad²) or ``"var"`` (VarGrad, never negative).
        base: sensitivity map that is smoothed, evaluated at each noisy point
            ``x̃ = x + ε``, a name of ``sgcore.attribution.bases.BASE_TABLE``: ``"gradient"`` (∂S_c/∂x̃, Simonyan et al. 2014),
            ``"input_x_gradient"`` (x̃ ⊙ ∂S_c/∂x̃, Shrikumar et al. 2016),
            ``"integrated_gradients"`` ((x̃ − x') ⊙ ∫₀¹ ∂S_c/∂x(x' + α(x̃ − x')) dα,
            Sundararajan et al. 2017, arXiv:1703.01365; the SmoothGrad paper
            smooths IG too) or ``"guided_backprop"`` (gradient with negative
            gradients zeroed at every ReLU, module or functional, Springenberg
            et al. 2015, arXiv:1412.6806).
        seeds: ``(B,)`` integer seed per image; the map of an image depends only
            on its own seed, never on its batch neighbours or on ``max_batch``.
            None uses seed 0 for every image.
        precision: ``"fp32"`` (strict IEEE float32: TF32 is switched off for
            the call), ``"tf32"`` (TF32 tensor cores allowed on CUDA; plain
            float32 elsewhere), ``"bf16"`` or ``"fp16"`` (autocast, with the
            gradients and all accumulation in float32).
        max_batch: at most this many model inputs (samples × IG steps) per
            forward pass; None picks a bound from the free memory. A CUDA
            out-of-memory error halves the chunk and retries; maps do not
            depend on the chunk size.
        noise: ``"gaussian"`` (the paper), ``"antithetic"`` (pairs ε, −ε) or
            ``"sobol"`` (randomised quasi-Monte Carlo per element): a name of
            ``sgcore.attribution._noise.NOISE_TABLE``.
        ig_steps: integration points of ``integrated_gradients``
            (Gauss–Legendre quadrature on [0, 1], as Captum's default).
        ig_baseline: the baseline ``x'`` of ``integrated_gradients``: a number,
            or a tensor broadcastable to ``(B, C, H, W)``.
        return_reliability: also estimate, from the same samples, how well each
            map has converged (split-half, ``sgcore.attribution.reliability``);
            the maps are bit-for-bit those of ``return_reliability=False``.
        reliability_reduction: channel reduction of the 2-D map whose
            reliability is estimated (``abs_sum``, ``sum``, ``max_abs``), as
            the stored map is reduced.
        on_done: called with an image's index once all its samples are in
            (images finish in order, one chunk of ``max_batch`` inputs at a
            time: live progress within a batch).

    Returns:
        float32 tensor ``(B, C, H, W)`` on the device of ``images``; with
        ``return_reliability=True`` a ``SmoothGradResult`` (maps, reliability,
        n_samples).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has a wrong value or shape.
    """
    check_model(model)
    batch, shape = check_images(images)
    targets = check_targets(targets, batch, images.device)
    seed_list = check_seeds(seeds, batch)
    check_choice("aggregate", aggregate, AGGREGATES)
    # The tables, not the settings' names: a base or noise registered there runs.
    check_choice("base", base, BASE_TABLE)
    check_choice("precision", precision, PRECISIONS)
    check_choice("noise", noise, NOISE_TABLE)
    check_choice("reliability_reduction", reliability_reduction, REDUCTIONS)
    if not isinstance(return_reliability, bool):
        raise TypeError(f"return_reliability must be a bool; got {type(return_reliability).__name__}")
    n_samples = check_int("n_samples", n_samples, minimum=1)
    noise_level = check_noise_level(noise_level)
    x = images.detach().to(torch.float32)
    method = BASE_TABLE[base](x, ig_steps=ig_steps, ig_baseline=ig_baseline)
    if max_batch is not None:
        max_batch = check_int("max_batch", max_batch, minimum=1)
    else:
        max_batch = default_max_batch(images.device, shape)

    # With no noise every sample is the same point: one sample is the exact
    # base attribution, where averaging n copies would add rounding error.
    n = 1 if noise_level == 0.0 else n_samples
    flat = x.reshape(batch, -1)
    sigma = noise_level * (flat.amax(dim=1) - flat.amin(dim=1))

    plan = _Plan(
        x=x,
        sigma=sigma,
        seeds=seed_list,
        targets=targets,
        n=n,
        noise=noise,
        base=method,
    )
    acc = _Accumulator(aggregate, batch, shape, x.device)
    if return_reliability and n > 1:
        acc.split(noise, blocked=False)
    grad_fn = _input_gradient_fn(
        model, precision, x.device, prefers_channels_last(model), int(targets.max())
    )
    with _input_gradients_only(model), _float32_mode(precision, x.device), method.hooks(model):
        _run(plan, acc, grad_fn, max_batch, on_done)
    maps = acc.result()
    if not return_reliability:
        return maps
    counts = torch.full((batch,), n, dtype=torch.int64)
    if n == 1:
        fill = 1.0 if noise_level == 0.0 else float("nan")
        rel = rep = torch.full((batch,), fill, dtype=torch.float32, device=maps.device)
    else:
        rel, rep = (e.to(torch.float32) for e in acc.reliability(reliability_reduction, seeds=seed_list))
    return SmoothGradResult(maps, rel, counts, rep)


def default_max_batch(device: torch.device, shape: tuple[int, ...]) -> int:
    """A chunk size (model inputs per forward) within a sane memory bound.

    On CUDA it is derived from the free device memory (an out-of-memory error
    still halves it at run time); on the CPU from a fixed element budget.
    """
    numel = 1
    for s in shape:
        numel *= s
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_row = numel * 4 * _CUDA_BYTES_PER_INPUT_BYTE
        return max(1, min(_CUDA_MAX_ROWS, int(free // per_row)))
    return max(1, min(_CPU_MAX_ROWS, _CPU_ELEMENT_BUDGET // numel))


# --------------------------------------------------------------------------- #
# The expanded batch: rows (image i, sample k, step j), r = k · steps + j.
# --------------------------------------------------------------------------- #


class _Plan:
    """Everything needed to build and fold back the rows of one call."""

    def __init__(
        self,
        *,
        x: torch.Tensor,
        sigma: torch.Tensor,
        seeds: list[int],
        targets: torch.Tensor,
        n: int,
        noise: str,
        base: bases.Base,
    ) -> None:
        self.x = x
        self.sigma = sigma
        self.seeds = seeds
        self.targets = targets
        self.n = n
        self.noise = noise
        self.base = base
        self.steps = base.steps
        self.rows_per_image = n * base.steps
        self._noise: dict[int, torch.Tensor] = {}

    def noise_of(self, i: int) -> torch.Tensor:
        # Drawn whole from the image's own seed, then sliced: chunking cannot
        # change the noise an image sees.
        if i not in self._noise:
            self._noise[i] = standard_noise(
                self.n, tuple(self.x.shape[1:]), self.seeds[i], device=self.x.device, kind=self.noise
            )
        return self._noise[i]

    def release(self, i: int) -> None:
        self._noise.pop(i, None)

    def noisy(self, i: int, k0: int, k1: int) -> torch.Tensor:
        """Noisy samples ``k0:k1`` of image ``i``: ``(k1 − k0, C, H, W)``."""
        return self.x[i].unsqueeze(0) + self.sigma[i] * self.noise_of(i)[k0:k1]

    def rows(self, i: int, r0: int, r1: int) -> torch.Tensor:
        """Model inputs for rows ``r0:r1`` of image ``i``."""
        if self.base.pointwise:
            return self.noisy(i, r0, r1)
        r = torch.arange(r0, r1, device=self.x.device)
        k0 = r0 // self.steps
        xt = self.noisy(i, k0, (r1 - 1) // self.steps + 1)[r // self.steps - k0]
        return self.base.rows(i, xt, r % self.steps)


def _take(plan: _Plan, i: int, r: int, size: int, batch: int) -> list[tuple[int, int, int]]:
    """Pieces ``(image, r0, r1)`` of the next ``size`` rows from cursor (i, r)."""
    pieces: list[tuple[int, int, int]] = []
    while size > 0 and i < batch:
        stop = min(plan.rows_per_image, r + size)
        pieces.append((i, r, stop))
        size -= stop - r
        i, r = (i + 1, 0) if stop == plan.rows_per_image else (i, stop)
    return pieces


def _run(
    plan: _Plan,
    acc: _Accumulator,
    grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_batch: int,
    on_done: Callable[[int], None] | None = None,
) -> None:
    batch = plan.x.shape[0]
    size = max_batch
    i, r = 0, 0
    # Integration steps of one sample may straddle chunks: the partial sum of
    # the open sample (image, sample index, Σ_j w_j g_j) waits here.
    carry: tuple[int, int, torch.Tensor] | None = None
    while i < batch:
        pieces = _take(plan, i, r, size, batch)
        try:
            inputs = torch.cat([plan.rows(*p) for p in pieces])
            row_targets = torch.cat([plan.targets[p[0]].expand(p[2] - p[1]) for p in pieces])
            grads = grad_fn(inputs, row_targets)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            # Nothing was committed for this chunk: retry it in halves.
            size = max(1, size // 2)
            if plan.x.is_cuda:
                torch.cuda.empty_cache()
            continue
        offset = 0
        for p_i, r0, r1 in pieces:
            block, rows = grads[offset : offset + r1 - r0], inputs[offset : offset + r1 - r0]
            offset += r1 - r0
            carry = _fold(plan, acc, p_i, r0, r1, block, rows, carry)
            if r1 == plan.rows_per_image:
                plan.release(p_i)
                if on_done is not None:
                    on_done(p_i)  # every sample of image p_i is in: live progress per image
        last_i, _, last_r1 = pieces[-1]
        i, r = (last_i + 1, 0) if last_r1 == plan.rows_per_image else (last_i, last_r1)


def _fold(
    plan: _Plan,
    acc: _Accumulator,
    i: int,
    r0: int,
    r1: int,
    grads: torch.Tensor,
    rows: torch.Tensor,
    carry: tuple[int, int, torch.Tensor] | None,
) -> tuple[int, int, torch.Tensor] | None:
    """Turns the gradients of rows ``r0:r1`` of image ``i`` (model inputs ``rows``) into per-sample maps."""
    steps = plan.steps
    if plan.base.pointwise:  # rows are the samples r0:r1 themselves
        acc.add(i, plan.base.sample_maps(i, grads, rows), r0)
        return None
    r = torch.arange(r0, r1, device=grads.device)
    k_first, k_last = r0 // steps, (r1 - 1) // steps
    w = plan.base.weights[r % steps].view(-1, *([1] * (grads.dim() - 1)))
    sums = torch.zeros((k_last - k_first + 1, *grads.shape[1:]), dtype=torch.float32, device=grads.device)
    sums.index_add_(0, r // steps - k_first, grads * w)
    if carry is not None and carry[0] == i and carry[1] == k_first:
        sums[0] += carry[2]
    carry = None
    k_stop = k_last + 1
    if r1 % steps != 0:
        carry = (i, k_last, sums[-1].clone())
        sums = sums[:-1]
        k_stop = k_last
    if k_stop > k_first:
        acc.add(i, plan.base.sample_maps(i, sums, plan.noisy(i, k_first, k_stop)), k_first)
    return carry


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
        self.halves: tuple[_Accumulator, _Accumulator] | None = None
        self.noise = "gaussian"
        self.blocked = False

    def split(self, noise: str, *, blocked: bool) -> None:
        """Also keeps the two split halves (``reliability.half_mask``) apart."""
        batch, shape = self.mean.shape[0], tuple(self.mean.shape[1:])
        self.halves = tuple(  # type: ignore[assignment]
            _Accumulator(self.aggregate, batch, shape, self.mean.device) for _ in range(2)
        )
        self.noise, self.blocked = noise, blocked

    def reliability(
        self, reduction: str, rows: list[int] | None = None, *, seeds: list[int] | None = None
    ) -> Estimate:
        """Reliability and reproducibility of images ``rows`` (all by default), float64 (``reliability`` module)."""
        if self.halves is None:
            raise RuntimeError("reliability needs an accumulator that was split")
        rows = list(range(self.mean.shape[0])) if rows is None else rows
        a, b = self.halves
        m_a = torch.tensor([a.count[i] for i in rows], dtype=torch.float64)
        m_b = torch.tensor([b.count[i] for i in rows], dtype=torch.float64)
        both = (m_a > 0) & (m_b > 0)
        whole, half_a = self.result(rows), a.result(rows)
        if self.m2 is None:
            view = (-1,) + (1,) * (whole.dim() - 1)
            n_all = (m_a + m_b).to(whole).view(view)
            half_b = (n_all * whole - m_a.to(whole).view(view) * half_a) / m_b.clamp(min=1).to(whole).view(view)
        else:
            half_b = b.result(rows)
        est = bootstrap_reliability(
            whole, half_a, half_b, m_a.clamp(min=1), m_b.clamp(min=1),
            reduction=reduction, seeds=None if seeds is None else [seeds[i] for i in rows],
        )
        # A half without samples has no estimate.
        both = both.to(est.reliability.device)
        return Estimate(*(torch.where(both, e, torch.nan) for e in est))

    def add(self, i: int, block: torch.Tensor, k0: int = 0) -> None:
        """Merges per-sample maps ``(m, C, H, W)`` of image ``i``, samples ``k0:k0+m``."""
        if self.halves is not None:
            in_a = half_mask(k0, k0 + block.shape[0], self.noise, blocked=self.blocked, device=block.device)
            # For means only half A is kept: B follows from the whole (see reliability()).
            a, b = self.halves
            if bool(in_a.any()):
                a.add(i, block[in_a])
            if self.m2 is None:
                b.count[i] += int((~in_a).sum())
            elif not bool(in_a.all()):
                b.add(i, block[~in_a])
        n_b = block.shape[0]
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

    def result(self, rows: list[int] | None = None) -> torch.Tensor:
        mean = self.mean if rows is None else self.mean[rows]
        if self.m2 is not None:
            count = self.count if rows is None else [self.count[i] for i in rows]
            counts = torch.tensor(count, dtype=torch.float32, device=self.m2.device).clamp(min=1)
            m2 = self.m2 if rows is None else self.m2[rows]
            return m2 / counts.view(-1, *([1] * (m2.dim() - 1)))
        return mean


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


@contextlib.contextmanager
def _float32_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Strict float32 (TF32 off) for ``fp32``, TF32 allowed for ``tf32``; restored after."""
    if device.type != "cuda" or precision not in ("fp32", "tf32"):
        yield
        return
    allow = precision == "tf32"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _input_gradient_fn(
    model: nn.Module, precision: str, device: torch.device, channels_last: bool, max_target: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scale = _FP16_GRAD_SCALE if precision == "fp16" else 1.0
    checked = False

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is not None:
            return torch.autocast(device_type=device.type, dtype=dtype)
        return contextlib.nullcontext()

    def grad_fn(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        if channels_last and rows.dim() == 4:
            rows = rows.contiguous(memory_format=torch.channels_last)
        rows = rows.detach().requires_grad_(True)
        with autocast():
            logits = model(rows)
        if not checked:
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"model must return logits of shape (N, num_classes); got {got}")
            if max_target >= logits.shape[1]:
                raise ValueError(
                    f"targets must be class indices below num_classes={logits.shape[1]}; "
                    f"got {max_target}"
                )
            checked = True
        score = logits.float().gather(1, targets.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(score * scale if scale != 1.0 else score, rows)
        grad = grad.to(torch.float32)
        return grad / scale if scale != 1.0 else grad

    return grad_fn


# The benchmark (sgcore.bench) times the kernel's own gradient pass and
# precision mode as the ceiling, rather than copies of them.
float32_mode = _float32_mode
input_gradient_fn = _input_gradient_fn
