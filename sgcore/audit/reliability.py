"""How far the audited maps are from converged, and which figures rest on unreliable ones.

Every ``ok`` row of a run carries ``reliability``: the kernel's estimate of the
Spearman correlation between the stored map and the map the same settings
converge to (:mod:`sgcore.attribution.reliability`). The audit reads it from
the rows it already streams (no model call): its distribution overall and per
class, the least reliable maps, and for each figure of the report how many of
the maps it rests on fall below ``threshold``, with the figure recomputed on
the reliable maps alone where that is cheap (localization, strategies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# A map whose rank order agrees with its converged map at 0.8 or better.
DEFAULT_THRESHOLD = 0.8
LEAST = 10  # least reliable maps listed


def _value(row: dict[str, Any]) -> float:
    v = row.get("reliability")
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def _by_class(per_image: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The known reliabilities of each class (by ``label``, as the per-class view groups them)."""
    groups: dict[str, list[float]] = {}
    for r in per_image:
        if math.isfinite(x := _value(r)):
            groups.setdefault(str(r.get("label")), []).append(x)
    return groups


def _quantiles(v: np.ndarray) -> dict[str, float]:
    return {"min": float(v.min()), "p10": float(np.quantile(v, 0.1)), "p50": float(np.median(v)),
            "p90": float(np.quantile(v, 0.9)), "mean": float(v.mean())}


def reliability_summary(per_image: list[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any] | None:
    """The distribution of ``per_image``'s ``reliability`` (None when no row has one).

    Returns ``{"threshold", "images", "missing", "below", "below_share",
    "quantiles", "histogram": {"edges", "counts"}, "classes": [...],
    "least_reliable": [...], "n_samples"}``; classes (by ``label``, as the
    per-class view groups them) are listed least reliable first.
    """
    values = np.array([_value(r) for r in per_image], dtype=np.float64)
    known = np.isfinite(values)
    if not known.any():
        return None
    v = values[known]
    counts, edges = np.histogram(v, bins=20, range=(min(0.0, float(v.min())), 1.0))
    classes = []
    for name, xs in _by_class(per_image).items():
        a = np.asarray(xs)
        q = _quantiles(a)
        classes.append({"name": name, "images": int(a.size), "mean": q["mean"], "p10": q["p10"], "p50": q["p50"],
                        "min": q["min"], "below": int((a < threshold).sum())})
    classes.sort(key=lambda c: (c["p10"], c["name"]))
    order = np.argsort(np.where(known, values, np.inf), kind="stable")[: min(LEAST, int(known.sum()))]
    least = [{"image_id": per_image[i]["image_id"], "label": per_image[i].get("label"),
              "reliability": float(values[i]), "n_samples": per_image[i].get("n_samples")} for i in order]
    used = [int(r["n_samples"]) for r in per_image if r.get("n_samples") is not None]
    below = int((v < threshold).sum())
    return {
        "threshold": threshold,
        "images": int(v.size),
        "missing": int((~known).sum()),
        "below": below,
        "below_share": below / v.size,
        "quantiles": _quantiles(v),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "classes": classes,
        "least_reliable": least,
        "n_samples": {"min": min(used), "max": max(used), "mean": float(np.mean(used))} if used else None,
    }


def figures_at_risk(
    per_image: list[dict[str, Any]],
    threshold: float,
    *,
    heavy_ids: list[str] | None = None,
    heavy_note: str = "",
) -> list[dict[str, Any]]:
    """For each figure of the report, the maps it rests on and how many fall below ``threshold``.

    Localization and each strategy cluster are recomputed on the maps at or
    above the threshold (``value_reliable``) beside the figure on all of them
    (``value``). The sanity and faithfulness checks (``heavy_ids``, the
    sampled images) are listed with the run's maps of those images and
    ``heavy_note``.
    """
    by_id = {r["image_id"]: r for r in per_image}
    out: list[dict[str, Any]] = []

    def entry(name: str, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        vals = np.array([_value(r) for r in rows])
        known = np.isfinite(vals)
        return {"figure": name, "images": len(rows), "below": int((vals[known] < threshold).sum()),
                "unknown": int((~known).sum()), **extra}

    loc = [r for r in per_image if r.get("mass_in_mask") is not None]
    if loc:
        ok = [r for r in loc if _value(r) >= threshold]
        out.append(entry("localization: mass in the object", loc,
                         value=float(np.mean([r["mass_in_mask"] for r in loc])),
                         value_reliable=float(np.mean([r["mass_in_mask"] for r in ok])) if ok else None))
    clusters: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in per_image:
        if r.get("strategy") is not None and r.get("strategy_class") is not None:
            clusters.setdefault((str(r["strategy_class"]), int(r["strategy"])), []).append(r)
    for (name, k), rows in sorted(clusters.items()):
        if not any(r.get("strategy_flagged") for r in rows):
            continue  # only the flagged clusters are conclusions of the report
        out.append(entry(f"strategy {name} #{k} (flagged)", rows,
                         reliable_images=sum(1 for r in rows if _value(r) >= threshold)))
    if heavy_ids:
        rows = [by_id[i] for i in heavy_ids if i in by_id]
        out.append(entry("sanity and faithfulness sample", rows, note=heavy_note))
    return out
