"""Model comparison: how much each image's map changed between two runs, judged against Monte Carlo noise.

The figures are :mod:`sgcore.audit.compare`'s; :class:`CompareFeed` takes the first run's maps from the
audit's one pass and reads the other run's matching maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.compare import ImageChange, OtherRun, class_changes, sorted_changes
from sgcore.audit.metrics import finite_mean
from sgcore.audit.report import Report
from sgcore.results import PartRows, Results


class CompareFeed:
    """Each part's changes against ``other`` (the other run's index is read when the feed is made)."""

    def __init__(self, other: Results, first: Results) -> None:
        self.other = OtherRun(other, first=first)
        self.url = first.url
        self.changes: list[ImageChange] = []

    def add(self, rows: PartRows, start: int) -> None:
        if len(rows.meta):
            self.changes.extend(self.other.changes(rows.meta, rows.maps, self.url))


def compare_section(report: Report, summary: dict[str, Any], feed: CompareFeed, *, margin: float,
                    examples: int) -> None:
    """The comparison with the other run; fills ``summary["compare"]``."""
    changes = sorted_changes(feed.changes)
    b = feed.other.results
    s = report.section("Model comparison", id="compare")
    if not changes:
        summary["compare"] = {"other": b.url, "images": 0}
        s.text(f"No image ids in common with {b.url}.")
        return
    per_class = class_changes(changes, margin)
    top = changes[: max(10, examples * 3)]
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
