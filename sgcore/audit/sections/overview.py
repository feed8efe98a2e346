"""The report's first screen: what was audited, its error rows and the model's accuracy."""

from __future__ import annotations

import csv
import io
from typing import Any

from sgcore.results import Results

# The SmoothGrad settings the report states for the run's maps and for the recomputed ones.
SETTINGS = ("n_samples", "noise_level", "aggregate", "base", "reduction", "precision")


def describe(settings: dict[str, Any]) -> str:
    return (f"{settings.get('aggregate')} of {settings.get('base')}, n={settings.get('n_samples')}, "
            f"noise={settings.get('noise_level')}, {settings.get('precision')}")


def error_reasons(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Error rows grouped by message: ``[{"error", "rows", "examples"}]``, most frequent first."""
    groups: dict[str, list[str]] = {}
    for e in errors:
        groups.setdefault(str(e.get("error")), []).append(str(e.get("image_id")))
    return [{"error": msg, "rows": len(ids), "examples": ids[:5]}
            for msg, ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def accuracy(index: Any, top: int = 12) -> dict[str, Any] | None:
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


def overview_rows(results: Results, model: str, weights: str, random_weights: bool, job: dict[str, Any],
              run_settings: dict[str, Any], used: dict[str, Any], heavy: bool, summary: dict[str, Any],
              config: Any) -> list[tuple[str, str]]:
    """The first screen's "what was audited" rows."""
    images = summary["images"]
    rows = [
        ("Results", f"{results.url} ({'complete' if results.complete else 'incomplete: no _SUCCESS'})"),
        ("Model", f"{model}, weights {weights}" + (" (RANDOM: never trained)" if random_weights else "")),
        ("Data", f"{job.get('input')} · {images['rows']} rows: {images['ok']} ok, {images['errors']} error(s) · "
                 f"{images['classes']} class(es)"),
        ("Maps of the run", describe(run_settings)),
    ]
    if heavy:
        rows.append(("Recomputed for the checks", f"{describe(used)} · sample {config.sample} image(s), "
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


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as CSV (columns: the union of the rows' keys, in order)."""
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()
