"""ROAD and PIC on the faithfulness sample: their figures from the chunks' outputs, and the section.

The chunks compute them with :func:`sgcore.audit.road_pic.evaluate_chunk`; the metrics are
:mod:`sgcore.audit.road` and :mod:`sgcore.audit.pic`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def road_pic_section(report: Any, summary: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
    """Fills ``summary["road"]`` and ``summary["pic"]`` and adds the section."""
    parts = [o["road_pic"] for o in outputs if "road_pic" in o]
    if not parts:
        return
    from sgcore.audit.road import RoadResult

    curves = {k: np.concatenate([p["road"][k] for p in parts]) for k in ("morf", "lerf", "morf_correct", "lerf_correct")}
    result = RoadResult(fractions=np.asarray(parts[0]["road"]["fractions"]), **curves)
    summary["road"] = {"images": int(curves["morf"].shape[0]), "fractions": result.fractions.tolist(),
                       **result.summary(),
                       "morf_curve": curves["morf"].mean(0).tolist(), "lerf_curve": curves["lerf"].mean(0).tolist()}
    sic = np.concatenate([p["pic"]["sic"] for p in parts])
    aic = np.concatenate([p["pic"]["aic"] for p in parts])
    summary["pic"] = {"images": int(len(sic)), "sic_auc": _nanmean(sic), "aic_auc": _nanmean(aic),
                      "sic_scored": int(np.isfinite(sic).sum()), "aic_scored": int(np.isfinite(aic).sum())}
    r, p = summary["road"], summary["pic"]
    s = report.section("ROAD and PIC")
    s.text(
        f"ROAD (Rong et al. 2022): pixels removed in saliency order and filled by noisy linear imputation, on "
        f"{r['images']} images; area under the target probability, most relevant first (MoRF) "
        f"{r['road_morf_auc']:.3f}, least relevant first (LeRF) {r['road_lerf_auc']:.3f}: LeRF - MoRF "
        f"{r['road_gap']:.3f} (higher is more faithful). PIC (Kapishnikov et al. 2019): images rebuilt from a "
        f"blurred version by revealing the most salient pixels; softmax information curve AUC "
        f"{p['sic_auc']:.3f} ({p['sic_scored']} images defined), accuracy information curve AUC "
        f"{p['aic_auc']:.3f} ({p['aic_scored']})."
    )
    s.table([{"metric": k, "value": v} for k, v in {**{k: v for k, v in r.items() if not k.endswith("curve")
                                                       and k != "fractions"}, **p}.items()], ["metric", "value"])
    blurred = [p["road_blurred"] for p in parts if "road_blurred" in p]
    if len(blurred) == len(parts):
        _blur_control(s, summary, result, blurred, float(parts[0]["blur_sigma"]))


def _blur_control(s: Any, summary: dict[str, Any], result: Any, parts: list[dict[str, Any]], sigma: float) -> None:
    """The control row: ROAD of the same maps blurred, beside the maps' own."""
    from sgcore.audit.road import RoadResult

    curves = {k: np.concatenate([p[k] for p in parts]) for k in ("morf", "lerf", "morf_correct", "lerf_correct")}
    control = RoadResult(fractions=result.fractions, **curves).summary()
    summary["road"]["blurred_control"] = {"blur_sigma": sigma, **control}
    own = summary["road"]
    keys = ("road_morf_auc", "road_lerf_auc", "road_gap")
    s.table([{"maps": "the run's maps", **{k: own[k] for k in keys}},
             {"maps": f"control: the same maps blurred (sigma {sigma:g} px)", **{k: control[k] for k in keys}}],
            ["maps", *keys])
    if control["road_gap"] >= own["road_gap"]:
        s.finding(
            f"A blurred copy of the maps (Gaussian, sigma {sigma:g} px) scores a ROAD gap of "
            f"{control['road_gap']:.3f}, no worse than the maps' own {own['road_gap']:.3f}: blur alone earns this "
            f"score, so it does not show that the maps explain the model better than a smoother map would."
        )
    else:
        s.text(f"Control: the same maps blurred (Gaussian, sigma {sigma:g} px) score a lower ROAD gap "
               f"({control['road_gap']:.3f}); the maps' score is not one that blur alone earns.")


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
