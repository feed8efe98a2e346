"""The audit of one results directory: per-class view, localization, sanity
checks, faithfulness, optional model comparison, then the report.

Cheap passes (statistics, masks) stream over the part files in this process;
the heavy ones (recomputing maps on randomized models, perturbation curves)
run on a sample of images on the Ray actor pool.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit._workers import Chunk, WorkerSpec, run_chunks
from sgcore.audit.classes import ClassView
from sgcore.audit.compare import class_changes, compare_results
from sgcore.audit.faithfulness import FaithfulnessResult
from sgcore.audit.localization import (
    LocalizationScores,
    boxes_to_map_mask,
    localization_scores,
)
from sgcore.audit.report import Report, write_report
from sgcore.audit.results import hash_sample, load_images, load_mask, read_boxes
from sgcore.audit.sanity import MapSettings
from sgcore.errors import ConfigError, InputError
from sgcore.io import GEOMETRY_COLUMNS, join, url_to_fs
from sgcore.results import (
    Results,
    iter_parts,
    open_results_dir,
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
        chunk_size: images per work item on the actor pool.
        num_actors: Ray actors (None: one per CPU); 0 runs in this process, without Ray.
        gpus_per_actor: GPUs each actor reserves. The maps are recomputed on
            CUDA only when this is > 0 (and torch sees a GPU), in this
            process too; 0 keeps them on the CPU even on a GPU machine.
            ``summary.json["device"]`` says where they ran.
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
    n_samples: int | None = None
    steps: int = 32
    examples: int = 3
    border_width: float = 0.125
    pointing_tolerance: int = 0
    seed: int = 0
    chunk_size: int = 8
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
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
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0; got {self.gpus_per_actor}")


def run_audit(config: AuditConfig, *, log: Any = print) -> dict[str, Any]:
    """Audits ``config.results`` and writes the report; returns ``summary.json``'s content."""
    t0 = time.perf_counter()
    results = open_results_dir(config.results, storage_options=config.storage_options, allow_partial=config.allow_partial)
    job = results.config
    preprocess = results.preprocess
    model = config.model or job.get("model")
    weights = config.weights or job.get("weights") or "default"
    if not model:
        raise InputError(f"the manifest of {results.url} names no model; pass --model")
    masks_root = None
    boxes: dict[str, np.ndarray] | None = None
    if config.localization and config.boxes:
        boxes = read_boxes(config.boxes, config.storage_options)  # bad files fail here, before any work
    elif config.localization:
        masks_root = config.masks or _default_masks(job.get("input"), config.storage_options)
    truth = "boxes" if boxes is not None else "masks" if masks_root else None
    report = Report(
        title="SmoothGrad audit",
        subtitle=(
            f"results {results.url} · model {model} ({weights}) · "
            f"{job.get('aggregate', 'mean')} n={job.get('n_samples')} noise={job.get('noise_level')} · "
            f"config {results.manifest.get('config_hash')}"
        ),
    )
    summary: dict[str, Any] = {
        "results": results.url,
        "model": model,
        "weights": weights,
        "config_hash": results.manifest.get("config_hash"),
        "settings": {k: job.get(k) for k in ("n_samples", "noise_level", "aggregate", "base", "reduction", "precision")},
    }

    # ---- streaming pass: per-class statistics and localization ----------------
    log("audit: per-class statistics" + (f" and localization ({truth})" if truth else ""))
    view = ClassView(examples=config.examples, border_width=config.border_width)
    per_image: list[dict[str, Any]] = []
    loc_parts: list[LocalizationScores] = []
    loc_labels: list[str] = []
    missing = 0  # images without a mask / without a box
    outside = 0  # images whose boxes all fall outside the map's crop
    seen_ids: set[str] = set()
    map_shape: tuple[int, int] | None = None
    for meta, maps in iter_parts(results):
        if maps is None or len(meta) == 0:
            continue
        map_shape = (int(maps.shape[1]), int(maps.shape[2]))
        labels = row_classes(meta)
        ids = meta.column("image_id").to_pylist()
        stats = view.add(labels, ids, maps)
        for i, image_id in enumerate(ids):
            per_image.append(
                {"image_id": image_id, "label": labels[i], **{k: float(v[i]) for k, v in stats.items()}}
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
    if not per_image or map_shape is None:
        raise InputError(f"results at {results.url} hold no ok rows to audit")
    summary["images"] = {"ok": len(per_image), "classes": len(view.summaries())}
    report.attach("per_image.csv", _csv(per_image))
    index = read_index(results)
    _class_section(report, summary, view, results, index, config, map_shape)
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
        report.section("Localization").text(
            "Skipped: no object masks (pass --masks URL with masks at <masks>/<image_id>, or --boxes FILE, "
            "a CSV/Parquet file with columns image_id, x0, y0, x1, y1 in original image pixels)."
        )

    # ---- heavy checks on a sample, on the actor pool --------------------------
    summary["sanity"] = None
    summary["faithfulness"] = None
    summary["device"] = None  # where the maps were recomputed, when they were
    if config.sanity or config.faithfulness:
        rows = hash_sample(index.column("image_id").to_pylist(), config.sample, config.seed)
        sampled_maps = read_maps(results, index, rows)
        sources = _sources(index, rows, config.input)
        targets = index.column("target").to_pylist()
        seeds = index.column("seed").to_pylist()
        settings = MapSettings.from_job(job, n_samples=config.n_samples)
        spec = WorkerSpec(
            model=model,
            weights=weights,
            image_size=job.get("image_size"),
            preprocess=preprocess.to_dict(),
            settings=settings,
            sanity=config.sanity,
            faithfulness=config.faithfulness,
            steps=config.steps,
            seed=config.seed,
            image_column=job.get("image_column"),
            use_gpu=config.gpus_per_actor > 0,
            score=job.get("score") or "logit",
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
        log(f"audit: sanity/faithfulness on {len(rows)} images in {len(chunks)} chunks")
        outputs = run_chunks(
            spec, chunks, num_actors=config.num_actors, address=config.address, gpus_per_actor=config.gpus_per_actor
        )
        summary["device"] = sorted({o["device"] for o in outputs})
        if config.sanity:
            _sanity_section(report, summary, outputs)
        if config.faithfulness:
            _faithfulness_section(report, summary, outputs, config.steps)

    # ---- comparison -----------------------------------------------------------
    if config.compare:
        log(f"audit: comparing with {config.compare}")
        other = open_results_dir(config.compare, storage_options=config.storage_options, allow_partial=config.allow_partial)
        _compare_section(report, summary, results, other, config)

    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(config.report, report, summary, config.storage_options)
    log(f"audit: wrote {join(config.report, 'index.html')}")
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
    s = report.section("Per-class view")
    s.text(
        "Entropy is normalized (1 = uniform map); Gini 0 = uniform, near 1 = a few pixels; "
        f"border share is the saliency mass on the outer {100 * config.border_width:.1f}% band, "
        f"which covers {100 * area:.1f}% of the image (a position-blind map scores that)."
    )
    s.table(summary["classes"], ["name", "count", "entropy", "gini", "border_share"])
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
                f"{c.name}: most (left) and least (right) concentrated maps, overlaid on the image.",
            )


def _localization_section(
    report: Report,
    summary: dict[str, Any],
    parts: list[LocalizationScores],
    labels: list[str],
    info: dict[str, Any],
) -> None:
    """``info``: where the ground truth came from and how many images lack it (goes into the summary)."""
    s = report.section("Localization")
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
    s.table(per_class, ["name", "images", "mass_in_mask", "mask_area", "mass_ratio", "pointing_game"])
    s.figure(
        "localization",
        plots.scatter(
            scores.mask_area, scores.mass_in_mask, xlabel="mask area (share of image)",
            ylabel="saliency mass in mask", title="Mass in mask vs mask area",
        ),
        "Each dot is an image; above the diagonal the map favours the object over its area share.",
    )


def _sanity_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
    layers = outputs[0]["sanity"]["layers"]
    stacked = {
        key: np.concatenate([o["sanity"][key] for o in outputs], axis=1)
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
    s = report.section("Sanity check: cascading model-parameter randomization")
    last = steps[-1]
    s.text(
        f"Layers re-initialized one by one from the output down on a copy of the model; maps recomputed "
        f"on {summary['sanity_images']} images with the run's settings and compared with the trained "
        f"model's maps. Fully randomized: Spearman (abs) {last['spearman_abs']:.3f}, "
        f"Spearman (signed) {last['spearman_signed']:.3f}, SSIM {last['ssim']:.3f}. Maps that stay "
        f"similar to the trained ones do not depend on what the model learned (Adebayo et al. 2018)."
    )
    s.table(steps, ["layer", "spearman_abs", "spearman_signed", "ssim"])
    s.figure("sanity", plots.sanity_curve(steps), "Similarity to the trained model's maps per cascade step (mean ± sd).")


def _faithfulness_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]], steps: int) -> None:
    curves = {key: np.concatenate([o["faithfulness"][key] for o in outputs]) for key in outputs[0]["faithfulness"]}
    aucs = FaithfulnessResult(**curves).aucs()
    faith = {
        "images": int(curves["deletion"].shape[0]),
        "steps": steps,
        **{key: float(np.mean(values)) for key, values in aucs.items()},
        "deletion_beats_random": float(np.mean(aucs["deletion_auc"] < aucs["deletion_auc_random"])),
        "insertion_beats_random": float(np.mean(aucs["insertion_auc"] > aucs["insertion_auc_random"])),
    }
    summary["faithfulness"] = faith
    s = report.section("Faithfulness: deletion and insertion")
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
    s = report.section("Model comparison")
    if not changes:
        summary["compare"] = {"other": b.url, "images": 0}
        s.text(f"No image ids in common with {b.url}.")
        return
    per_class = class_changes(changes)
    top = changes[: max(10, config.examples * 3)]
    summary["compare"] = {
        "other": b.url,
        "other_model": b.config.get("model"),
        "other_weights": b.config.get("weights"),
        "images": len(changes),
        "spearman": float(np.nanmean([c.spearman for c in changes])),
        "prediction_changed": float(np.mean([c.predicted_a != c.predicted_b for c in changes])),
        "classes": per_class,
        "most_changed": [
            {"image_id": c.image_id, "label": c.label, "spearman": c.spearman, "ssim": c.ssim,
             "predicted_a": c.predicted_a, "predicted_b": c.predicted_b}
            for c in top
        ],
    }
    s.text(
        f"{len(changes)} images in both result sets; mean Spearman of their maps "
        f"{summary['compare']['spearman']:.3f}; prediction changed on "
        f"{100 * summary['compare']['prediction_changed']:.1f}%. Classes, most changed first:"
    )
    s.table(per_class, ["label", "images", "spearman", "ssim", "prediction_changed"])
    s.text("Most changed images:")
    s.table(summary["compare"]["most_changed"])
    s.figure(
        "compare_hist",
        plots.histogram(np.array([c.spearman for c in changes]), xlabel="Spearman(map A, map B)", title="Map agreement"),
        "Distribution of per-image rank correlation between the two runs' maps.",
    )


# --------------------------------------------------------------------------- helpers


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
