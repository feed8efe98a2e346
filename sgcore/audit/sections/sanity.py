"""The sanity check's section: cascading model-parameter randomization (Adebayo et al. 2018).

The cascade itself is :mod:`sgcore.audit.sanity`; the chunks run it on the replica pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.report import Report
from sgcore.audit.sanity import MapSettings
from sgcore.audit.sections.overview import SETTINGS, describe


def sanity_section(report: Report, summary: dict[str, Any], outputs: list[dict[str, Any]], settings: MapSettings,
                   run_settings: dict[str, Any], random_weights: bool) -> None:
    """The cascade's curve and table from the chunks' outputs; fills ``summary["sanity"]``."""
    layers = outputs[0]["sanity"]["layers"]
    stacked = {
        key: np.concatenate([np.asarray(o["sanity"][key]) for o in outputs], axis=1)
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
    s = report.section("Sanity check: cascading model-parameter randomization", id="sanity")
    last = steps[-1]
    reference = "the audited model (random weights, --weights none)" if random_weights else "the trained model"
    if settings.n_samples == run_settings.get("n_samples"):
        how = f"with the run's settings ({describe({k: getattr(settings, k) for k in SETTINGS})})"
    else:
        how = (f"with n={settings.n_samples} samples (the run's maps used n={run_settings.get('n_samples')}; "
               f"otherwise the run's settings)")
    s.text(
        f"Layers re-initialized one by one from the output down on a copy of the model; maps recomputed "
        f"on {summary['sanity_images']} images {how} and compared with the maps of {reference}. "
        f"Fully randomized: Spearman (abs) {last['spearman_abs']:.3f}, "
        f"Spearman (signed) {last['spearman_signed']:.3f}, SSIM {last['ssim']:.3f}. Maps that stay "
        f"similar to the reference do not depend on what the model learned (Adebayo et al. 2018)."
        + (" With random weights there is nothing learned to lose: expect little change, and read this "
           "check as a test of the method, not of a model." if random_weights else "")
    )
    passed = last["spearman_abs"] < 0.5
    s.finding(
        f"Randomizing every weight layer {'changes' if passed else 'barely changes'} the maps: Spearman (abs) "
        f"with {reference}'s maps falls to {last['spearman_abs']:.2f} on {summary['sanity_images']} images "
        f"({'passes' if passed else 'fails'} the randomization check"
        + (", which says little for random weights" if random_weights else "") + ")."
    )
    s.table(steps, ["layer", "spearman_abs", "spearman_signed", "ssim"])
    s.figure("sanity", plots.sanity_curve(steps),
             f"Similarity to the maps of {reference} per cascade step (mean ± sd).")
