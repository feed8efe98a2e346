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
    from scipy.interpolate import LinearNDInterpolator

    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return image.copy()
    known = np.argwhere(keep)
    unknown = np.argwhere(~keep)
    out = image.astype(np.float32) * keep[..., None]  # float32 as the authors round it
    # One triangulation for all channels: what griddata(method="linear") does per channel.
    interpolate = LinearNDInterpolator(known, image[keep].astype(np.float64), fill_value=np.nan)
    values = interpolate(unknown)
    mean = image.reshape(-1, image.shape[2]).mean(axis=0)
    values = np.where(np.isnan(values), mean[None, :], values)
    out[unknown[:, 0], unknown[:, 1]] = values
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
    """The PIC of one image (see :func:`pic_curves`, which shares the rebuilt images between curves).

    Raises:
        PicSkipped: the curve is undefined for this image.
    """
    got = pic_curves(image, saliency, random_mask, {"pic": predict}, thresholds=thresholds,
                     min_pred_value=min_pred_value, keep_monotonous=keep_monotonous, points=points)["pic"]
    if isinstance(got, PicSkipped):
        raise got
    return got


def pic_curves(
    image: np.ndarray,
    saliency: np.ndarray,
    random_mask: np.ndarray,
    predicts: dict[str, Callable[[np.ndarray], Sequence[float]]],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_pred_value: float = 0.0,
    keep_monotonous: bool = True,
    points: int = 1000,
) -> dict[str, PicCurve | PicSkipped]:
    """The PICs of one image for several performance measures (e.g. SIC and AIC).

    Args:
        image: ``(H, W, 3)`` uint8.
        saliency: ``(H, W)``; larger is more important.
        random_mask: ``(H, W)`` bool, the pixels the fully blurred image keeps.
        predicts: name -> a function of uint8 images ``(N, H, W, 3)`` giving the
            performance per image: the softmax score of the original class
            (SIC) or 1/0 for "still predicted" (AIC).
        thresholds: shares of the most salient pixels revealed.
        min_pred_value: skip images whose original performance is below it.
        keep_monotonous: the curve is the running maximum.
        points: grid points of the interpolated curve.

    Returns:
        name -> its curve, or the :class:`PicSkipped` saying why it is undefined.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8; got {image.dtype}")
    original_info = information(image)
    blurred = interpolate_image(image, random_mask)
    blurred_info = information(blurred)
    rebuilt = []
    for t in thresholds:
        keep = (saliency >= np.quantile(saliency, 1 - t)) | random_mask
        img = interpolate_image(image, keep)
        x = float(np.clip((information(img) - blurred_info) / max(original_info - blurred_info, 1), 0.0, 1.0))
        rebuilt.append((img, x))
    stack = np.stack([image, blurred] + [img for img, _ in rebuilt])
    out: dict[str, PicCurve | PicSkipped] = {}
    for name, predict in predicts.items():
        perf = np.asarray(predict(stack), np.float64)
        out[name] = _curve(perf, [x for _, x in rebuilt], original_info, blurred_info, min_pred_value,
                           keep_monotonous, points)
    return out


def _curve(perf: np.ndarray, infos: list[float], original_info: int, blurred_info: int, min_pred_value: float,
           keep_monotonous: bool, points: int) -> PicCurve | PicSkipped:
    original, floor = float(perf[0]), float(perf[1])
    if original < min_pred_value:
        return PicSkipped(f"the original image scores {original:.3f}, below min_pred_value {min_pred_value}")
    if blurred_info >= original_info:
        return PicSkipped("the fully blurred image holds no less information than the original")
    if floor >= original:
        return PicSkipped(f"the fully blurred image scores {floor:.3f}, not below the original's {original:.3f}")
    xs, ys = [], []
    best = 0.0
    for x, p in zip(infos, perf[2:], strict=True):
        y = float(np.clip((float(p) - floor) / (original - floor), 0.0, 1.0))
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
