"""The audit of one results directory: per-class view, localization, sanity
checks, faithfulness, optional model comparison, then the report.

Cheap passes (statistics, masks) stream over the part files in this process;
the heavy ones (recomputing maps on randomized models, perturbation curves)
run on a sample of images on the Ray actor pool.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit._workers import Chunk, WorkerSpec, run_chunks
from sgcore.audit.classes import ClassView
from sgcore.audit.compare import DEFAULT_COMPARE_MARGIN, class_changes, compare_results
from sgcore.audit.faithfulness import FaithfulnessResult
from sgcore.audit.literature import literature_section
from sgcore.audit.localization import (
    LocalizationScores,
    boxes_to_map_mask,
    localization_scores,
)
from sgcore.audit.metrics import finite_mean
from sgcore.audit.reliability import DEFAULT_THRESHOLD as DEFAULT_RELIABILITY_THRESHOLD
from sgcore.audit.reliability import add_risks, reliability_section
from sgcore.audit.report import Report, write_report
from sgcore.audit.results import check_model_files, hash_sample, load_images, load_mask, read_boxes
from sgcore.audit.road_pic import road_pic_section
from sgcore.audit.sanity import MapSettings
from sgcore.audit.strategies import StrategyConfig
from sgcore.audit.strategy_report import strategy_section
from sgcore.errors import ConfigError, InputError
from sgcore.io import GEOMETRY_COLUMNS, join, url_to_fs
from sgcore.pipeline.pool import ItemFailed
from sgcore.pipeline.progress import format_duration
from sgcore.results import (
    Results,
    iter_parts,
    open_results_dir,
    read_errors,
    read_index,
    read_maps,
    row_classes,
)


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Settings of ``python -m jobs.audit``; model and data default to the manifest's.

    Attributes:
        results: the results directory (the job's ``--output``).
        report: where ``index.html`` and ``summary.json`` go.
        model, weights: override the manifest's model (e.g. a moved checkpoint).
        input: override the manifest's input root: images are re-read from
            ``input/<image_id>``.
        masks: root of binary object masks at ``masks/<image_id>``; None looks
            for a ``masks`` folder beside an input folder named ``images``.
        boxes: instead of masks, a CSV or Parquet file of object boxes with
            columns ``image_id, x0, y0, x1, y1`` in original image pixels
            (several rows per image: their union); drawn into map geometry
            with each row's geometry columns.
        compare: a second results directory to compare maps with.
        sample: images drawn (by a hash of the audit seed and image id) for
            the sanity and faithfulness checks.
        n_samples: SmoothGrad samples for recomputed maps (None: manifest's).
        steps: points of the deletion/insertion curves minus one.
        examples: most/least concentrated examples shown per class.
        border_width: border band width, as a fraction of the shorter side.
        pointing_tolerance: pixels of slack in the pointing game.
        chunk_size: images per work item on the replica pool (the unit of
            progress, retry and resume).
        quick: a cheap first look: ``sample`` 4, ``n_samples`` 4, ``steps``
            8 and ``examples`` 1 wherever they are left at their defaults.
        max_retries: attempts after the first for a chunk whose replica died.
        num_actors: Ray actors (None: one per CPU); 0 runs in this process, without Ray.
        gpus_per_actor: GPUs each actor reserves. The maps are recomputed on
            CUDA only when this is > 0 (and torch sees a GPU), in this
            process too; 0 keeps them on the CPU even on a GPU machine.
            ``summary.json["device"]`` says where they ran.
        literature: also compare the gradient, guided backprop, SmoothGrad,
            SmoothGrad² and VarGrad on the sampled images: a block-by-block
            randomization cascade per method and their removal scores, with a
            blurred-map control (:mod:`sgcore.audit.literature`; costly).
        strategies: cluster each class's maps into strategies (SpRAy) and flag
            likely shortcuts (:mod:`sgcore.audit.strategies`).
        strategy_by: group by ``"predicted"`` class or by ``"label"``.
        max_strategies: most clusters per class.
        strategy_resolution: maps are area-averaged to this many cells a side.
        reliability_threshold: maps whose estimated reliability (Spearman
            with their converged map) is below this count as unreliable.
        compare_margin: with ``compare``, an image's maps changed
            significantly when their Spearman is below what the two maps' own
            Monte Carlo noise allows (``expected_agreement`` of their
            reliability and reproducibility columns) by more than this.
        address: Ray cluster; None: ``RAY_ADDRESS``, else a fresh local Ray
            (``"auto"`` joins a cluster started with ``ray start``).
    """

    results: str
    report: str
    model: str | None = None
    weights: str | None = None
    input: str | None = None
    masks: str | None = None
    boxes: str | None = None
    compare: str | None = None
    sample: int = 64
    sanity: bool = True
    faithfulness: bool = True
    localization: bool = True
    literature: bool = False
    n_samples: int | None = None
    steps: int = 32
    examples: int = 3
    border_width: float = 0.125
    pointing_tolerance: int = 0
    seed: int = 0
    chunk_size: int = 2
    quick: bool = False
    max_retries: int = 3
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
    strategies: bool = True
    strategy_by: str = "predicted"
    max_strategies: int = 8
    strategy_resolution: int = 16
    reliability_threshold: float = DEFAULT_RELIABILITY_THRESHOLD
    compare_margin: float = DEFAULT_COMPARE_MARGIN
    address: str | None = None
    allow_partial: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("results", "report"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty URL or path; got {value!r}")
        if self.boxes is not None:
            if not isinstance(self.boxes, str) or not self.boxes.strip():
                raise ConfigError(f"boxes must be a non-empty URL or path of a CSV/Parquet file; got {self.boxes!r}")
            if self.masks is not None:
                raise ConfigError("pass either masks (--masks) or boxes (--boxes) as localization ground truth, not both")
        for name in ("sample", "steps", "chunk_size"):
            _positive(name, getattr(self, name))
        if self.n_samples is not None:
            _positive("n_samples", self.n_samples)
        for name in ("examples", "pointing_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer; got {value!r}")
        if self.num_actors is not None and (not isinstance(self.num_actors, int) or self.num_actors < 0):
            raise ConfigError(f"num_actors must be a non-negative integer; got {self.num_actors!r}")
        if not 0.0 < self.border_width < 0.5:
            raise ConfigError(f"border_width must be in (0, 0.5); got {self.border_width}")
        for name in ("reliability_threshold", "compare_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1]; got {value!r}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0; got {self.gpus_per_actor}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative integer; got {self.max_retries!r}")
        if self.strategies:
            self.strategy_config()  # bad strategy settings fail here

    def effective(self) -> AuditConfig:
        """The settings the audit runs with: ``quick``'s cheap values where fields are at their defaults."""
        if not self.quick:
            return self
        defaults = {f.name: f.default for f in fields(self)}
        cheap = {k: v for k, v in QUICK.items() if getattr(self, k) == defaults[k]}
        return replace(self, **cheap)

    def strategy_config(self) -> StrategyConfig:
        """The strategy clustering's settings."""
        return StrategyConfig(by=self.strategy_by, max_clusters=self.max_strategies,  # type: ignore[arg-type]
                              resolution=self.strategy_resolution, border_width=self.border_width, seed=self.seed)


# What --quick changes (where the user left the default): a first look in about a minute on a CPU.
QUICK: dict[str, Any] = {"sample": 4, "n_samples": 4, "steps": 8, "examples": 1}


def run_audit(
    config: AuditConfig,
    *,
    log: Any = print,
    on_chunk: Callable[[int, Any, int], None] | None = None,
) -> dict[str, Any]:
    """Audits ``config.results`` and writes the report; returns ``summary.json``'s content.

    Args:
        config: the audit's settings.
        log: where the plan and the progress lines go.
        on_chunk: called as each chunk of the heavy checks finishes, with its
            index, its output (or :class:`~sgcore.pipeline.pool.ItemFailed`)
            and the pid of the replica that ran it.

    Finished chunks of the heavy checks are kept under ``REPORT/_partial``
    until the report is written, so an interrupted audit rerun with the same
    settings resumes from them.
    """
    t0 = time.perf_counter()
    config = config.effective()
    results = open_results_dir(config.results, storage_options=config.storage_options, allow_partial=config.allow_partial)
    job = results.config
    preprocess = results.preprocess
    model = config.model or job.get("model")
    weights = config.weights or job.get("weights") or "default"
    if not model:
        raise InputError(f"the manifest of {results.url} names no model; pass --model")
    random_weights = str(weights).lower() == "none"
    settings = MapSettings.from_job(job, n_samples=config.n_samples)
    heavy = config.sanity or config.faithfulness or config.literature
    if heavy:  # only the heavy checks rebuild the model
        check_model_files(results, model, weights, config.storage_options, what="the audit")
    masks_root = None
    boxes: dict[str, np.ndarray] | None = None
    if config.localization and config.boxes:
        boxes = read_boxes(config.boxes, config.storage_options)  # bad files fail here, before any work
    elif config.localization:
        masks_root = config.masks or _default_masks(job.get("input"), config.storage_options)
    truth = "boxes" if boxes is not None else "masks" if masks_root else None
    run_settings = {k: job.get(k) for k in _SETTINGS}
    used = {k: getattr(settings, k) for k in _SETTINGS}
    report = Report(
        title="SmoothGrad audit",
        subtitle=(
            f"results {results.url} · model {model} ({weights}{', random' if random_weights else ''}) · "
            f"maps of the run: {_describe(run_settings)}"
            + (f" · recomputed for the checks: {_describe(used)}" if heavy else "")
            + f" · config {results.manifest.config_hash}"
        ),
    )
    if random_weights:
        report.warnings.append(
            f"The model has random weights (--weights none): {model} was never trained, so these maps explain "
            "an untrained network. Pass --weights to audit a trained model."
        )
    summary: dict[str, Any] = {
        "results": results.url,
        "model": model,
        "weights": weights,
        "random_weights": random_weights,
        "config_hash": results.manifest.config_hash,
        "run_settings": run_settings,
        # The settings the audit's recomputed maps used (what its numbers rest on).
        "settings": used if heavy else run_settings,
        "quick": config.quick,
    }

    # ---- streaming pass: per-class statistics and localization ----------------
    log("audit: per-class statistics" + (f" and localization ({truth})" if truth else "")
        + f" over {len(results.parts)} part(s)")
    stream = _Progress("per-class view", len(results.parts), "parts", log)
    view = ClassView(examples=config.examples, border_width=config.border_width)
    per_image: list[dict[str, Any]] = []
    loc_parts: list[LocalizationScores] = []
    loc_labels: list[str] = []
    missing = 0  # images without a mask / without a box
    outside = 0  # images whose boxes all fall outside the map's crop
    seen_ids: set[str] = set()
    map_shape: tuple[int, int] | None = None
    for meta, maps in iter_parts(results):
        stream.step(1)
        if maps is None or len(meta) == 0:
            continue
        map_shape = (int(maps.shape[1]), int(maps.shape[2]))
        labels = row_classes(meta)
        ids = meta.column("image_id").to_pylist()
        stats = view.add(labels, ids, maps)
        estimates = _column(meta, "reliability")
        samples = _column(meta, "n_samples")
        for i, image_id in enumerate(ids):
            per_image.append(
                {"image_id": image_id, "label": labels[i], **{k: float(v[i]) for k, v in stats.items()},
                 "reliability": estimates[i], "n_samples": samples[i]}
            )
        start = len(per_image) - len(ids)
        seen_ids.update(ids)
        if truth:
            got, keep = [], []
            geometry = _geometry(meta, results.url) if boxes is not None else None
            for i, image_id in enumerate(ids):
                if boxes is not None and geometry is not None:
                    if image_id not in boxes:
                        missing += 1
                        continue
                    mask = boxes_to_map_mask(boxes[image_id], **{k: v[i] for k, v in geometry.items()})
                    if not mask.any():
                        outside += 1
                        continue
                    got.append(mask)
                    keep.append(i)
                    continue
                try:
                    got.append(load_mask(join(masks_root, image_id), preprocess, config.storage_options))
                    keep.append(i)
                except InputError:
                    missing += 1
            if keep:
                scores = localization_scores(maps[keep], np.stack(got), tolerance=config.pointing_tolerance)
                loc_parts.append(scores)
                loc_labels.extend(labels[i] for i in keep)
                for j, i in enumerate(keep):
                    per_image[start + i].update(
                        mass_in_mask=float(scores.mass_in_mask[j]),
                        mask_area=float(scores.mask_area[j]),
                        pointing_hit=bool(scores.pointing_hit[j]),
                    )
    errors = read_errors(results)
    if not per_image or map_shape is None:
        raise InputError(f"results at {results.url} hold no ok rows to audit"
                         + (f" ({len(errors)} error rows, e.g. {errors[0]['error']})" if errors else ""))
    summary["images"] = {"rows": len(per_image) + len(errors), "ok": len(per_image), "errors": len(errors),
                         "classes": len(view.summaries())}
    summary["error_rows"] = _error_reasons(errors)
    report.attach("per_image.csv", _csv(per_image))
    if errors:
        report.attach("error_rows.csv", _csv(errors))
    index = read_index(results)
    summary["accuracy"] = _accuracy(index)
    report.overview.extend(_overview(results, model, weights, random_weights, job, run_settings, used, heavy,
                                     summary, config))
    _class_section(report, summary, view, results, index, config, map_shape)
    reliability = reliability_section(report, summary, per_image, config.reliability_threshold)
    if boxes is not None:
        info: dict[str, Any] = {
            "ground_truth": "boxes",
            "boxes": config.boxes,
            "missing_boxes": missing,
            "boxes_outside_map": outside,
            "boxes_without_result": len(set(boxes) - seen_ids),
        }
        _localization_section(report, summary, loc_parts, loc_labels, info)
    elif masks_root:
        info = {"ground_truth": "masks", "masks": masks_root, "missing_masks": missing}
        _localization_section(report, summary, loc_parts, loc_labels, info)
    else:
        summary["localization"] = None
        report.section("Localization", id="localization").text(
            "Skipped: no object masks (pass --masks URL with masks at <masks>/<image_id>, or --boxes FILE, "
            "a CSV/Parquet file with columns image_id, x0, y0, x1, y1 in original image pixels)."
        )

    summary["strategies"] = None
    if config.strategies:
        strategy_section(
            report, summary, per_image, results, index, config.strategy_config(),
            num_actors=config.num_actors, address=config.address, log=log,
            examples_for=lambda ids: _examples(results, index, ids, config),
        )
        report.attach("per_image.csv", _csv(per_image))  # now with strategy and strategy_flagged

    # ---- heavy checks on a sample, on the actor pool --------------------------
    summary["sanity"] = None
    summary["faithfulness"] = None
    summary["device"] = None  # where the maps were recomputed, when they were
    all_ids = index.column("image_id").to_pylist()
    rows: list[int] = []
    if heavy:
        rows = hash_sample(all_ids, config.sample, config.seed)
        sampled_maps = read_maps(results, index, rows)
        sources = _sources(index, rows, config.input)
        targets = index.column("target").to_pylist()
        seeds = index.column("seed").to_pylist()
        spec = WorkerSpec(
            model=model,
            weights=weights,
            image_size=job.get("image_size"),
            preprocess=preprocess.to_dict(),
            settings=settings,
            sanity=config.sanity,
            faithfulness=config.faithfulness,
            literature=config.literature,
            steps=config.steps,
            seed=config.seed,
            image_column=job.get("image_column"),
            use_gpu=config.gpus_per_actor > 0,
            score=job.get("score") or "logit",
            fold_bn=bool(job.get("fold_bn", True)),
            storage_options=config.storage_options,
        )
        chunks = [
            Chunk(
                sources=[sources[k] for k in range(i, min(i + config.chunk_size, len(rows)))],
                targets=[int(targets[r]) for r in rows[i : i + config.chunk_size]],
                seeds=[int(seeds[r]) for r in rows[i : i + config.chunk_size]],
                maps=sampled_maps[i : i + config.chunk_size],
            )
            for i in range(0, len(rows), config.chunk_size)
        ]
        layers = _weight_layers(model)
        log("audit plan: " + _plan_line(config, settings, len(rows), summary["images"], len(chunks), layers))
        partial = _Partial(config, spec, results.manifest.config_hash)
        kept = {i: v for i in range(len(chunks)) if (v := partial.load(i, chunks[i])) is not None}
        if kept:
            log(f"audit: resuming: {len(kept)} of {len(chunks)} chunk(s) kept from an earlier run in {partial.root}")
        todo = [i for i in range(len(chunks)) if i not in kept]
        progress = _Progress("sanity/faithfulness", len(chunks), "chunks", log, done=len(kept))

        def finished(j: int, value: Any, pid: int) -> None:
            i = todo[j]
            if not isinstance(value, ItemFailed):
                partial.save(i, chunks[i], value)
            progress.step(1, failed=isinstance(value, ItemFailed))
            if on_chunk is not None:
                on_chunk(i, value, pid)

        def step(done: int, total: int) -> None:
            progress.note(f"map set {done}/{total} of the chunk")

        try:
            fresh, record = run_chunks(
                spec, [chunks[i] for i in todo], num_actors=config.num_actors, address=config.address,
                gpus_per_actor=config.gpus_per_actor, max_retries=config.max_retries, on_result=finished,
                on_step=step if config.sanity else None, log=log,
            )
        except KeyboardInterrupt:
            log(f"audit: interrupted; {progress.done - progress.failed} of {len(chunks)} chunk(s) of the heavy checks "
                f"are kept in {partial.root}: rerun the same command to resume from them")
            raise
        outputs_by_chunk = {**kept, **dict(zip(todo, fresh, strict=True))}
        ordered = [outputs_by_chunk[i] for i in range(len(chunks))]
        failed = [{"images": len(chunks[i].sources), "sources": chunks[i].sources, "reason": v.reason,
                   "attempts": v.attempts} for i, v in enumerate(ordered) if isinstance(v, ItemFailed)]
        outputs = [v for v in ordered if not isinstance(v, ItemFailed)]
        summary["heavy"] = {"sampled": len(rows), "chunks": len(chunks), "resumed_chunks": len(kept),
                            "evaluated_images": sum(o["images"] for o in outputs), "failed_chunks": failed,
                            **{k: record[k] for k in ("replicas", "replicas_lost")}}
        summary["device"] = sorted({o["device"] for o in outputs}) or None
        if failed:
            report.warnings.append(
                f"{sum(f['images'] for f in failed)} of {len(rows)} sampled images were left out of the sanity/"
                f"faithfulness checks: {failed[0]['reason']}" + (f" (and {len(failed) - 1} more chunk(s))"
                                                                  if len(failed) > 1 else "")
            )
        if outputs and config.sanity:
            _sanity_section(report, summary, outputs, settings, run_settings, random_weights)
        if outputs and config.faithfulness:
            _faithfulness_section(report, summary, outputs, config.steps)
            road_pic_section(report, summary, outputs)
        if outputs and config.literature:
            literature_section(report, summary, outputs)

    recomputed = heavy and settings.n_samples != run_settings.get("n_samples")
    add_risks(reliability, summary, per_image, heavy_ids=[all_ids[r] for r in rows] or None,
              heavy_note=(f"the run's maps of the sampled images; the checks recompute theirs at n={settings.n_samples}"
                          if recomputed else "the run's maps of the sampled images"))

    # ---- comparison -----------------------------------------------------------
    if config.compare:
        log(f"audit: comparing with {config.compare}")
        other = open_results_dir(config.compare, storage_options=config.storage_options, allow_partial=config.allow_partial)
        _compare_section(report, summary, results, other, config)

    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["findings"] = report.findings()
    write_report(config.report, report, summary, config.storage_options)
    if heavy:
        partial.clear()
    log(f"audit: wrote {join(config.report, 'index.html')} in {format_duration(summary['seconds'])}")
    return summary


# --------------------------------------------------------------------------- sections


def _class_section(
    report: Report,
    summary: dict[str, Any],
    view: ClassView,
    results: Results,
    index: Any,
    config: AuditConfig,
    shape: tuple[int, int],
) -> None:
    classes = view.summaries()
    area = view.border_area(*shape)
    summary["border_area"] = area
    summary["classes"] = [
        {"name": c.name, "count": c.count, "entropy": c.entropy, "gini": c.gini, "border_share": c.border_share}
        for c in classes
    ]
    s = report.section("Per-class view", id="classes")
    acc = summary.get("accuracy")
    if acc:
        by_class = {r["label"]: r for r in acc["per_class"]}
        for c in summary["classes"]:
            if c["name"] in by_class:
                c["accuracy"] = by_class[c["name"]]["accuracy"]
        s.finding(f"The model predicts the label of {acc['correct']} of {acc['images']} labelled images "
                  f"(accuracy {acc['accuracy']:.3f}).")
    # A finding only where a class puts more on the border than a position-blind map would.
    widest = max(summary["classes"], key=lambda c: c["border_share"])
    said = (f"Class {widest['name']} puts the most saliency on the image border: {widest['border_share']:.3f} of "
            f"its mass on a band covering {area:.3f} of the image")
    if widest["border_share"] > area:
        s.finding(said + f", {widest['border_share'] / area:.1f}x what a position-blind map puts there.")
    else:
        s.text(f"No class puts more saliency on the image border than a position-blind map would ({area:.3f}, "
               f"the band's share of the image); the most: {widest['name']}, {widest['border_share']:.3f}.")
    s.text(
        "Entropy is normalized (1 = uniform map); Gini 0 = uniform, near 1 = a few pixels; "
        f"border share is the saliency mass on the outer {100 * config.border_width:.1f}% band, "
        f"which covers {100 * area:.1f}% of the image (a position-blind map scores that)."
    )
    s.table(summary["classes"], ["name", "count", *(["accuracy"] if acc else []), "entropy", "gini", "border_share"])
    if acc:
        s.text(f"Confusion table of the {acc['images']} labelled ok rows: rows are labels, columns the model's "
               "predictions" + (f" (the {len(acc['columns']) - 1} most predicted classes, the rest as 'other')"
                                if "other" in acc["columns"] else "") + ".")
        s.table(acc["confusion"], ["label", *acc["columns"]])
    s.figure(
        "class_mean_maps",
        plots.map_grid([c.mean_map for c in classes], [f"{c.name} (n={c.count})" for c in classes]),
        "Mean map per class (each map scaled to unit mass first).",
    )
    if config.examples:
        for c in classes:
            picks = c.most_concentrated + c.least_concentrated
            titles = [f"most · G={g:.2f}" for _, g, _ in c.most_concentrated] + [
                f"least · G={g:.2f}" for _, g, _ in c.least_concentrated
            ]
            try:
                images = _images_for(results, index, [p[0] for p in picks], config)
            except InputError as e:
                s.text(f"{c.name}: examples not shown ({e}).")
                continue
            safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in c.name)
            s.figure(
                f"examples_{safe}",
                plots.map_grid([p[2] for p in picks], titles, images=images, columns=2 * config.examples),
                f"{c.name}: most (left) and least (right) concentrated maps: the heat overlay on the image "
                "(top) and the authors' view, the map clipped at its 99th percentile in grey (below).",
            )


def _localization_section(
    report: Report,
    summary: dict[str, Any],
    parts: list[LocalizationScores],
    labels: list[str],
    info: dict[str, Any],
) -> None:
    """``info``: where the ground truth came from and how many images lack it (goes into the summary)."""
    s = report.section("Localization", id="localization")
    by_boxes = info["ground_truth"] == "boxes"
    if by_boxes:
        what = "the object boxes"
        left_out = f"{info['missing_boxes']} image(s) had no box in {info['boxes']}"
        if info["boxes_outside_map"]:
            left_out += f", {info['boxes_outside_map']} only boxes outside the map's crop"
        if info["boxes_without_result"]:
            left_out += f"; {info['boxes_without_result']} image id(s) of the boxes file are not in the results"
    else:
        what = "the object mask"
        left_out = f"{info['missing_masks']} image(s) had no mask"
    if not parts:
        summary["localization"] = {"images": 0, **info}
        s.text(f"No image could be scored against {what} ({left_out}); do the ids match the results' image_id?"
               if by_boxes else f"No masks found under {info['masks']} ({left_out}).")
        return
    scores = LocalizationScores(
        mass_in_mask=np.concatenate([p.mass_in_mask for p in parts]),
        mask_area=np.concatenate([p.mask_area for p in parts]),
        pointing_hit=np.concatenate([p.pointing_hit for p in parts]),
    )
    loc = scores.summary()
    per_class = []
    arr = np.asarray(labels)
    for name in sorted(set(labels)):
        sel = arr == name
        sub = LocalizationScores(
            mass_in_mask=scores.mass_in_mask[sel], mask_area=scores.mask_area[sel], pointing_hit=scores.pointing_hit[sel]
        ).summary()
        per_class.append({"name": name, **sub})
    summary["localization"] = {**loc, **info, "per_class": per_class}
    s.text(
        f"Saliency mass inside {what}: {loc['mass_in_mask']:.3f} on average, for "
        f"{'boxes' if by_boxes else 'masks'} that "
        f"cover {loc['mask_area']:.3f} of the image ({loc['mass_ratio']:.2f}x their area); "
        f"pointing game hit rate {loc['pointing_game']:.3f}. {left_out}."
    )
    s.finding(f"On {loc['images']} images, {loc['mass_in_mask']:.3f} of the saliency lies inside {what}, which "
              f"cover{'s' if not by_boxes else ''} {loc['mask_area']:.3f} of the image ({loc['mass_ratio']:.2f}x "
              f"their area); the strongest pixel hits the object in {100 * loc['pointing_game']:.0f}% of images.")
    s.table(per_class, ["name", "images", "mass_in_mask", "mask_area", "mass_ratio", "pointing_game"])
    s.figure(
        "localization",
        plots.scatter(
            scores.mask_area, scores.mass_in_mask, xlabel="mask area (share of image)",
            ylabel="saliency mass in mask", title="Mass in mask vs mask area",
        ),
        "Each dot is an image; above the diagonal the map favours the object over its area share.",
    )


def _sanity_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]], settings: MapSettings,
                    run_settings: dict[str, Any], random_weights: bool) -> None:
    layers = outputs[0]["sanity"]["layers"]
    stacked = {
        key: np.concatenate([np.asarray(o["sanity"][key]) for o in outputs], axis=1)
        for key in ("spearman_abs", "spearman_signed", "ssim")
    }
    steps = []
    for i, layer in enumerate(layers):
        step: dict[str, Any] = {"layer": layer}
        for key, values in stacked.items():
            step[key] = float(np.nanmean(values[i]))
        for key, values in stacked.items():
            step[f"{key}_std"] = float(np.nanstd(values[i]))
        steps.append(step)
    summary["sanity"] = steps
    summary["sanity_images"] = int(stacked["ssim"].shape[1])
    s = report.section("Sanity check: cascading model-parameter randomization", id="sanity")
    last = steps[-1]
    reference = "the audited model (random weights, --weights none)" if random_weights else "the trained model"
    if settings.n_samples == run_settings.get("n_samples"):
        how = f"with the run's settings ({_describe({k: getattr(settings, k) for k in _SETTINGS})})"
    else:
        how = (f"with n={settings.n_samples} samples (the run's maps used n={run_settings.get('n_samples')}; "
               f"otherwise the run's settings)")
    s.text(
        f"Layers re-initialized one by one from the output down on a copy of the model; maps recomputed "
        f"on {summary['sanity_images']} images {how} and compared with the maps of {reference}. "
        f"Fully randomized: Spearman (abs) {last['spearman_abs']:.3f}, "
        f"Spearman (signed) {last['spearman_signed']:.3f}, SSIM {last['ssim']:.3f}. Maps that stay "
        f"similar to the reference do not depend on what the model learned (Adebayo et al. 2018)."
        + (" With random weights there is nothing learned to lose: expect little change, and read this "
           "check as a test of the method, not of a model." if random_weights else "")
    )
    passed = last["spearman_abs"] < 0.5
    s.finding(
        f"Randomizing every weight layer {'changes' if passed else 'barely changes'} the maps: Spearman (abs) "
        f"with {reference}'s maps falls to {last['spearman_abs']:.2f} on {summary['sanity_images']} images "
        f"({'passes' if passed else 'fails'} the randomization check"
        + (", which says little for random weights" if random_weights else "") + ")."
    )
    s.table(steps, ["layer", "spearman_abs", "spearman_signed", "ssim"])
    s.figure("sanity", plots.sanity_curve(steps),
             f"Similarity to the maps of {reference} per cascade step (mean ± sd).")


def _faithfulness_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]], steps: int) -> None:
    curves = {key: np.concatenate([np.asarray(o["faithfulness"][key]) for o in outputs])
              for key in outputs[0]["faithfulness"]}
    aucs = FaithfulnessResult(**curves).aucs()
    faith = {
        "images": int(curves["deletion"].shape[0]),
        "steps": steps,
        **{key: float(np.mean(values)) for key, values in aucs.items()},
        "deletion_beats_random": float(np.mean(aucs["deletion_auc"] < aucs["deletion_auc_random"])),
        "insertion_beats_random": float(np.mean(aucs["insertion_auc"] > aucs["insertion_auc_random"])),
    }
    summary["faithfulness"] = faith
    s = report.section("Faithfulness: deletion and insertion", id="faithfulness")
    better = faith["deletion_auc"] < faith["deletion_auc_random"] and faith["insertion_auc"] > faith["insertion_auc_random"]
    s.finding(
        f"Removing pixels in saliency order {'lowers' if better else 'does not lower'} the target probability "
        f"faster than a random order on {faith['images']} images: deletion AUC {faith['deletion_auc']:.3f} vs "
        f"{faith['deletion_auc_random']:.3f} random, insertion {faith['insertion_auc']:.3f} vs "
        f"{faith['insertion_auc_random']:.3f}."
    )
    s.text(
        f"Pixels removed (set to the normalization mean) or inserted (into a blurred copy) in order of "
        f"saliency, on {faith['images']} images (Petsiuk et al. 2018). Deletion AUC "
        f"{faith['deletion_auc']:.3f} vs {faith['deletion_auc_random']:.3f} for a random order (lower is "
        f"better); insertion AUC {faith['insertion_auc']:.3f} vs {faith['insertion_auc_random']:.3f} "
        f"(higher is better)."
    )
    s.table([{"metric": k, "value": v} for k, v in faith.items()], ["metric", "value"])
    s.figure("faithfulness", plots.perturbation_curves(curves), "Mean target probability along the curves.")


def _compare_section(report: Report, summary: dict[str, Any], a: Results, b: Results, config: AuditConfig) -> None:
    changes = compare_results(a, b)
    s = report.section("Model comparison", id="compare")
    if not changes:
        summary["compare"] = {"other": b.url, "images": 0}
        s.text(f"No image ids in common with {b.url}.")
        return
    margin = config.compare_margin
    per_class = class_changes(changes, margin)
    top = changes[: max(10, config.examples * 3)]
    verdicts = [c.significant(margin) for c in changes]
    judged = sum(v is not None for v in verdicts)
    significant = sum(bool(v) for v in verdicts)
    summary["compare"] = {
        "other": b.url,
        "other_model": b.config.get("model"),
        "other_weights": b.config.get("weights"),
        "images": len(changes),
        "spearman": float(np.nanmean([c.spearman for c in changes])),
        "prediction_changed": float(np.mean([c.predicted_a != c.predicted_b for c in changes])),
        "margin": margin,
        "noise_floor": finite_mean([c.noise_floor for c in changes]),
        "judged": judged,
        "significant": significant,
        "significant_share": significant / judged if judged else None,
        "classes": per_class,
        "most_changed": [
            {"image_id": c.image_id, "label": c.label, "spearman": c.spearman, "ssim": c.ssim,
             "noise_floor": c.noise_floor, "significant": c.significant(margin),
             "predicted_a": c.predicted_a, "predicted_b": c.predicted_b}
            for c in top
        ],
    }
    info = summary["compare"]
    s.text(
        f"{len(changes)} images in both result sets; mean Spearman of their maps "
        f"{info['spearman']:.3f}; prediction changed on {100 * info['prediction_changed']:.1f}%."
    )
    if judged:
        s.text(
            f"Monte Carlo noise alone would make the two runs' maps of an unchanged model correlate about "
            f"{info['noise_floor']:.3f} on average (per image, what two maps of their reliability and reproducibility agree at from noise alone). "
            f"An image counts as significantly changed when its Spearman falls more than {margin:g} below its own "
            f"floor: {significant} of {judged} images ({100 * info['significant_share']:.1f}%)."
            + (f" {len(changes) - judged} images lack a reliability estimate and are not judged."
               if judged < len(changes) else "")
        )
        s.finding(f"Against {b.url}: {significant} of {judged} shared images ({100 * info['significant_share']:.1f}%) "
                  f"changed their maps beyond Monte Carlo noise (mean Spearman {info['spearman']:.2f} against a "
                  f"noise floor of {info['noise_floor']:.2f}); the prediction changed on "
                  f"{100 * info['prediction_changed']:.1f}% of them.")
    else:
        s.text("Neither run's rows carry reliability estimates, so no change can be told apart from Monte Carlo noise.")
        s.finding(f"Against {b.url}: the maps of {len(changes)} shared images correlate {info['spearman']:.2f} "
                  f"(Spearman) on average; the prediction changed on {100 * info['prediction_changed']:.1f}% "
                  "of them.")
    s.text("Classes, most changed first:")
    s.table(per_class, ["label", "images", "spearman", "noise_floor", "significant", "ssim", "prediction_changed"])
    s.text("Most changed images:")
    s.table(info["most_changed"])
    s.figure(
        "compare_hist",
        plots.histogram(np.array([c.spearman for c in changes]), xlabel="Spearman(map A, map B)", title="Map agreement"),
        "Distribution of per-image rank correlation between the two runs' maps.",
    )


# --------------------------------------------------------------------------- helpers

_SETTINGS = ("n_samples", "noise_level", "aggregate", "base", "reduction", "precision")


def _describe(settings: dict[str, Any]) -> str:
    return (f"{settings.get('aggregate')} of {settings.get('base')}, n={settings.get('n_samples')}, "
            f"noise={settings.get('noise_level')}, {settings.get('precision')}")


def _column(meta: Any, name: str) -> list[Any]:
    """A column of a part's rows as Python values (Nones where the part lacks it)."""
    return meta.column(name).to_pylist() if name in meta.column_names else [None] * len(meta)


def _error_reasons(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Error rows grouped by message: ``[{"error", "rows", "examples"}]``, most frequent first."""
    groups: dict[str, list[str]] = {}
    for e in errors:
        groups.setdefault(str(e.get("error")), []).append(str(e.get("image_id")))
    return [{"error": msg, "rows": len(ids), "examples": ids[:5]}
            for msg, ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def _accuracy(index: Any, top: int = 12) -> dict[str, Any] | None:
    """Accuracy and a confusion table of the ok rows that have a label; None when none has."""
    names = index.column_names
    if "label" not in names:
        return None
    labels = index.column("label").to_pylist()
    predicted = (index.column("predicted_name").to_pylist() if "predicted_name" in names
                 else [None] * len(labels))
    numbers = index.column("predicted").to_pylist() if "predicted" in names else [None] * len(labels)
    pairs = [(str(lab), str(p if p is not None else f"class {n}"))
             for lab, p, n in zip(labels, predicted, numbers, strict=True) if lab is not None]
    if not pairs:
        return None
    counts: dict[str, int] = {}
    for _, p in pairs:
        counts[p] = counts.get(p, 0) + 1
    label_set = sorted({lab for lab, _ in pairs})
    # Labels first (the diagonal), then the most predicted others, the rest as "other".
    ranked = label_set + [p for p in sorted(counts, key=lambda p: (-counts[p], p)) if p not in label_set]
    columns = ranked[:top]
    if len(ranked) > top:
        columns.append("other")
    confusion = []
    per_class = []
    for lab in label_set:
        row: dict[str, Any] = {"label": lab, **{c: 0 for c in columns}}
        mine = [p for la, p in pairs if la == lab]
        for p in mine:
            row[p if p in columns else "other"] += 1
        confusion.append(row)
        per_class.append({"label": lab, "images": len(mine), "accuracy": sum(p == lab for p in mine) / len(mine)})
    correct = sum(lab == p for lab, p in pairs)
    return {"images": len(pairs), "correct": correct, "accuracy": correct / len(pairs), "columns": columns,
            "confusion": confusion, "per_class": per_class}


def _overview(results: Results, model: str, weights: str, random_weights: bool, job: dict[str, Any],
              run_settings: dict[str, Any], used: dict[str, Any], heavy: bool, summary: dict[str, Any],
              config: AuditConfig) -> list[tuple[str, str]]:
    """The first screen's "what was audited" rows."""
    images = summary["images"]
    rows = [
        ("Results", f"{results.url} ({'complete' if results.complete else 'incomplete: no _SUCCESS'})"),
        ("Model", f"{model}, weights {weights}" + (" (RANDOM: never trained)" if random_weights else "")),
        ("Data", f"{job.get('input')} · {images['rows']} rows: {images['ok']} ok, {images['errors']} error(s) · "
                 f"{images['classes']} class(es)"),
        ("Maps of the run", _describe(run_settings)),
    ]
    if heavy:
        rows.append(("Recomputed for the checks", f"{_describe(used)} · sample {config.sample} image(s), "
                                                   f"{config.steps} steps per curve"
                     + (" · --quick" if config.quick else "")))
    for e in summary["error_rows"][:5]:
        rows.append((f"Error rows ({e['rows']})", f"{e['error']} (e.g. {', '.join(e['examples'][:3])})"))
    if len(summary["error_rows"]) > 5:
        rows.append(("Error rows", f"{len(summary['error_rows']) - 5} more reason(s) in error_rows.csv"))
    acc = summary.get("accuracy")
    if acc:
        rows.append(("Accuracy", f"{acc['accuracy']:.3f} ({acc['correct']} of {acc['images']} labelled ok rows)"))
    return rows


def _weight_layers(model: str) -> int | None:
    """How many weight layers the cascade walks (counted on a randomly initialized copy), or None."""
    try:
        from sgcore.models import load_model

        net = load_model(model, "none").model
    except Exception:  # noqa: BLE001 - only an estimate; the workers count for real
        return None
    return sum(1 for m in net.modules() if getattr(getattr(m, "weight", None), "dim", lambda: 0)() >= 2)


def _plan_line(config: AuditConfig, settings: MapSettings, images: int, counts: dict[str, int], chunks: int,
               layers: int | None) -> str:
    """What the heavy checks will do, in passes of the model, before they start."""
    parts = [f"{images} of {counts['ok']} ok image(s) sampled ({counts['errors']} error row(s) left out), "
             f"{chunks} chunk(s) of {config.chunk_size}"]
    passes = 0
    if config.sanity:
        sets = f"{layers + 1}" if layers is not None else "(layers + 1)"
        parts.append(f"sanity: {images} images x {sets} map sets (" + (f"{layers} layers" if layers is not None
                     else "every weight layer") + f" + the model as given) x n={settings.n_samples} samples")
        if layers is not None:
            passes += images * (layers + 1) * settings.n_samples
    if config.faithfulness:
        parts.append(f"faithfulness: {images} images x 4 curves x {config.steps + 1} points")
        passes += images * 4 * (config.steps + 1)
    where = ("in this process" if config.num_actors == 0 else
             f"on {config.num_actors} replica(s)" if config.num_actors else "on as many replicas as the cluster's free CPUs/GPUs fit")
    total = f" = about {passes:,} forward(+backward) passes" if passes else ""
    return "; ".join(parts) + total + f", {where}"


class _Progress:
    """Progress lines of one section: done/total, elapsed and ETA (at most one line per 2 s, always the last)."""

    def __init__(self, name: str, total: int, unit: str, log: Any, *, done: int = 0, every: float = 2.0) -> None:
        self.name, self.total, self.unit, self.log, self.every = name, total, unit, log, every
        self.done = done
        self.start_done = done
        self.failed = 0
        self.t0 = time.perf_counter()
        self.last = -float("inf")

    def step(self, n: int, *, failed: bool = False) -> None:
        self.done += n
        self.failed += int(failed)
        now = time.perf_counter()
        if self.done < self.total and now - self.last < self.every:
            return
        self.last = now
        self.log(f"audit: {self.name} {self.done}/{self.total} {self.unit}"
                 + (f" ({self.failed} failed)" if self.failed else "") + f" | {self._times(now)}")

    def note(self, what: str) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.log(f"audit: {self.name} {self.done}/{self.total} {self.unit}, {what} | {self._times(now)}")

    def _times(self, now: float) -> str:
        elapsed = now - self.t0
        fresh = self.done - self.start_done
        left = self.total - self.done
        eta = format_duration(elapsed / fresh * left) if fresh > 0 else "?"
        return f"{format_duration(elapsed)} elapsed | ETA {eta if left else '0s'}"


class _Partial:
    """Finished chunks of the heavy checks, kept under ``REPORT/_partial`` until the report is written.

    A chunk's file name is a hash of everything its output depends on (results, model, weights,
    settings, seeds, images), so a rerun with other settings never reuses it.
    """

    def __init__(self, config: AuditConfig, spec: WorkerSpec, config_hash: str | None) -> None:
        self.root = join(config.report, "_partial")
        self.storage_options = config.storage_options
        self.base = json.dumps({
            "results": config.results, "config_hash": config_hash, "model": spec.model, "weights": spec.weights,
            "settings": {f.name: getattr(spec.settings, f.name) for f in fields(spec.settings)},
            "sanity": spec.sanity, "faithfulness": spec.faithfulness, "steps": spec.steps, "seed": spec.seed,
            "literature": spec.literature,
            "fold_bn": spec.fold_bn,
        }, sort_keys=True, default=str)

    def _url(self, i: int, chunk: Chunk) -> str:
        key = hashlib.sha256(json.dumps([self.base, chunk.sources, chunk.targets, chunk.seeds]).encode()).hexdigest()
        return join(self.root, f"chunk-{i:05d}-{key[:16]}.json")

    def load(self, i: int, chunk: Chunk) -> dict[str, Any] | None:
        from sgcore.io import read_bytes

        url = self._url(i, chunk)
        try:
            fs, path = url_to_fs(url, self.storage_options)
            if not fs.exists(path):
                return None
            return json.loads(read_bytes(fs, path, url=url))
        except (OSError, ValueError, InputError):
            return None  # unreadable: recompute

    def save(self, i: int, chunk: Chunk, output: dict[str, Any]) -> None:
        from sgcore.io import write_bytes

        write_bytes(self._url(i, chunk), json.dumps(_plain(output)).encode(), self.storage_options)

    def clear(self) -> None:
        try:
            fs, path = url_to_fs(self.root, self.storage_options)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except OSError:
            pass


def _plain(v: Any) -> Any:
    """numpy arrays and scalars as JSON lists and numbers (NaN kept)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _sources(index: Any, rows: list[int], input_root: str | None) -> list[str]:
    if input_root:
        ids = index.column("image_id").to_pylist()
        return [join(input_root, ids[r]) for r in rows]
    sources = index.column("source").to_pylist()
    return [sources[r] for r in rows]


def _images_for(results: Results, index: Any, image_ids: list[str], config: AuditConfig) -> list[np.ndarray]:
    position = {image_id: i for i, image_id in enumerate(index.column("image_id").to_pylist())}
    sources = _sources(index, [position[i] for i in image_ids], config.input)
    return list(load_images(sources, results.preprocess, config.storage_options,
                            image_column=results.config.get("image_column")))


def _examples(results: Results, index: Any, image_ids: list[str], config: AuditConfig) -> tuple[list, list]:
    position = {image_id: i for i, image_id in enumerate(index.column("image_id").to_pylist())}
    maps = read_maps(results, index, [position[i] for i in image_ids])
    return _images_for(results, index, image_ids, config), list(maps)


def _geometry(meta: Any, url: str) -> dict[str, list[int]]:
    """The geometry columns of one part's rows, for drawing boxes in map coordinates."""
    absent = [c for c in GEOMETRY_COLUMNS if c not in meta.column_names]
    if absent:
        raise InputError(
            f"results at {url} lack the geometry columns {absent} that --boxes needs to place boxes on the maps; "
            "rerun jobs.smoothgrad with this version of sgcore, or pass --masks instead"
        )
    columns = {c: meta.column(c).to_pylist() for c in GEOMETRY_COLUMNS}
    for c, values in columns.items():
        if any(v is None for v in values):
            raise InputError(f"results at {url} have ok rows without {c}; --boxes needs every row's geometry")
    return columns


def _default_masks(input_url: str | None, storage_options: dict[str, Any]) -> str | None:
    """``<parent>/masks`` when the input is a folder named ``images`` and that exists."""
    if not input_url:
        return None
    trimmed = input_url.rstrip("/")
    if posixpath.basename(trimmed) != "images":
        return None
    candidate = posixpath.join(posixpath.dirname(trimmed), "masks")
    try:
        fs, path = url_to_fs(candidate, storage_options)
        return candidate if fs.isdir(path) else None
    except (InputError, ImportError, OSError):
        return None


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """Per-image statistics as CSV (columns: the union of the rows' keys, in order)."""
    import csv
    import io

    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
