"""Localization: how much of each map lies inside the object (masks or boxes), and the pointing game.

The scores are :mod:`sgcore.audit.localization`; :class:`LocalizationFeed` computes them part by part in
the audit's one pass and adds them to the per-image rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.localization import LocalizationScores, boxes_to_map_mask, localization_scores
from sgcore.audit.report import Report
from sgcore.audit.results import load_mask
from sgcore.errors import InputError
from sgcore.io import GEOMETRY_COLUMNS, join
from sgcore.results import PartRows, row_classes


class LocalizationFeed:
    """Scores each part's maps against masks at ``masks_root/<image_id>`` or against ``boxes``.

    Args:
        per_image: the per-image rows of the same pass (:class:`~sgcore.audit.sections.classes.ClassFeed`),
            which gain ``mass_in_mask``, ``mask_area`` and ``pointing_hit``; the feed must come after it.
    """

    def __init__(self, *, per_image: list[dict[str, Any]], url: str, preprocess: Any, masks_root: str | None,
                 boxes: dict[str, np.ndarray] | None, boxes_url: str | None, tolerance: int,
                 storage_options: dict[str, Any]) -> None:
        self.per_image, self.url, self.preprocess = per_image, url, preprocess
        self.masks_root, self.boxes, self.boxes_url = masks_root, boxes, boxes_url
        self.tolerance, self.storage_options = tolerance, storage_options
        self.parts: list[LocalizationScores] = []
        self.labels: list[str] = []
        self.missing = 0  # images without a mask / without a box
        self.outside = 0  # images whose boxes all fall outside the map's crop
        self.seen: set[str] = set()

    @property
    def truth(self) -> str | None:
        return "boxes" if self.boxes is not None else "masks" if self.masks_root else None

    def add(self, rows: PartRows, start: int) -> None:
        meta, maps = rows.meta, rows.maps
        if not len(meta) or self.truth is None:
            return
        ids = meta.column("image_id").to_pylist()
        labels = row_classes(meta)
        self.seen.update(ids)
        got, keep = [], []
        geometry = _geometry(meta, self.url) if self.boxes is not None else None
        for i, image_id in enumerate(ids):
            if self.boxes is not None and geometry is not None:
                if image_id not in self.boxes:
                    self.missing += 1
                    continue
                mask = boxes_to_map_mask(self.boxes[image_id], **{k: v[i] for k, v in geometry.items()})
                if not mask.any():
                    self.outside += 1
                    continue
                got.append(mask)
                keep.append(i)
                continue
            try:
                got.append(load_mask(join(self.masks_root, image_id), self.preprocess, self.storage_options))
                keep.append(i)
            except InputError:
                self.missing += 1
        if not keep:
            return
        scores = localization_scores(maps[keep], np.stack(got), tolerance=self.tolerance)
        self.parts.append(scores)
        self.labels.extend(labels[i] for i in keep)
        for j, i in enumerate(keep):
            self.per_image[start + i].update(
                mass_in_mask=float(scores.mass_in_mask[j]),
                mask_area=float(scores.mask_area[j]),
                pointing_hit=bool(scores.pointing_hit[j]),
            )


def localization_section(report: Report, summary: dict[str, Any], feed: LocalizationFeed | None) -> None:
    """The localization section (or why it was skipped); fills ``summary["localization"]``."""
    if feed is not None and feed.boxes is not None:
        info: dict[str, Any] = {
            "ground_truth": "boxes",
            "boxes": feed.boxes_url,
            "missing_boxes": feed.missing,
            "boxes_outside_map": feed.outside,
            "boxes_without_result": len(set(feed.boxes) - feed.seen),
        }
        _scores_section(report, summary, feed.parts, feed.labels, info)
    elif feed is not None and feed.masks_root:
        info = {"ground_truth": "masks", "masks": feed.masks_root, "missing_masks": feed.missing}
        _scores_section(report, summary, feed.parts, feed.labels, info)
    else:
        summary["localization"] = None
        report.section("Localization", id="localization").text(
            "Skipped: no object masks (pass --masks URL with masks at <masks>/<image_id>, or --boxes FILE, "
            "a CSV/Parquet file with columns image_id, x0, y0, x1, y1 in original image pixels)."
        )


def _scores_section(
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
