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

from sgcore.audit import plots
from sgcore.audit.report import Report

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


def reliability_section(report: Report, summary: dict[str, Any], per_image: list[dict[str, Any]],
                        threshold: float) -> Any:
    """Adds the section (or a line saying the run has no reliability column); returns it for :func:`add_risks`."""
    info = reliability_summary(per_image, threshold)
    summary["reliability"] = info
    s = report.section("Map reliability", id="reliability")
    if info is None:
        s.text("The run's rows carry no reliability estimate (n = 1, or results written without one), so "
               "nothing here says how converged its maps are.")
        return s
    q = info["quantiles"]
    s.text(
        f"Each map's reliability is the kernel's estimate, from the samples it drew, of the Spearman correlation "
        f"between the stored map and the map the same settings converge to (n → ∞). Over {info['images']} maps: "
        f"median {q['p50']:.3f}, 10th percentile {q['p10']:.3f}, lowest {q['min']:.3f}; {info['below']} "
        f"({100 * info['below_share']:.1f}%) fall below {threshold:g}."
        + (f" {info['missing']} rows have no estimate." if info["missing"] else "")
        + (f" Samples per map {info['n_samples']['min']}–{info['n_samples']['max']} "
           f"(mean {info['n_samples']['mean']:.1f})." if info["n_samples"] and
           info["n_samples"]["min"] != info["n_samples"]["max"] else "")
    )
    if info["below"]:
        worst = info["classes"][0]
        s.finding(f"{info['below']} of {info['images']} maps ({100 * info['below_share']:.1f}%) are less reliable "
                  f"than {threshold:g} (estimated Spearman with their converged map); the least reliable class is "
                  f"{worst['name']} (10th percentile {worst['p10']:.2f}). More samples (--n-samples, or "
                  f"--n-samples auto --target-reliability) would steady them.")
    else:
        s.finding(f"Every map is at least {threshold:g} reliable (estimated Spearman with its converged map; "
                  f"median {q['p50']:.2f}).")
    s.table(info["classes"], ["name", "images", "mean", "p10", "p50", "min", "below"])
    s.figure("reliability", plots.distributions(_by_class(per_image), xlabel="estimated Spearman with the converged map",
                                                title="Map reliability per class", threshold=threshold),
             f"Per class: the reliability of each map (box: quartiles; dashed line: the threshold {threshold:g}).")
    s.text("Least reliable maps:")
    s.table(info["least_reliable"], ["image_id", "label", "reliability", "n_samples"])
    return s


def add_risks(section: Any, summary: dict[str, Any], per_image: list[dict[str, Any]], *,
              heavy_ids: list[str] | None, heavy_note: str = "") -> None:
    """Says which of the report's figures rest on maps below the threshold (after every section ran)."""
    info = summary.get("reliability")
    if info is None:
        return
    threshold = info["threshold"]
    risks = figures_at_risk(per_image, threshold, heavy_ids=heavy_ids, heavy_note=heavy_note)
    info["figures"] = risks
    if not risks:
        return
    section.text(f"Which figures of this report rest on maps below {threshold:g}:")
    section.table(risks, ["figure", "images", "below", "unknown", "value", "value_reliable", "reliable_images",
                          "note"])
    shaky = [r for r in risks if r["images"] and r["below"] / r["images"] > 0.5]
    for r in shaky:
        section.finding(f"{r['figure']} rests mostly on unreliable maps: {r['below']} of {r['images']} are below "
                        f"{threshold:g}.")
