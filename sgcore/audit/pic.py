"""PIC: performance information curves (Kapishnikov, Bolukbasi, Viégas & Terry, ICCV 2019,
"XRAI: Better Attributions Through Regions", arXiv:1906.02825).

An image is rebuilt from a "fully blurred" version -- the linear interpolation
of a small random sample of its pixels -- by revealing its most salient
pixels, ever more of them. For each rebuilt image the x axis is its
information, estimated as the size of its lossless WebP encoding, normalized
between the fully blurred image (0) and the original (1); the y axis is the
model's performance, normalized the same way: the softmax score of the
originally predicted class (SIC) or whether that class is still predicted
(AIC). The area under the curve summarizes it; with ``keep_monotonous`` the
curve only rises. Images whose blurred version the model already scores as
high as the original, or whose original scores below ``min_pred_value``,
are skipped, as the authors' implementation does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75,
)  # the authors' example thresholds: share of pixels revealed


class PicSkipped(ValueError):
    """The curve is undefined for this image (the message says why)."""


@dataclass(frozen=True, kw_only=True)
class PicCurve:
    """One image's curve: ``x`` and ``y`` in [0, 1] on a regular grid, and its ``auc``."""

    x: np.ndarray
    y: np.ndarray
    auc: float


def interpolate_image(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W, C)`` uint8 rebuilt by linear interpolation of its ``keep`` ``(H, W)`` pixels.

    The four corners are always kept (so the interpolation covers the image);
    points outside the kept pixels' convex hull get the image's mean colour.
    """
    from scipy.interpolate import griddata

    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return image.copy()
    known = np.argwhere(keep)
    unknown = np.argwhere(~keep)
    out = image.astype(np.float32) * keep[..., None]  # float32 as the authors round it
    for ch in range(image.shape[2]):
        values = griddata(known, image[..., ch][keep].astype(np.float64), unknown, method="linear",
                          fill_value=float(image[..., ch].mean()))
        out[unknown[:, 0], unknown[:, 1], ch] = values
    return np.round(out).astype(np.uint8)


def information(image: np.ndarray) -> int:
    """Bytes of the lossless WebP encoding of a uint8 ``(H, W, C)`` image: its estimated information."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, quality=100)
    return buf.tell()


def pic_curve(
    image: np.ndarray,
    saliency: np.ndarray,
    random_mask: np.ndarray,
    predict: Callable[[np.ndarray], Sequence[float]],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_pred_value: float = 0.0,
    keep_monotonous: bool = True,
    points: int = 1000,
) -> PicCurve:
    """The PIC of one image.

    Args:
        image: ``(H, W, 3)`` uint8.
        saliency: ``(H, W)``; larger is more important.
        random_mask: ``(H, W)`` bool, the pixels the fully blurred image keeps.
        predict: uint8 images ``(N, H, W, 3)`` -> performance per image: the
            softmax score of the original class (SIC) or 1/0 for "still
            predicted" (AIC).
        thresholds: shares of the most salient pixels revealed.
        min_pred_value: skip images whose original performance is below it.
        keep_monotonous: the curve is the running maximum.
        points: grid points of the interpolated curve.

    Raises:
        PicSkipped: the curve is undefined for this image.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8; got {image.dtype}")
    original_info = information(image)
    blurred = interpolate_image(image, random_mask)
    blurred_info = information(blurred)
    original = float(predict(image[None])[0])
    if original < min_pred_value:
        raise PicSkipped(f"the original image scores {original:.3f}, below min_pred_value {min_pred_value}")
    floor = float(predict(blurred[None])[0])
    if blurred_info >= original_info:
        raise PicSkipped("the fully blurred image holds no less information than the original")
    if floor >= original:
        raise PicSkipped(f"the fully blurred image scores {floor:.3f}, not below the original's {original:.3f}")
    xs, ys = [], []
    best = 0.0
    for t in thresholds:
        keep = (saliency >= np.quantile(saliency, 1 - t)) | random_mask
        rebuilt = interpolate_image(image, keep)
        x = float(np.clip((information(rebuilt) - blurred_info) / (original_info - blurred_info), 0.0, 1.0))
        y = float(np.clip((float(predict(rebuilt[None])[0]) - floor) / (original - floor), 0.0, 1.0))
        best = max(best, y)
        xs.append(x)
        ys.append(best if keep_monotonous else y)
    # The end points go last, as in the authors' code: where several points share
    # x = 0 (no information gained yet), interp1d's sort then picks the same one.
    xs += [0.0, 1.0]
    ys += [0.0, 1.0]
    from scipy.interpolate import interp1d

    grid = np.linspace(0.0, 1.0, points, endpoint=False)
    curve = interp1d(np.array(xs), np.array(ys))(grid)
    grid, curve = np.append(grid, 1.0), np.append(curve, 1.0)
    return PicCurve(x=grid, y=curve, auc=float(np.trapezoid(curve, grid)))


def random_mask(height: int, width: int, fraction: float = 0.01, *, seed: int = 0) -> np.ndarray:
    """``(H, W)`` bool with ``int(fraction * H * W)`` pixels set, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(height * width, bool)
    mask[rng.choice(height * width, size=int(height * width * fraction), replace=False)] = True
    return mask.reshape(height, width)
