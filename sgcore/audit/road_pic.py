"""ROAD and PIC on one chunk of the audit's sample (the section is :mod:`sgcore.audit.sections.road_pic`).

The metrics themselves are in :mod:`sgcore.audit.road` and :mod:`sgcore.audit.pic`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from sgcore.audit.literature import blur_maps, default_blur_sigma
from sgcore.audit.pic import PicCurve, pic_curves, random_mask
from sgcore.audit.road import road


def evaluate_chunk(
    model: torch.nn.Module, preprocess: Any, pixels: np.ndarray, x: torch.Tensor, targets: torch.Tensor,
    maps: torch.Tensor, *, seed: int,
) -> dict[str, Any]:
    """ROAD curves and PIC AUCs (SIC and AIC; NaN where undefined) of one chunk.

    ROAD is also run on the maps under a Gaussian blur
    (:func:`~sgcore.audit.literature.blur_maps`, sigma
    :func:`~sgcore.audit.literature.default_blur_sigma`): the control row of
    the report, since removal metrics can reward a blur that adds nothing
    about the model.

    Args:
        pixels: ``(B, H, W, 3)`` uint8 decoded images; ``x`` their model input.
        maps: ``(B, H, W)`` stored maps.
        seed: seeds the ROAD noise and PIC's random pixels.
    """
    out: dict[str, Any] = {"road": asdict(road(model, x, targets, maps, seed=seed))}
    # The control: the same maps blurred, scored with the same noise (see road_pic_section).
    sigma = default_blur_sigma(*maps.shape[1:])
    out["road_blurred"] = asdict(road(model, x, targets, blur_maps(maps, sigma), seed=seed))
    out["blur_sigma"] = sigma
    device = x.device

    def scores(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            inp = preprocess.normalize(torch.from_numpy(np.ascontiguousarray(images))).to(device)
            return torch.softmax(model(inp).float(), dim=1)

    sic, aic = [], []
    h, w = pixels.shape[1:3]
    saliency = maps.detach().abs().float().cpu().numpy()
    for i in range(len(pixels)):
        t = int(targets[i])
        curves = pic_curves(pixels[i], saliency[i], random_mask(h, w, 0.01, seed=seed + i), {
            "sic": lambda im, t=t: scores(im)[:, t].cpu().numpy(),
            "aic": lambda im, t=t: (scores(im).argmax(1) == t).float().cpu().numpy(),
        })
        for values, name in ((sic, "sic"), (aic, "aic")):
            got = curves[name]
            values.append(got.auc if isinstance(got, PicCurve) else float("nan"))
    out["pic"] = {"sic": np.array(sic), "aic": np.array(aic)}
    return out
