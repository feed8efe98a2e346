"""Map reliability: the distribution of the rows' reliability estimates, and which figures rest on unreliable maps.

The figures are :mod:`sgcore.audit.reliability`'s, from the per-image rows of the audit's one pass (no model call).
"""

from __future__ import annotations

from typing import Any

from sgcore.audit import plots
from sgcore.audit.reliability import _by_class, figures_at_risk, reliability_summary
from sgcore.audit.report import Report


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
