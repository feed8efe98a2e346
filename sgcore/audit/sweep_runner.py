"""``python -m jobs.sweep``: the paper's noise × samples grid and a convergence
curve for a few images of a dataset, written as an HTML page + summary.json.

Images come from a results directory (its rows give targets and seeds, its
manifest the model) or straight from an input URL and a model (targets =
the model's predictions). A sweep covers a handful of images, so it runs in
this process.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sgcore.audit import plots
from sgcore.audit.classes import map_statistics
from sgcore.audit.metrics import finite_mean
from sgcore.audit.report import Report, write_report
from sgcore.audit.results import check_model_files, hash_sample, load_images
from sgcore.audit.sanity import MapSettings
from sgcore.audit.sweep import (
    DEFAULT_CONVERGENCE_COUNTS,
    DEFAULT_NOISE_LEVELS,
    DEFAULT_SAMPLE_COUNTS,
    convergence,
    sweep_grid,
)
from sgcore.errors import ConfigError
from sgcore.io import join, plan_shards
from sgcore.models import check_base
from sgcore.pipeline.replica import Replica
from sgcore.results import open_results_dir, read_index, row_classes
from sgcore.seeds import image_seed


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Settings of ``python -m jobs.sweep``.

    Attributes:
        report: output directory for ``index.html`` and ``summary.json``.
        results: a results directory to take images, targets, seeds and the
            model from; or None with ``input`` and ``model``.
        input: an image folder URL (used when ``results`` is None, or to
            re-root the results' images).
        model, weights: the classifier (default: the manifest's, else demo).
        images: how many images (chosen by a hash of seed and image id).
        noise_levels, sample_counts: the grid.
        convergence_counts, reference_samples: the convergence curve.
        convergence_noise: σ fraction for the convergence curve (None: the
            manifest's, else 0.15).
        aggregate, base, noise, reduction: SmoothGrad settings of every map
            (None: the ones the results' manifest recorded, else the defaults
            of :class:`~sgcore.audit.sanity.MapSettings`); precision,
            ``ig_steps`` and ``max_batch`` always follow the manifest.
    """

    report: str
    results: str | None = None
    input: str | None = None
    model: str | None = None
    weights: str | None = None
    images: int = 4
    noise_levels: tuple[float, ...] = DEFAULT_NOISE_LEVELS
    sample_counts: tuple[int, ...] = DEFAULT_SAMPLE_COUNTS
    convergence_counts: tuple[int, ...] = DEFAULT_CONVERGENCE_COUNTS
    reference_samples: int = 500
    convergence_noise: float | None = None
    aggregate: str | None = None
    base: str | None = None
    noise: str | None = None
    reduction: str | None = None
    seed: int = 0
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.report, str) or not self.report.strip():
            raise ConfigError(f"report must be a non-empty URL or path; got {self.report!r}")
        if self.results is None and self.input is None:
            raise ConfigError("sweep needs --results URL or --input URL; got neither")
        for name in ("images", "reference_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        for level in (*self.noise_levels, *([self.convergence_noise] if self.convergence_noise is not None else [])):
            if not 0.0 <= float(level) <= 1.0:
                raise ConfigError(f"noise levels must be in [0, 1]; got {level}")
        for n in (*self.sample_counts, *self.convergence_counts):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"sample counts must be positive integers; got {n!r}")
        if not self.noise_levels or not self.sample_counts or not self.convergence_counts:
            raise ConfigError("noise_levels, sample_counts and convergence_counts must not be empty")
        if self.reference_samples < max(self.convergence_counts):
            raise ConfigError(
                f"reference_samples must be >= the largest convergence count "
                f"{max(self.convergence_counts)}; got {self.reference_samples}"
            )
        try:
            self.settings({})
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def settings(self, job: dict[str, Any]) -> MapSettings:
        """The maps' settings: this config's, else those ``job`` (a manifest's config) recorded."""
        return MapSettings.from_job(
            job, aggregate=self.aggregate, base=self.base, noise=self.noise, reduction=self.reduction,
            noise_level=self.convergence_noise,
        )


def run_sweep(config: SweepConfig, *, log: Any = print) -> dict[str, Any]:
    """Runs the sweep and writes the page; returns ``summary.json``'s content."""
    t0 = time.perf_counter()
    picked = _pick_images(config)
    ids, targets, model_name, weights = picked.ids, picked.targets, picked.model, picked.weights
    settings = config.settings(picked.job)
    check_base(model_name, settings.base)  # before the model is loaded: guided backprop cannot see an archive's ReLUs
    if picked.results is not None:
        check_model_files(picked.results, model_name, weights, config.storage_options, what="the sweep")
    noise = settings.noise_level
    # As the audit does: the job's replica, with the run's resolved preprocessing, given whole, and the
    # run's --score and preparation, so the cell at the run's settings holds the run's own maps.
    replica = Replica(model_name, weights, image_size=picked.image_size, storage_options=config.storage_options,
                      preprocess=picked.preprocess, score=picked.job.get("score") or "logit",
                      fold_bn=picked.job.get("fold_bn", True))
    preprocess = replica.preprocess
    pixels = load_images(picked.sources, preprocess, config.storage_options, image_column=picked.job.get("image_column"))
    x = replica.inputs(torch.from_numpy(pixels))
    model = replica.explained
    if targets is None:
        with torch.no_grad():
            targets = model(x).argmax(dim=1).tolist()
    t = torch.tensor(targets, dtype=torch.int64)
    s = torch.tensor(picked.seeds, dtype=torch.int64)
    log(f"sweep: {len(ids)} images, {len(config.noise_levels)}x{len(config.sample_counts)} grid")
    grid = sweep_grid(
        model, x, t, noise_levels=config.noise_levels, sample_counts=config.sample_counts, seeds=s, settings=settings,
    )
    log("sweep: convergence curve")
    conv = convergence(
        model, x, t, sample_counts=config.convergence_counts, reference_samples=config.reference_samples, seeds=s,
        settings=settings,
    )

    cells = []
    for i, level in enumerate(grid.noise_levels):
        for j, n in enumerate(grid.sample_counts):
            st = map_statistics(grid.maps[i, j])
            cells.append(
                {"noise_level": level, "n_samples": n, "entropy": float(st["entropy"].mean()),
                 "gini": float(st["gini"].mean())}
            )
    expected = conv.expected_spearman()
    conv_rows = [
        {"n_samples": n, "relative_l2": float(conv.relative_l2[k].mean()), "spearman": float(conv.spearman[k].mean()),
         "estimated_reliability": finite_mean(conv.estimated[k]),
         "estimated_reproducibility": finite_mean(conv.reproducibility[k]), "expected_spearman": finite_mean(expected[k])}
        for k, n in enumerate(conv.sample_counts)
    ]
    enough = [r["n_samples"] for r in conv_rows if r["spearman"] >= 0.95]
    summary: dict[str, Any] = {
        "model": model_name,
        "weights": weights,
        "settings": {k: getattr(settings, k) for k in ("aggregate", "base", "noise", "reduction", "precision", "ig_steps")},
        "images": [
            {"image_id": i, "label": lab, "target": tg} for i, lab, tg in zip(ids, picked.labels, targets, strict=True)
        ],
        "grid": {"noise_levels": list(grid.noise_levels), "sample_counts": list(grid.sample_counts), "cells": cells},
        "convergence": {
            "noise_level": noise,
            "reference_samples": conv.reference_samples,
            "reference_reliability": finite_mean(conv.reference_reliability),
            "reference_reproducibility": finite_mean(conv.reference_reproducibility),
            "points": conv_rows,
            "n_for_spearman_0.95": enough[0] if enough else None,
        },
    }

    report = Report(
        title="SmoothGrad parameter sweep",
        subtitle=f"model {model_name} ({weights}) · {len(ids)} images · {settings.aggregate} of {settings.base} "
        f"maps, {settings.noise} noise, {settings.reduction} over channels",
    )
    sec = report.section("Noise level × number of samples")
    sec.text(
        "Rows: noise level σ/(x_max − x_min); columns: samples n (Smilkov et al. 2017, Figs. 3–4). "
        "Maps shown as |m| clipped at the 99th percentile."
    )
    for k, image_id in enumerate(ids):
        sec.figure(
            f"grid_{k:02d}",
            plots.sweep_figure(grid.maps[:, :, k], grid.noise_levels, grid.sample_counts, f"{image_id} (target {targets[k]})"),
            f"{image_id}: maps over the grid.",
        )
    sec.text("Mean map statistics per cell (lower entropy / higher Gini = more concentrated):")
    sec.table(cells, ["noise_level", "n_samples", "entropy", "gini"])
    sec2 = report.section("Convergence with n")
    sec2.text(
        f"Distance of the n-sample map to an independent {conv.reference_samples}-sample map at noise "
        f"{noise:.2f}. "
        + (f"Spearman ≥ 0.95 first at n = {first}. " if (first := summary["convergence"]["n_for_spearman_0.95"])
           is not None else f"Spearman stays below 0.95 up to n = {max(conv.sample_counts)}. ")
        + "Beside the measured Spearman: the kernel's own reliability estimate of each map (its Spearman with the "
        "converged map, from its own samples, as every row of a run carries it) and what the estimates predict "
        "for the measurement (from both maps' reliability and reproducibility estimates, the reference's "
        "reliability"
        + (f" {ref_rel:.3f}" if (ref_rel := summary["convergence"]["reference_reliability"]) is not None
           else " unknown here")
        + ", since the reference is itself a finite sample that shares part of the map's bias)."
    )
    sec2.table(conv_rows, ["n_samples", "relative_l2", "spearman", "expected_spearman", "estimated_reliability"])
    sec2.figure(
        "convergence",
        plots.convergence_curve(conv.sample_counts, conv.relative_l2, conv.spearman, conv.reference_samples,
                                estimated=conv.estimated, expected=expected),
        "Mean over the images; left, the dashed line is the 1/sqrt(n) Monte-Carlo rate; right, the measured "
        "Spearman with the reference beside the kernel's reliability estimate.",
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(config.report, report, summary, config.storage_options)
    log(f"sweep: wrote {join(config.report, 'index.html')}")
    return summary


@dataclass(frozen=True, kw_only=True)
class _Picked:
    """The sweep's images and where their settings come from."""

    ids: list[str]
    labels: list[str | None]
    sources: list[str]
    targets: list[int] | None  # None: the model's predictions
    seeds: list[int]
    model: str
    weights: str
    image_size: int | None
    preprocess: dict[str, Any] | None  # the run's resolved preprocessing (None for --input: the model's own)
    job: dict[str, Any]  # the results' recorded config ({} for --input)
    results: Any = None  # the opened results directory (None for --input)


def _pick_images(config: SweepConfig) -> _Picked:
    if config.results is not None:
        results = open_results_dir(config.results, storage_options=config.storage_options, allow_partial=True)
        job = results.config
        index = read_index(results)
        all_ids = index.column("image_id").to_pylist()
        rows = hash_sample(all_ids, config.images, config.seed)
        ids = [all_ids[r] for r in rows]
        classes = row_classes(index)
        if config.input:
            sources = [join(config.input, i) for i in ids]
        else:
            src = index.column("source").to_pylist()
            sources = [src[r] for r in rows]
        tg = index.column("target").to_pylist()
        sd = index.column("seed").to_pylist()
        return _Picked(
            ids=ids, labels=[classes[r] for r in rows], sources=sources, targets=[int(tg[r]) for r in rows],
            seeds=[int(sd[r]) for r in rows], model=config.model or job.get("model") or "demo",
            weights=config.weights or job.get("weights") or "default", image_size=job.get("image_size"),
            preprocess=_run_preprocess(results, config), job=job, results=results,
        )
    if config.input is None:  # SweepConfig.__post_init__ requires input or results
        raise ConfigError("sweep needs --input or --results with an input in its manifest")
    specs = plan_shards(config.input, shard_size=1 << 30, storage_options=config.storage_options)
    if any(spec.kind != "images" for spec in specs):
        raise ConfigError(
            f"sweep --input takes a folder of image files; got {specs[0].kind} shards in {config.input} "
            f"(run jobs.smoothgrad on it and pass --results instead)"
        )
    found = [(m, join(spec.root, m)) for spec in specs for m in spec.members]
    rows = hash_sample([m for m, _ in found], config.images, config.seed)
    ids = [found[r][0] for r in rows]
    return _Picked(
        # The class is the parent folder's name, as the job's reader labels an images layout.
        ids=ids, labels=[posixpath.basename(posixpath.dirname(i)) or None for i in ids],
        sources=[found[r][1] for r in rows], targets=None, seeds=[image_seed(config.seed, i) for i in ids],
        model=config.model or "demo", weights=config.weights or "default", image_size=None, preprocess=None, job={},
    )


def _run_preprocess(results: Any, config: SweepConfig) -> dict[str, Any] | None:
    """The preprocessing the run resolved, unless --model/--weights name another model; then its own
    (with the run's --preprocess overrides)."""
    job = results.config
    same = (config.model in (None, job.get("model"))) and (config.weights in (None, job.get("weights")))
    if same and results.manifest.preprocess:
        return results.preprocess.to_dict()
    return job.get("preprocess")
