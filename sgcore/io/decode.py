"""Image decoding: bytes -> RGB uint8 array at model size, plus the geometry.

Resizing follows one of the modes of :class:`sgcore.models.Preprocess`
(torchvision's shorter side + centre crop by default, squash, letterbox), then a
centre crop (or pad) to ``crop_size``. The geometry that comes back lets a map
of ``crop_size`` be laid exactly onto the original image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sgcore.io.failures import PIL_ERRORS, DecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# What one image may cost, checked from its header before a pixel is decoded or a
# resized image allocated (a 372-byte 1 x 100000 PNG would resize to 256 x 25.6 M
# pixels, ~26 GB). Every photo passes: the decode is bounded by the pixels
# (8192 x 8192), the resize by its output (8192 x 8192 pixels: a 100:1 panorama at
# 512 px on its shorter side is 26 M), and the shape by the aspect ratio (100:1;
# nothing that long is a picture a classifier can be explained on).
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_RESIZED_PIXELS = 8192 * 8192
DEFAULT_MAX_ASPECT = 100.0

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
RESIZE_MODES = ("center_crop", "squash", "letterbox")
Size = int | tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How a ``crop_size`` map sits on the original image.

    The map pixel (r, c) covers resized pixel (r + crop_top, c + crop_left)
    (negative offsets: padding before the image); resized (y, x) covers
    original (y * orig_height / resized_height, x * orig_width / resized_width),
    each axis scaled on its own (a squash scales them differently).
    """

    orig_height: int
    orig_width: int
    resized_height: int
    resized_width: int
    crop_top: int
    crop_left: int


def decode_image(
    data: bytes,
    *,
    resize_size: Size,
    crop_size: Size,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    **geometry: Any,
) -> tuple[np.ndarray, Geometry]:
    """Decodes, orients (EXIF), converts to RGB, resizes and centre-crops.

    ``geometry``: ``mode``, ``fill``, ``channels``, ``crop_offset`` of
    :func:`resize_and_crop` (``Preprocess.decode_kwargs()`` gives them all).
    ``max_pixels``, ``max_resized_pixels`` and ``max_aspect`` bound what one image
    may cost (see :func:`check_cost`); they are checked on the header, before
    anything is decoded.

    Returns:
        ``(H, W, C)`` uint8 array (``crop_size``) and its :class:`Geometry`.

    Raises:
        DecodeError: empty, truncated, non-image data, an image over the limits,
            or pixels with no known white level (float outside [0, 1]).
    """
    if geometry.get("mode", "center_crop") not in RESIZE_MODES:  # a bug of the caller: not an error row
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}; got {geometry['mode']!r}")
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                # Both orientations: EXIF may still turn the image a quarter.
                for hh, ww in ((h, w), (w, h)):
                    check_cost(hh, ww, resize_size=resize_size, mode=geometry.get("mode", "center_crop"),
                               max_pixels=max_pixels, max_resized_pixels=max_resized_pixels,
                               max_aspect=max_aspect)
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("not a recognised image format") from e
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb guard: {e}") from e
    except PIL_ERRORS as e:
        raise DecodeError(f"cannot decode image: {e}") from e
    return resize_and_crop(rgb, resize_size=resize_size, crop_size=crop_size,
                           interpolation=interpolation, max_resized_pixels=max_resized_pixels,
                           max_aspect=max_aspect, **geometry)


def check_cost(
    h: int,
    w: int,
    *,
    resize_size: Size,
    mode: str = "center_crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> None:
    """Refuses an ``h x w`` image whose decode or resize would cost too much, before either.

    Raises:
        DecodeError: more than ``max_pixels`` pixels (the decode), a longer side
            more than ``max_aspect`` times the shorter, or a resize (``mode``, see
            :func:`resized_size`) to more than ``max_resized_pixels`` pixels; the
            message names the size and the limit.
    """
    if w * h > max_pixels:
        raise DecodeError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    long, short = max(h, w), min(h, w)
    if long > max_aspect * short:
        raise DecodeError(
            f"image is {w}x{h}, an aspect ratio of {long / short:.4g}:1, over the limit of {max_aspect:g}:1"
        )
    rh, rw = resized_size(h, w, resize_size, mode)
    if rh * rw > max_resized_pixels:
        raise DecodeError(
            f"image is {w}x{h}, which resizes to {rw}x{rh} = {rw * rh} pixels, over the limit of "
            f"{max_resized_pixels}"
        )


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_size(h: int, w: int, resize_size: Size, mode: str = "center_crop") -> tuple[int, int]:
    """``(height, width)`` an ``h x w`` image is resized to before the crop.

    ``center_crop`` with a square target: the shorter side to it, the longer
    truncated (torchvision's ``Resize(int)``); with an ``(H, W)`` target: the
    smallest aspect-keeping size covering it, rounded (timm's ``ResizeKeepRatio``).
    ``squash``: the target. ``letterbox``: the largest aspect-keeping size
    inside the target, rounded (timm's ``ResizeKeepRatio(longest=1)``).
    """
    rh, rw = _pair(resize_size)
    if mode == "squash":
        return rh, rw
    if mode == "center_crop" and rh == rw:
        if w < h:
            return max(1, int(rh * h / w)), rh
        return rh, max(1, int(rh * w / h))
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    ratios = (h / rh, w / rw)
    ratio = max(ratios) if mode == "letterbox" else min(ratios)
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def _offset(size: int, crop: int, rounding: str) -> int:
    """Where the crop starts on one axis; negative = padding before the image.

    Padding splits like torchvision's ``CenterCrop`` (the extra pixel after).
    """
    if crop > size:
        return -((crop - size) // 2)
    return (size - crop) // 2 if rounding == "floor" else int(round((size - crop) / 2.0))


def decode_array(
    pixels: np.ndarray,
    *,
    resize_size: Size,
    crop_size: Size,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    **geometry: Any,
) -> tuple[np.ndarray, Geometry]:
    """:func:`decode_image` for pixels decoded already (``ray.data.read_images``).

    Args:
        pixels: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array,
            uint8 (or 16-bit greyscale), as PIL decodes it; converted to RGB the
            same way (alpha composited on white). No EXIF orientation is applied:
            the pixels are taken as they are.
        geometry: as for :func:`decode_image` (``Preprocess.decode_kwargs()``).

    Raises:
        DecodeError: not an image-shaped array, or oversized.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise DecodeError(f"pixels must be an (H, W), (H, W, 3) or (H, W, 4) array; got shape {arr.shape}")
    h, w = arr.shape[:2]
    check_cost(h, w, resize_size=resize_size, mode=geometry.get("mode", "center_crop"),
               max_pixels=max_pixels, max_resized_pixels=max_resized_pixels, max_aspect=max_aspect)
    if arr.dtype == np.uint8 or (arr.dtype == np.uint16 and arr.ndim == 2):
        img = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise DecodeError(f"pixels must be uint8 (or uint16 greyscale); got {arr.dtype}")
    return resize_and_crop(_to_rgb(img), resize_size=resize_size, crop_size=crop_size,
                           interpolation=interpolation, max_resized_pixels=max_resized_pixels,
                           max_aspect=max_aspect, **geometry)


def resize_and_crop(
    img: Image.Image,
    *,
    resize_size: Size,
    crop_size: Size,
    interpolation: str = "bilinear",
    mode: str = "center_crop",
    fill: int | tuple[int, ...] = 0,
    channels: int = 3,
    crop_offset: str = "round",
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> tuple[np.ndarray, Geometry]:
    """Resize (``mode``, see :func:`resized_size`), then a centre crop or pad.

    Args:
        img: an RGB image.
        resize_size: the resize target, an int (square) or ``(H, W)``.
        crop_size: the output, an int (square) or ``(H, W)``.
        interpolation: PIL filter name.
        mode: ``center_crop``, ``squash`` or ``letterbox``.
        fill: padding value(s) where the crop is larger than the resized image.
        channels: 3 (RGB) or 1 (greyscale, PIL's ``"L"``, converted before the resize).
        crop_offset: ``"round"`` (torchvision, timm) or ``"floor"`` (Hugging Face).
        max_resized_pixels, max_aspect: see :func:`check_cost`, checked before the resize.

    Returns:
        ``(H, W, channels)`` uint8 and the :class:`Geometry`.

    Raises:
        DecodeError: the image is over the limits.
    """
    w, h = img.size
    check_cost(h, w, resize_size=resize_size, mode=mode, max_pixels=max(w * h, 1),
               max_resized_pixels=max_resized_pixels, max_aspect=max_aspect)
    if channels == 1:
        img = img.convert("L")
    new_h, new_w = resized_size(h, w, resize_size, mode)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    arr = np.asarray(img, dtype=np.uint8).reshape(new_h, new_w, channels)
    ch, cw = _pair(crop_size)
    top = _offset(new_h, ch, crop_offset)
    left = _offset(new_w, cw, crop_offset)
    out = np.empty((ch, cw, channels), dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8).reshape(-1)[:channels] if np.ndim(fill) else fill
    src = arr[max(top, 0) : max(top, 0) + ch, max(left, 0) : max(left, 0) + cw]
    out[max(-top, 0) : max(-top, 0) + src.shape[0], max(-left, 0) : max(-left, 0) + src.shape[1]] = src
    geo = Geometry(
        orig_height=h,
        orig_width=w,
        resized_height=new_h,
        resized_width=new_w,
        crop_top=top,
        crop_left=left,
    )
    return out, geo


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: deep pixels scaled by their format's white level, alpha composited on white.

    16-bit greyscale (``I;16*``, and ``I``: PIL's mode for 16-bit greyscale in
    older versions and for PGM/TIFF, which PIL scales to 0..65535) is divided by
    65535, the white of 16 bits, never by the image's own maximum: a dark scan
    stays dark (max 250 of 65535 is black), like PIL's own 16-bit RGB decoding.
    Float pixels (``F``) are taken in [0, 1]. Pixels outside their format's range
    have no known white level and are refused.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DecodeError(f"{img.mode} pixels span {lo}..{hi}, outside the 16-bit range 0..65535 "
                              "that is scaled to 0..255; save the image with 8 or 16 bits per sample")
        return Image.fromarray(_scaled(arr, 65535.0)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = bool(np.isfinite(arr).all())
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size and finite else (0.0, 0.0)
        if not finite or lo < 0.0 or hi > 1.0:
            span = f"{lo:g}..{hi:g}" if finite else "non-finite values"
            raise DecodeError(f"float pixels span {span}, outside [0, 1], so their white level is unknown; "
                              "save the image with 8 or 16 bits per sample, or as floats in [0, 1]")
        return Image.fromarray(_scaled(arr, 1.0)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _scaled(arr: np.ndarray, white: float) -> np.ndarray:
    """``arr / white`` as uint8, rounded (65535 -> 255, 257·v -> v: the inverse of 8 -> 16 bits)."""
    return np.rint(arr.astype(np.float64) * (255.0 / white)).clip(0, 255).astype(np.uint8)
