"""Localization: does saliency fall on the object?

Needs ground truth: binary object masks (or boxes turned into masks) in the
map's geometry. Two scores per image: the share of saliency mass inside the
mask against the mask's share of the image (relevance mass accuracy, Arras
et al. 2022), and the pointing game (Zhang et al., ECCV 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgcore.audit.metrics import mask_area, mass_in_mask, pointing_game


@dataclass(frozen=True, kw_only=True)
class LocalizationScores:
    """Per-image localization scores, each ``(N,)``."""

    mass_in_mask: np.ndarray
    mask_area: np.ndarray
    pointing_hit: np.ndarray

    def summary(self) -> dict[str, float | int]:
        """Means over images; ``mass_ratio`` is mean mass over mean area."""
        n = int(self.mass_in_mask.shape[0])
        if n == 0:
            return {"images": 0}
        mass = float(self.mass_in_mask.mean())
        area = float(self.mask_area.mean())
        return {
            "images": n,
            "mass_in_mask": mass,
            "mask_area": area,
            "mass_ratio": mass / area if area > 0 else float("nan"),
            "share_above_area": float((self.mass_in_mask > self.mask_area).mean()),
            "pointing_game": float(self.pointing_hit.mean()),
        }


def localization_scores(maps: np.ndarray, masks: np.ndarray, *, tolerance: int = 0) -> LocalizationScores:
    """Scores maps ``(N, H, W)`` against masks ``(N, H, W)`` (see module doc)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W); got {maps.shape}")
    if maps.shape[0] == 0:
        empty = np.zeros(0)
        return LocalizationScores(mass_in_mask=empty, mask_area=empty, pointing_hit=empty.astype(bool))
    return LocalizationScores(
        mass_in_mask=np.asarray(mass_in_mask(maps, masks)),
        mask_area=np.asarray(mask_area(masks)),
        pointing_hit=np.asarray(pointing_game(maps, masks, tolerance=tolerance)),
    )


def box_mask(
    box: tuple[float, float, float, float], *, height: int, width: int
) -> np.ndarray:
    """A boolean ``(height, width)`` mask of the box ``(x0, y0, x1, y1)`` (pixels, x1/y1 exclusive)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1; got {box}")
    mask = np.zeros((height, width), dtype=bool)
    r0, r1 = max(0, int(np.floor(y0))), min(height, int(np.ceil(y1)))
    c0, c1 = max(0, int(np.floor(x0))), min(width, int(np.ceil(x1)))
    mask[r0:r1, c0:c1] = True
    return mask
