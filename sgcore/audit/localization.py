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
    # Clamped to [0, size] at both ends: a box wholly outside gives an empty mask
    # (a negative end must not wrap around as a Python slice would).
    r0, r1 = (min(height, max(0, v)) for v in (int(np.floor(y0)), int(np.ceil(y1))))
    c0, c1 = (min(width, max(0, v)) for v in (int(np.floor(x0)), int(np.ceil(x1))))
    mask[r0:r1, c0:c1] = True
    return mask




def boxes_to_map_mask(
    boxes: np.ndarray | list[tuple[float, float, float, float]],
    *,
    orig_height: int,
    orig_width: int,
    resized_height: int,
    resized_width: int,
    crop_top: int,
    crop_left: int,
    map_height: int,
    map_width: int,
) -> np.ndarray:
    """The union of boxes given in original image pixels, as a ``(map_height, map_width)`` bool mask.

    Each box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) is scaled to the resized
    image (x * resized_width / orig_width, y * resized_height / orig_height),
    shifted by the crop offset, and drawn with :func:`box_mask`: a map pixel
    is in when its footprint on the original image overlaps the box. Parts
    outside the crop are dropped; a box wholly outside gives no pixels.
    """
    geometry = {"orig_height": orig_height, "orig_width": orig_width, "resized_height": resized_height,
                "resized_width": resized_width, "map_height": map_height, "map_width": map_width}
    for name, value in geometry.items():
        if value is None or int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    sx = int(resized_width) / int(orig_width)
    sy = int(resized_height) / int(orig_height)
    mask = np.zeros((int(map_height), int(map_width)), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        # Rounded so that a scale like 0.8 does not turn an exact edge (16.000000000000004) into one more pixel.
        mapped = np.round([x0 * sx - crop_left, y0 * sy - crop_top, x1 * sx - crop_left, y1 * sy - crop_top], 6)
        mask |= box_mask(tuple(float(v) for v in mapped), height=int(map_height), width=int(map_width))
    return mask
