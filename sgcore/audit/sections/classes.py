"""The per-class view: mean map, entropy, Gini, border share and examples of each class.

The statistics are :mod:`sgcore.audit.classes`; :class:`ClassFeed` gathers them in the audit's one
pass (:mod:`sgcore.audit.scan`) with the per-image rows of ``per_image.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.classes import ClassView
from sgcore.audit.report import Report
from sgcore.errors import InputError
from sgcore.results import PartRows, row_classes


class ClassFeed:
    """Per-class statistics and the per-image rows (``image_id``, ``label``, statistics, ``reliability``)."""

    def __init__(self, *, examples: int, border_width: float) -> None:
        self.view = ClassView(examples=examples, border_width=border_width)
        self.per_image: list[dict[str, Any]] = []
        self.map_shape: tuple[int, int] | None = None

    def add(self, rows: PartRows, start: int) -> None:
        meta, maps = rows.meta, rows.maps
        if not len(meta):
            return
        self.map_shape = (int(maps.shape[1]), int(maps.shape[2]))
        labels = row_classes(meta)
        ids = meta.column("image_id").to_pylist()
        stats = self.view.add(labels, ids, maps)
        estimates = _column(meta, "reliability")
        samples = _column(meta, "n_samples")
        for i, image_id in enumerate(ids):
            self.per_image.append(
                {"image_id": image_id, "label": labels[i], **{k: float(v[i]) for k, v in stats.items()},
                 "reliability": estimates[i], "n_samples": samples[i]}
            )


def _column(meta: Any, name: str) -> list[Any]:
    """A column of a part's rows as Python values (Nones where the part lacks it)."""
    return meta.column(name).to_pylist() if name in meta.column_names else [None] * len(meta)


def class_section(
    report: Report,
    summary: dict[str, Any],
    feed: ClassFeed,
    *,
    border_width: float,
    examples: int,
    images_for: Callable[[list[str]], list[np.ndarray]],
) -> None:
    """The per-class view: statistics, accuracy and confusion, mean maps and examples; fills ``summary["classes"]``.

    Args:
        images_for: image ids -> their images ``(H, W, 3)`` in [0, 1] (raises ``InputError``).
    """
    view = feed.view
    classes = view.summaries()
    shape = feed.map_shape or (1, 1)
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
        f"border share is the saliency mass on the outer {100 * border_width:.1f}% band, "
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
    if examples:
        for c in classes:
            picks = c.most_concentrated + c.least_concentrated
            titles = [f"most · G={g:.2f}" for _, g, _ in c.most_concentrated] + [
                f"least · G={g:.2f}" for _, g, _ in c.least_concentrated
            ]
            try:
                images = images_for([p[0] for p in picks])
            except InputError as e:
                s.text(f"{c.name}: examples not shown ({e}).")
                continue
            safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in c.name)
            s.figure(
                f"examples_{safe}",
                plots.map_grid([p[2] for p in picks], titles, images=images, columns=2 * examples),
                f"{c.name}: most (left) and least (right) concentrated maps: the heat overlay on the image "
                "(top) and the authors' view, the map clipped at its 99th percentile in grey (below).",
            )
