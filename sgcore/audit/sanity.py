"""Model-parameter randomization test (Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018, arXiv:1810.03292), cascading from the top.

A method whose maps barely change when the model's learned weights are
replaced by random ones explains the input, not the model. The cascade
re-initializes layers one at a time from the logits down, on a copy of the
model, and compares each step's maps with the trained model's maps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from sgcore.attribution import SmoothGradResult, reduce_channels, smoothgrad
from sgcore.audit.metrics import minmax, spearman, ssim
from sgcore.settings import SmoothGradSettings


@dataclass(frozen=True, kw_only=True)
class MapSettings(SmoothGradSettings):
    """SmoothGrad settings used to recompute maps (from the results manifest)."""

    @classmethod
    def from_job(cls, job: Mapping[str, Any], **overrides: Any) -> MapSettings:
        """The settings a job recorded (its manifest's ``config``), with ``overrides`` that are not None on top.

        Settings the job did not record keep their defaults (results of older
        versions lack some).
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"overrides must be MapSettings fields; got {unknown}")
        values = {k: job[k] for k in names if job.get(k) is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def maps(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """SmoothGrad maps ``(B, C, H, W)`` of ``images`` with these settings, on their device."""
        return smoothgrad(model, images, targets, seeds=seeds, **self.kernel_arguments())

    def maps_with_reliability(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor | None = None
    ) -> SmoothGradResult:
        """The same maps with each one's reliability estimate (for the 2-D map of ``reduction``)."""
        return smoothgrad(model, images, targets, seeds=seeds, return_reliability=True,
                          reliability_reduction=self.reduction, **self.kernel_arguments())


@dataclass(frozen=True, kw_only=True)
class SanityResult:
    """Per-image similarity to the trained model's maps, one row per step.

    Attributes:
        layers: names of the layers (or stages, see :func:`cascade_steps`)
            randomized at each step, top first; step ``i`` has ``0..i`` randomized.
        spearman_abs: ``(steps, N)`` rank correlation of absolute maps.
        spearman_signed: ``(steps, N)`` rank correlation of signed maps.
        ssim: ``(steps, N)`` SSIM of min-max normalized absolute maps.
    """

    layers: list[str]
    spearman_abs: np.ndarray
    spearman_signed: np.ndarray
    ssim: np.ndarray


def randomization_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the weight layers (conv, linear, ...) from the output down.

    The order is the order in which a forward pass on ``example`` calls them,
    reversed, so it follows the computation rather than the order in which
    the layers were declared. Layers with a weight of two or more dimensions
    count; normalization layers keep their parameters (as in Adebayo et al.,
    whose cascade walks the convolutional and fully connected layers).

    A TorchScript or ``torch.export`` archive calls no Python modules that a
    hook could see (TorchScript refuses forward hooks; an exported graph reads
    the weights directly), so there the order is the one in which a backward
    pass from the output reaches each layer's weight: the same order for a
    chain of layers, computed from the archive's own parameters.
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return _backward_order(model, example)
    called: list[str] = []
    handles = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            handles.append(module.register_forward_hook(_recorder(name, called)))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    if not called and handles:  # weight layers, none of them called: an exported graph
        return _backward_order(model, example)
    seen: list[str] = []
    for name in called:
        if name not in seen:
            seen.append(name)
    return seen[::-1]


def _backward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Weight layers in the order a backward pass from the output reaches their weights."""
    weights: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and weight.is_leaf:
            weights.setdefault(name, weight)
    if not weights:
        return []
    reached: list[str] = []
    flags = [(p, p.requires_grad) for p in weights.values()]
    handles = []
    try:
        for name, weight in weights.items():
            weight.requires_grad_(True)
            handles.append(weight.register_hook(_grad_recorder(name, reached)))
        with torch.enable_grad():
            out = model(example[:1])
            torch.autograd.grad(out.sum(), list(weights.values()), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    seen: list[str] = []
    for name in reached:
        if name not in seen:
            seen.append(name)
    return seen


# The cascade's granularity: each weight layer, or each stage of the network (see cascade_steps).
Granularity = Literal["layer", "block"]
# "auto" walks blocks for networks with more weight layers than this, layers otherwise.
BLOCKS_ABOVE = 24


def cascade_steps(model: nn.Module, order: list[str], granularity: Granularity | Literal["auto"] = "layer",
                  ) -> list[tuple[str, list[str]]]:
    """The cascade's steps, top first: ``(name, layers randomized at that step)``.

    ``"layer"``: one step per weight layer of ``order``. ``"block"``: one step per stage of the
    network: from the root, the search descends into the child that holds more than half of the
    weight layers (the classifier wrappers, timm's ``blocks``, torchvision's ``features`` or a
    ViT's ``encoder.layers``) and stops where no child does; each child there is a step (timm
    EfficientNet: ``conv_stem``, ``blocks.0`` ... ``blocks.6``, ``conv_head``, ``classifier``;
    torchvision ResNet: ``conv1``, ``layer1`` ... ``layer4``, ``fc``). ``"auto"``: blocks for
    more than :data:`BLOCKS_ABOVE` weight layers, else layers.
    """
    if granularity == "auto":
        granularity = "block" if len(order) > BLOCKS_ABOVE else "layer"
    if granularity == "layer":
        return [(name, [name]) for name in order]
    wanted = set(order)
    prefix = ""
    while True:
        counts: dict[str, int] = {}
        for name in order:
            rest = name[len(prefix):] if name.startswith(prefix) else None
            if rest is None or "." not in rest:
                continue
            child = prefix + rest.split(".", 1)[0]
            counts[child] = counts.get(child, 0) + 1
        inside = sum(1 for name in order if name.startswith(prefix))
        big = [c for c, n in counts.items() if 2 * n > inside and c not in wanted]
        if not big:
            break
        prefix = big[0] + "."
    steps: dict[str, list[str]] = {}
    for name in order:  # top first: a step comes where its first layer comes in the order
        if name.startswith(prefix) and "." in name[len(prefix):]:
            key = prefix + name[len(prefix):].split(".", 1)[0]
        else:
            key = name
        steps.setdefault(key, []).append(name)
    return list(steps.items())


def randomize_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draws the module's own parameters in place from PyTorch's default init.

    Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the
    distribution of ``nn.Linear`` / ``nn.Conv2d``'s ``reset_parameters``, but
    from ``generator`` so that every replica draws the same weights.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"module must have a weight of 2 or more dimensions; got {type(module).__name__}"
        )
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        for _, p in module.named_parameters(recurse=False):
            draw = torch.rand(p.shape, generator=generator, dtype=torch.float32)
            p.copy_(((draw * 2.0 - 1.0) * bound).to(p.dtype))


def cascading_randomization(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    settings: MapSettings,
    seeds: torch.Tensor | None = None,
    layers: list[str] | None = None,
    seed: int = 0,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    granularity: Granularity | Literal["auto"] = "layer",
) -> SanityResult:
    """Runs the cascade on a copy of ``model`` (the original is untouched).

    Args:
        model: trained classifier in eval mode.
        images: ``(B, C, H, W)`` model-input images.
        targets: ``(B,)`` explained classes (the trained model's targets are
            kept at every step, as in the paper).
        settings: SmoothGrad settings; same seeds at every step so that only
            the weights differ.
        seeds: ``(B,)`` per-image noise seeds.
        layers: the cascade order; None uses :func:`randomization_order`.
        seed: seed of the random weights (the same on every replica).
        prepare: turns a model into the one the maps are computed with (the
            replica's :func:`~sgcore.attribution.prepare_model`: BatchNorm folded,
            channels_last). Layers are randomized on the unprepared copy and each
            step is prepared afresh, so normalization layers keep their trained
            statistics as the cascade requires.
        on_step: called with (steps done, steps in all) after each map set.
        granularity: one step per weight layer, or per stage of the network
            (:func:`cascade_steps`; ``"auto"``: stages for deep networks).

    Returns:
        A :class:`SanityResult`.
    """
    if layers is None:
        layers = randomization_order(model, images)
    if not layers:
        raise ValueError("model has no weight layers to randomize")
    ready = prepare or (lambda m: m)
    steps = cascade_steps(model, list(layers), granularity)
    total = len(steps) + 1
    trained_abs, trained_signed = _maps(ready(model), images, targets, settings, seeds)
    if on_step is not None:
        on_step(1, total)
    trained_norm = minmax(trained_abs)
    # Without grad mode a TorchScript module's copy holds leaf parameters (with it,
    # clones that the kernel could not freeze); an nn.Module's copy is the same either way.
    with torch.no_grad():
        work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"layers must name modules of the model; got unknown {unknown}")
    rows: dict[str, list[np.ndarray]] = {"abs": [], "signed": [], "ssim": []}
    for i, (_, members) in enumerate(steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for name in members:
            randomize_layer(modules[name], generator)
        rand_abs, rand_signed = _maps(ready(work), images, targets, settings, seeds)
        if on_step is not None:
            on_step(i + 2, total)
        rows["abs"].append(np.atleast_1d(spearman(trained_abs, rand_abs)))
        rows["signed"].append(np.atleast_1d(spearman(trained_signed, rand_signed)))
        rows["ssim"].append(np.atleast_1d(ssim(trained_norm, minmax(rand_abs))))
    return SanityResult(
        layers=[name for name, _ in steps],
        spearman_abs=np.stack(rows["abs"]),
        spearman_signed=np.stack(rows["signed"]),
        ssim=np.stack(rows["ssim"]),
    )


def _maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MapSettings,
    seeds: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (the stored reduction) and signed (channel sum) 2-D maps, as float64 numpy."""
    full = settings.maps(model, images, targets, seeds)
    how = settings.reduction if settings.reduction != "sum" else "abs_sum"
    absolute = reduce_channels(full, how).cpu().numpy().astype(np.float64)
    signed = reduce_channels(full, "sum").cpu().numpy().astype(np.float64)
    return absolute, signed


def _recorder(name: str, called: list[str]):  # noqa: ANN202 - a hook factory
    def hook(module: nn.Module, inputs: object, output: object) -> None:
        called.append(name)

    return hook


def _grad_recorder(name: str, reached: list[str]):  # noqa: ANN202 - a hook factory
    def hook(grad: torch.Tensor) -> None:
        reached.append(name)

    return hook
