"""Model comparison: how much did each image's map change between two runs?

Images are matched by ``image_id``; the change is ``1 - Spearman`` of the
two maps (rank correlation, as in Adebayo et al. 2018, so that a global
rescaling of gradients between models does not count as change), with SSIM
of the min-max normalized maps alongside.

Part of every change is Monte Carlo noise. Two SmoothGrad estimates of the
*same* converged map with independent noise do not correlate at the product
``r_a · r_b`` of their reliabilities (each one's estimated Spearman with the
converged map): the channel reduction lifts ``|μ̂|`` where the signal is weak
by the same pattern in both, so they agree more (on the demo at n = 32:
0.84 measured, 0.73 by the product). Every row also carries its
``reproducibility``, the kernel's estimate of its Spearman with a twin of
independent noise, and the floor is
:func:`~sgcore.attribution.reliability.expected_agreement` of the two rows
(for twins the reproducibility itself; within 0.02 of the measured agreement
on the demo at n = 16–64; on EfficientNet-Lite0 over the 7 photos at
n = 16–64 within 0.013 on average, and no seed change flagged in 588 pairs,
docs/performance.md §21). An image's maps changed *significantly* when their
Spearman falls below that noise floor by more than a margin
(``DEFAULT_COMPARE_MARGIN``, twice the calibration tolerance of the
reliability estimate).

Runs that drew the *same* noise for an image (the same per-image seed and the
same map settings and preprocessing: ``paired``) would give byte-identical
maps if the model had not changed (docs/design.md), so their floor is 1: any
Spearman below ``1 - margin`` is the model's change, not noise. The
independent-noise floor would hide it: on EfficientNet-Lite0 at n = 16 and 50
a classifier perturbed by its own spread agreed 0.66-0.89 with the original at
one seed, above every independent-noise floor (docs/performance.md §18).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sgcore.attribution.reliability import expected_agreement
from sgcore.audit.metrics import finite_mean, minmax, spearman, ssim
from sgcore.results import Results, iter_parts, read_index, read_maps, row_classes

DEFAULT_COMPARE_MARGIN = 0.06


@dataclass(frozen=True, kw_only=True)
class ImageChange:
    """One image matched in both result sets."""

    image_id: str
    label: str
    spearman: float
    ssim: float
    predicted_a: int
    predicted_b: int
    reliability_a: float = float("nan")
    reliability_b: float = float("nan")
    reproducibility_a: float = float("nan")
    reproducibility_b: float = float("nan")
    paired: bool = False

    @property
    def change(self) -> float:
        return 1.0 - self.spearman

    @property
    def noise_floor(self) -> float:
        """The Spearman the two maps would have from Monte Carlo noise alone (NaN: a map has no estimate;
        1 for paired maps, whose noise was the same)."""
        if self.paired:
            return 1.0
        return float(expected_agreement(self.reliability_a, self.reproducibility_a,
                                        self.reliability_b, self.reproducibility_b))

    def significant(self, margin: float = DEFAULT_COMPARE_MARGIN) -> bool | None:
        """Changed beyond the maps' own noise; None when either map has no reliability estimate."""
        floor = self.noise_floor
        if not np.isfinite(floor) or not np.isfinite(self.spearman):
            return None
        return bool(self.spearman < floor - margin)


def map_change(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(spearman, ssim)`` of paired maps ``(N, H, W)``.

    SSIM is NaN where the maps are smaller than its 11-pixel window.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) of one shape; got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    rho = np.atleast_1d(spearman(a, b))
    if min(a.shape[1:]) >= 11:
        s = np.atleast_1d(ssim(minmax(a), minmax(b)))
    else:
        s = np.full(a.shape[0], np.nan)
    return rho, s


def compare_results(a: Results, b: Results) -> list[ImageChange]:
    """Matches ok rows of two result sets by image id; most changed first.

    Reads ``a`` part by part and fetches the matching maps of ``b`` per part,
    so memory holds two parts at a time.
    """
    other = OtherRun(b, first=a)
    out: list[ImageChange] = []
    for meta, maps in iter_parts(a):
        if maps is not None:
            out.extend(other.changes(meta, maps, a.url))
    return sorted_changes(out)


def sorted_changes(changes: list[ImageChange]) -> list[ImageChange]:
    """Most changed first (no estimate: last), then by image id."""
    return sorted(changes, key=lambda c: (-np.nan_to_num(c.change, nan=2.0), c.image_id))


class OtherRun:
    """The run compared with: its index read once, its maps fetched for the rows of each part of the first run
    (``first``: rows that drew the same noise in both are paired, see the module's docstring)."""

    def __init__(self, b: Results, *, first: Results) -> None:
        self.results = b
        self.same_settings = _draw_settings(first) == _draw_settings(b)
        self.index = read_index(b)
        self.row = {image_id: i for i, image_id in enumerate(self.index.column("image_id").to_pylist())}
        self.predicted = self.index.column("predicted").to_pylist()
        self.reliability, self.reproducibility = _column(self.index, "reliability"), _column(self.index, "reproducibility")
        self.seeds = _seeds(self.index)

    def changes(self, meta: pa.Table, maps: np.ndarray, url: str) -> list[ImageChange]:
        """The changes of one part's ok rows (``meta``, ``maps``) of the first run at ``url``, unsorted."""
        ids = meta.column("image_id").to_pylist()
        keep = [i for i, image_id in enumerate(ids) if image_id in self.row]
        if not keep:
            return []
        rows = [self.row[ids[i]] for i in keep]
        maps_b = read_maps(self.results, self.index, rows)
        if maps_b.shape[1:] != maps.shape[1:]:
            raise ValueError(
                f"maps must have the same size to compare; got {maps.shape[1:]} in {url} "
                f"and {maps_b.shape[1:]} in {self.results.url}"
            )
        rho, s = map_change(maps[keep], maps_b)
        labels = row_classes(meta)
        predicted = meta.column("predicted").to_pylist()
        reliability_a, reproducibility_a = _column(meta, "reliability"), _column(meta, "reproducibility")
        seeds_a = _seeds(meta)
        return [
            ImageChange(
                image_id=ids[i],
                label=labels[i],
                spearman=float(rho[j]),
                ssim=float(s[j]),
                predicted_a=int(predicted[i]),
                predicted_b=int(self.predicted[rows[j]]),
                reliability_a=reliability_a[i],
                reliability_b=self.reliability[rows[j]],
                reproducibility_a=reproducibility_a[i],
                reproducibility_b=self.reproducibility[rows[j]],
                paired=self.same_settings and seeds_a[i] is not None and seeds_a[i] == self.seeds[rows[j]],
            )
            for j, i in enumerate(keep)
        ]


# What decides an image's noise draw and its map besides the model: equal in both runs (and the row's
# seed equal), an unchanged model gives the same map byte for byte (max_batch and the place of the
# image in its shard do not matter, docs/design.md).
_DRAW_SETTINGS = ("n_samples", "noise_level", "noise", "aggregate", "base", "ig_steps", "precision", "reduction",
                  "image_size", "preprocess", "target", "score", "target_reliability", "min_samples", "max_samples")


def _draw_settings(results: Results) -> tuple:
    config = results.config
    return tuple(repr(config.get(key)) for key in _DRAW_SETTINGS) + (repr(results.manifest.preprocess),)


def _seeds(table: pa.Table) -> list[int | None]:
    """Each row's noise seed (None where the output has none)."""
    if "seed" not in table.column_names:
        return [None] * len(table)
    return table.column("seed").to_pylist()


def _column(table: pa.Table, name: str) -> list[float]:
    """Each row's ``reliability`` or ``reproducibility`` estimate (NaN where it has none)."""
    if name not in table.column_names:
        return [float("nan")] * len(table)
    return [float("nan") if v is None else float(v) for v in table.column(name).to_pylist()]


def class_changes(changes: list[ImageChange],
                  margin: float = DEFAULT_COMPARE_MARGIN) -> list[dict[str, float | int | str | None]]:
    """Per class: images, mean Spearman, mean SSIM, share of flipped predictions, significant changes; most changed first."""
    groups: dict[str, list[ImageChange]] = {}
    for c in changes:
        groups.setdefault(c.label, []).append(c)
    rows = []
    for label, cs in groups.items():
        rows.append(
            {
                "label": label,
                "images": len(cs),
                "spearman": float(np.nanmean([c.spearman for c in cs])),
                "ssim": float(np.nanmean([c.ssim for c in cs])) if any(np.isfinite(c.ssim) for c in cs) else float("nan"),
                "prediction_changed": float(np.mean([c.predicted_a != c.predicted_b for c in cs])),
                "noise_floor": finite_mean([c.noise_floor for c in cs]),
                "significant": sum(1 for c in cs if c.significant(margin)),
            }
        )
    rows.sort(key=lambda r: (r["spearman"], r["label"]))
    return rows
