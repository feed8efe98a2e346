"""The faithfulness section: deletion and insertion curves (Petsiuk et al. 2018).

The curves are :mod:`sgcore.audit.faithfulness`; the chunks compute them on the replica pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.faithfulness import FaithfulnessResult
from sgcore.audit.report import Report


def faithfulness_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]], steps: int) -> None:
    """Deletion and insertion curves from the chunks' outputs; fills ``summary["faithfulness"]``."""
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
