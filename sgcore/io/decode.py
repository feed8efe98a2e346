"""Image decoding: bytes -> RGB uint8 array at model size, plus the geometry.

Resizing follows torchvision's ``ImageClassification`` preset: the shorter side
goes to ``resize_size``, then a centre crop of ``crop_size``. The geometry that
comes back lets a map of ``crop_size`` be laid exactly onto the original image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# 8192 x 8192 by default: larger images are refused before they are decoded.
DEFAULT_MAX_PIXELS = 8192 * 8192

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class DecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How a ``crop_size`` map sits on the original image.

    The map pixel (r, c) covers resized pixel (r + crop_top, c + crop_left);
    resized (y, x) covers original (y * orig_height / resized_height,
    x * orig_width / resized_width).
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
    resize_size: int,
    crop_size: int,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, Geometry]:
    """Decodes, orients (EXIF), converts to RGB, resizes and centre-crops.

    Returns:
        ``(crop_size, crop_size, 3)`` uint8 array and its :class:`Geometry`.

    Raises:
        DecodeError: empty, truncated, non-image or oversized data.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DecodeError(
                        f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("not a recognised image format") from e
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb guard: {e}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"cannot decode image: {e}") from e
    return resize_and_crop(rgb, resize_size=resize_size, crop_size=crop_size, interpolation=interpolation)


def resize_and_crop(
    img: Image.Image, *, resize_size: int, crop_size: int, interpolation: str = "bilinear"
) -> tuple[np.ndarray, Geometry]:
    """Shorter side to ``resize_size``, then a centre crop (zero-padded if small)."""
    w, h = img.size
    if w < h:
        new_w, new_h = resize_size, max(1, int(resize_size * h / w))
    else:
        new_w, new_h = max(1, int(resize_size * w / h)), resize_size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    arr = np.asarray(img, dtype=np.uint8)
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    out = np.zeros((crop_size, crop_size, 3), dtype=np.uint8)
    src = arr[max(top, 0) : max(top, 0) + crop_size, max(left, 0) : max(left, 0) + crop_size]
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
    """RGB for every mode: 16-bit greyscale scaled, alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray((arr / top * 255.0).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(arr.max(initial=0) - arr.min(initial=0), 1e-12)
        return Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
