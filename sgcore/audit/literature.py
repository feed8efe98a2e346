"""The audit against the literature: several saliency methods side by side, on one model.

Three published observations, each a check the audit can repeat on the
audited model:

- Cascading randomization (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018, arXiv:1810.03292): as the top blocks are re-initialized one
  after another, the plain gradient's and SmoothGrad's maps decorrelate from
  the trained model's, guided backprop's much less (it partly recovers the
  image whatever the weights). :func:`method_cascade` walks the model's blocks
  (:func:`block_groups`) from the output down and reports, per method, the
  Spearman correlation with the trained maps; :meth:`MethodCascade.ordering`
  says which method decorrelates most.
- Removal metrics (deletion/insertion, Petsiuk et al. 2018; ROAD, Rong et
  al. 2022) rank SmoothGrad, SmoothGrad², VarGrad and the gradient:
  :func:`removal_scores`.
- Removal metrics favour smooth maps: a Gaussian blur of a map, which adds no
  information about the model, can earn a better ROAD score than the map
  itself. :func:`blur_maps` makes that control; the comparison carries it as a
  row (``smoothgrad_blurred``) and the ROAD section of the audit as a row for
  the stored maps, so a better score is not read as a better explanation when
  blur alone earns it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sgcore.attribution import reduce_channels, smoothgrad
from sgcore.audit.faithfulness import blur, deletion_insertion
from sgcore.audit.metrics import spearman
from sgcore.audit.road import road
from sgcore.audit.sanity import randomization_order, randomize_layer


@dataclass(frozen=True, kw_only=True)
class Method:
    """A saliency method of the comparison: a base map, smoothed or not.

    Attributes:
        name: the row's name.
        base: the kernel's ``base`` (``gradient``, ``guided_backprop``, ...).
        aggregate: ``mean`` (SmoothGrad), ``square`` (SmoothGrad²) or ``var``
            (VarGrad); ignored when not ``noisy``.
        noisy: averaged over noisy copies; False: the base map at the image.
        paper: where the method comes from.
    """

    name: str
    base: str
    aggregate: str = "mean"
    noisy: bool = False
    paper: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method(name="gradient", base="gradient", paper="Simonyan et al. 2014"),
    Method(name="guided_backprop", base="guided_backprop", paper="Springenberg et al. 2015"),
    Method(name="smoothgrad", base="gradient", aggregate="mean", noisy=True, paper="Smilkov et al. 2017"),
    Method(name="smoothgrad_sq", base="gradient", aggregate="square", noisy=True, paper="Hooker et al. 2019"),
    Method(name="vargrad", base="gradient", aggregate="var", noisy=True, paper="Adebayo et al. 2018"),
)}

BLURRED = "smoothgrad_blurred"
"""The control row: the SmoothGrad map under a Gaussian blur (:func:`blur_maps`)."""

CASCADE_METHODS: tuple[str, ...] = ("gradient", "smoothgrad", "guided_backprop")
REMOVAL_METHODS: tuple[str, ...] = ("smoothgrad_sq", "vargrad", "smoothgrad", "gradient")


def _check_methods(methods: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(methods))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"methods must be among {', '.join(METHODS)}; got {list(methods)}")
    return names


def method_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    methods: Sequence[str],
    n_samples: int = 16,
    noise_level: float = 0.15,
    seeds: torch.Tensor | None = None,
    reduction: str = "abs_sum",
    max_batch: int | None = None,
) -> dict[str, torch.Tensor]:
    """2-D maps ``(B, H, W)`` of each method in ``methods`` (names of :data:`METHODS`), on the images' device.

    The noisy methods share ``seeds``, so SmoothGrad, SmoothGrad² and VarGrad
    average the same noisy copies; when VarGrad is asked for with either of
    the others, SmoothGrad² comes from VarGrad's pass as ``var + mean²`` (the
    variance is the population one, so this is the mean of squares up to
    float rounding) and costs no pass of its own.
    """
    names = _check_methods(methods)
    full: dict[str, torch.Tensor] = {}

    def run(base: str, aggregate: str, noisy: bool) -> torch.Tensor:
        return smoothgrad(model, images, targets, seeds=seeds, base=base,  # type: ignore[arg-type]
                          aggregate=aggregate,  # type: ignore[arg-type]
                          n_samples=n_samples if noisy else 1, noise_level=noise_level if noisy else 0.0,
                          max_batch=max_batch)

    shared = "vargrad" in names and "smoothgrad_sq" in names
    if shared:
        full["vargrad"] = run("gradient", "var", True)
        full["smoothgrad"] = run("gradient", "mean", True)
        full["smoothgrad_sq"] = full["vargrad"] + full["smoothgrad"].square()
    for name in names:
        if name not in full:
            m = METHODS[name]
            full[name] = run(m.base, m.aggregate if m.noisy else "mean", m.noisy)
    return {name: reduce_channels(full[name], reduction) for name in names}


def blur_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The control: ``(B, H, W)`` maps under a Gaussian blur of ``sigma`` pixels (reflect-padded)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W); got {tuple(maps.shape)}")
    return blur(maps.detach().abs().to(torch.float32).unsqueeze(1), sigma).squeeze(1)


def default_blur_sigma(height: int, width: int) -> float:
    """The control's blur: ``min(H, W) / 32`` pixels (7 at 224 px), at least 1."""
    return max(1.0, min(height, width) / 32.0)


# --------------------------------------------------------------------------- cascade


def block_groups(model: nn.Module, example: torch.Tensor) -> list[tuple[str, list[str]]]:
    """The model's weight layers grouped by block, from the output down.

    A layer's block is its name up to the first numbered part
    (``blocks.6.0.conv_pw`` -> ``blocks.6``; torchvision's ``layer4.1.conv2``
    -> ``layer4.1``); a layer outside numbered containers is a block of its
    own (``classifier``, ``conv_head``, ``conv_stem``). The order is
    :func:`~sgcore.audit.sanity.randomization_order`'s: the computation's,
    reversed. For timm's EfficientNet: ``classifier``, ``conv_head``,
    ``blocks.6`` ... ``blocks.0``, ``conv_stem``.

    Returns:
        ``(block name, layer names)`` pairs, top first.
    """
    groups: dict[str, list[str]] = {}
    for name in randomization_order(model, example):
        parts = name.split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
        groups.setdefault(".".join(parts[: cut + 1]), []).append(name)
    return list(groups.items())


@dataclass(frozen=True, kw_only=True)
class MethodCascade:
    """Per method, the Spearman correlation (absolute maps) with the trained model's maps.

    Attributes:
        steps: block names randomized at each step, top first; step ``i`` has
            blocks ``0..i`` randomized.
        spearman: method -> ``(steps, N)`` per image.
    """

    steps: list[str]
    spearman: dict[str, np.ndarray]

    def mean(self) -> dict[str, list[float]]:
        """Method -> mean Spearman per step (NaN images left out)."""
        return {k: [float(np.nanmean(row)) for row in v] for k, v in self.spearman.items()}

    def ordering(self) -> list[tuple[str, float]]:
        """(method, mean Spearman over the steps), most decorrelated first.

        The mean over every step is the area under the cascade curve: a
        method that decorrelates early and stays low ranks first.
        """
        means = {k: float(np.nanmean(v)) for k, v in self.spearman.items()}
        return sorted(means.items(), key=lambda kv: kv[1])

    def rows(self) -> list[dict[str, Any]]:
        """One table row per step: the block and each method's mean Spearman."""
        means = self.mean()
        return [{"randomized_down_to": s, **{k: v[i] for k, v in means.items()}} for i, s in enumerate(self.steps)]


def method_cascade(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    methods: Sequence[str] = CASCADE_METHODS,
    groups: list[tuple[str, list[str]]] | None = None,
    n_samples: int = 16,
    noise_level: float = 0.15,
    seeds: torch.Tensor | None = None,
    seed: int = 0,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> MethodCascade:
    """Cascading randomization by block for several methods (Adebayo et al. 2018), on a copy of ``model``.

    Args:
        model: trained classifier in eval mode (left untouched).
        images: ``(B, C, H, W)`` model-input images.
        targets: ``(B,)`` explained classes (the trained model's, at every step).
        methods: names of :data:`METHODS`.
        groups: ``(name, layers)`` blocks, top first; None: :func:`block_groups`.
        n_samples, noise_level: of the noisy methods.
        seeds: ``(B,)`` noise seeds, the same at every step.
        seed: seed of the random weights.
        prepare: turns a model into the one the maps are computed with (as in
            :func:`~sgcore.audit.sanity.cascading_randomization`).
        on_step: called with (map sets done, in all).
    """
    names = _check_methods(methods)
    if groups is None:
        groups = block_groups(model, images)
    if not groups:
        raise ValueError("model has no weight layers to randomize")
    ready = prepare or (lambda m: m)
    kw = {"methods": names, "n_samples": n_samples, "noise_level": noise_level, "seeds": seeds}
    total = len(groups) + 1

    def maps(net: nn.Module) -> dict[str, np.ndarray]:
        got = method_maps(ready(net), images, targets, **kw)  # type: ignore[arg-type]
        return {k: v.cpu().numpy().astype(np.float64) for k, v in got.items()}

    trained = maps(model)
    if on_step is not None:
        on_step(1, total)
    with torch.no_grad():
        work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    unknown = [layer for _, layers in groups for layer in layers if layer not in modules]
    if unknown:
        raise ValueError(f"groups must name modules of the model; got unknown {unknown}")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for i, (_, layers) in enumerate(groups):
        for j, layer in enumerate(layers):
            randomize_layer(modules[layer], torch.Generator().manual_seed(seed * 1_000_003 + i * 1_009 + j))
        step = maps(work)
        if on_step is not None:
            on_step(i + 2, total)
        for k in names:
            rows[k].append(np.atleast_1d(spearman(trained[k], step[k])))
    return MethodCascade(steps=[g for g, _ in groups], spearman={k: np.stack(v) for k, v in rows.items()})


# --------------------------------------------------------------------------- removal metrics


def removal_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: dict[str, torch.Tensor],
    *,
    steps: int = 16,
    road_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Per map set, per image: deletion/insertion AUCs (Petsiuk et al. 2018) and ROAD's MoRF/LeRF areas.

    Args:
        maps: name -> ``(B, H, W)`` maps of the same images.
        steps: points per deletion/insertion curve minus one.
        road_fractions: shares of pixels ROAD removes (Rong et al. 2022).
        seed: the random orders and ROAD's noise, the same for every map set.

    Returns:
        name -> ``deletion_auc``, ``insertion_auc``, ``road_morf``,
        ``road_lerf``, ``road_gap`` (LeRF - MoRF), each ``(B,)``.
    """
    f = np.asarray(road_fractions, np.float64)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, m in maps.items():
        di = deletion_insertion(model, images, targets, m, steps=steps, seed=seed).aucs()
        r = road(model, images, targets, m.to(images.device), fractions=f, seed=seed)
        morf = np.trapezoid(r.morf, f, axis=1) if len(f) > 1 else r.morf[:, 0]
        lerf = np.trapezoid(r.lerf, f, axis=1) if len(f) > 1 else r.lerf[:, 0]
        out[name] = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"],
                     "road_morf": morf, "road_lerf": lerf, "road_gap": lerf - morf}
    return out


def removal_rows(scores: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Table rows (mean over images), best ROAD gap first, with each row's rank by every metric.

    Ranks: 1 is best (lowest deletion AUC and ROAD MoRF; highest insertion
    AUC, ROAD LeRF and gap).
    """
    means = {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in scores.items()}
    rows = [{"method": k, **v} for k, v in means.items()]
    for metric, lower in (("deletion_auc", True), ("insertion_auc", False), ("road_gap", False)):
        ordered = sorted(rows, key=lambda r: r[metric] if lower else -r[metric])
        for rank, r in enumerate(ordered, start=1):
            r[f"rank_{metric}"] = rank
    return sorted(rows, key=lambda r: -r["road_gap"])


# --------------------------------------------------------------------------- the audit's part


def evaluate(
    model: nn.Module,
    prepared: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    seeds: torch.Tensor,
    n_samples: int,
    noise_level: float,
    seed: int,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    steps: int = 16,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """One chunk of the comparison: the method cascade and the removal scores (with the blur control)."""
    cascade = method_cascade(model, images, targets, n_samples=n_samples, noise_level=noise_level, seeds=seeds,
                             seed=seed, prepare=prepare, on_step=on_step)
    maps = method_maps(prepared, images, targets, methods=REMOVAL_METHODS, n_samples=n_samples,
                       noise_level=noise_level, seeds=seeds)
    sigma = default_blur_sigma(*images.shape[2:])
    maps[BLURRED] = blur_maps(maps["smoothgrad"], sigma)
    scores = removal_scores(prepared, images, targets, maps, steps=steps, seed=seed)
    return {"cascade": asdict(cascade), "removal": scores, "blur_sigma": sigma}


def literature_section(report: Any, summary: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
    """Fills ``summary["literature"]`` and adds the report's section, from the chunks' :func:`evaluate` outputs."""
    parts = [o["literature"] for o in outputs if o.get("literature")]
    if not parts:
        return
    first = parts[0]["cascade"]
    cascade = MethodCascade(steps=list(first["steps"]), spearman={
        k: np.concatenate([np.asarray(p["cascade"]["spearman"][k]) for p in parts], axis=1) for k in first["spearman"]
    })
    scores = {k: {m: np.concatenate([np.asarray(p["removal"][k][m]) for p in parts]) for m in parts[0]["removal"][k]}
              for k in parts[0]["removal"]}
    rows = removal_rows(scores)
    order = cascade.ordering()
    images = int(next(iter(cascade.spearman.values())).shape[1])
    sigma = float(parts[0]["blur_sigma"])
    by = {r["method"]: r for r in rows}
    summary["literature"] = {"images": images, "cascade": cascade.rows(), "ordering": order, "removal": rows,
                             "blur_sigma": sigma}
    s = report.section("Against the literature: methods side by side", id="literature")
    s.text(
        f"Cascading randomization by block (Adebayo et al. 2018) for {', '.join(cascade.spearman)} on {images} "
        f"images: blocks re-initialized from the output down, each method's maps compared (Spearman, absolute "
        f"maps) with its maps on the trained model. The paper finds the gradient and SmoothGrad decorrelate and "
        f"guided backprop much less."
    )
    s.finding(
        "Decorrelation under randomization, most first (mean Spearman over the cascade): "
        + ", ".join(f"{k} {v:.2f}" for k, v in order) + "."
    )
    s.table(cascade.rows(), ["randomized_down_to", *cascade.spearman])
    s.text(
        f"Removal metrics on the same images: deletion/insertion AUC (Petsiuk et al. 2018) and ROAD "
        f"(Rong et al. 2022; LeRF - MoRF gap, higher is better). {BLURRED} is a control: the SmoothGrad map "
        f"blurred (Gaussian, sigma {sigma:g} px). It adds nothing about the model, so a method that beats "
        f"SmoothGrad by no more than the blur does is not shown to explain better."
    )
    if BLURRED in by and "smoothgrad" in by and by[BLURRED]["road_gap"] > by["smoothgrad"]["road_gap"]:
        s.finding(
            f"Blur alone raises SmoothGrad's ROAD gap from {by['smoothgrad']['road_gap']:.3f} to "
            f"{by[BLURRED]['road_gap']:.3f}: ROAD rewards smooth maps here, so read its ranking with that control."
        )
    s.table(rows, ["method", "deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_gap",
                   "rank_deletion_auc", "rank_insertion_auc", "rank_road_gap"])
