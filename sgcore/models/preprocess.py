"""Model-input preprocessing: the geometry, the channels and the normalization.

Geometry (done by the decoders, on decoded images, see
:func:`sgcore.io.decode.resize_and_crop`) follows one of three resize modes,
then a centre crop (or pad) to the model's ``H x W`` input:

- ``center_crop`` (torchvision's ``ImageClassification``, timm's ``crop_mode=
  "center"``): the aspect ratio is kept and the image covers ``resize_size``
  (a square ``resize_size``: the shorter side goes to it), then a centre crop.
- ``squash`` (Hugging Face ViT, timm's ``"squash"``): each side is resized to
  ``resize_size`` independently, then a centre crop.
- ``letterbox`` (timm's ``"border"``): the aspect ratio is kept and the image
  fits inside ``resize_size``, then it is padded with ``fill`` (the mean
  colour by default) and centre-cropped.

``resize_size`` defaults to ``floor(crop / crop_pct)`` per side when
``crop_pct`` is given (timm), else to the crop size. Then
:meth:`Preprocess.normalize` turns the uint8 crops into the float input the
model expects: ``(x * scale - mean) / std`` per channel (``scale = 1/255`` by
default; ``channels=1`` for greyscale models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from sgcore.errors import ConfigError

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
RESIZE_MODES: tuple[str, ...] = ("center_crop", "squash", "letterbox")
# How a centre crop's offset is rounded: torchvision and timm round, Hugging Face floors.
CROP_OFFSETS: tuple[str, ...] = ("round", "floor")

# torchvision's ImageClassification defaults (the ImageNet recipe).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _numbers(name: str, value: Any, channels: int) -> tuple[float, ...]:
    what = "one per RGB channel" if channels == 3 else f"one per channel, {channels}"
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be {channels} numbers ({what}); got {value!r}") from e
    if len(items) != channels or not all(math.isfinite(v) for v in items):
        raise ConfigError(f"{name} must be {channels} finite numbers ({what}); got {value!r}")
    return items


def _size(name: str, value: Any) -> int | tuple[int, int]:
    """A positive int, or an (H, W) pair of them (a list from JSON becomes a tuple)."""
    if isinstance(value, list | tuple):
        if len(value) == 2 and all(_is_positive_int(v) for v in value):
            return int(value[0]), int(value[1])
        raise ConfigError(f"{name} must be a positive integer or [height, width]; got {value!r}")
    if not _is_positive_int(value):
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _is_positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of a size given as an int (square) or a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How decoded images become model input.

    Attributes:
        crop_size: the model input, ``H x W`` (an int for a square); saliency
            maps have this size.
        mean: per-channel mean subtracted after scaling pixels by ``scale``.
        std: per-channel standard deviation divided by, after the mean.
        resize_size: the resize target before the crop (see the module doc);
            None: ``floor(crop / crop_pct)`` with ``crop_pct``, else the crop.
        resize_mode: ``"center_crop"``, ``"squash"`` or ``"letterbox"``.
        crop_pct: timm's crop fraction; only used to derive ``resize_size``.
        interpolation: resize filter (PIL's): bilinear, bicubic, nearest,
            lanczos, box or hamming.
        channels: 3 (RGB) or 1 (greyscale, ITU-R 601-2 luma as PIL's ``"L"``).
        scale: multiplies the uint8 pixels before the mean (1/255: [0, 1]).
        fill: pixel value per channel of the padding (letterbox, or an image
            smaller than the crop); None: the mean colour for letterbox (timm),
            0 otherwise (torchvision).
        crop_offset: ``"round"`` (torchvision, timm) or ``"floor"`` (Hugging
            Face) for the centre crop's offset when the margin is odd.
    """

    crop_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int | tuple[int, int] | None = None
    resize_mode: str = "center_crop"
    crop_pct: float | None = None
    interpolation: str = "bilinear"
    channels: int = 3
    scale: float = 1.0 / 255.0
    fill: tuple[int, ...] | None = None
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (greyscale) or 3 (RGB); got {self.channels!r}")
        crop = _size("crop_size", self.crop_size)
        object.__setattr__(self, "crop_size", crop)
        if self.crop_pct is not None:
            pct = self.crop_pct
            if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0.0 < pct <= 1.0:
                raise ConfigError(f"crop_pct must be in (0, 1]; got {pct!r}")
            object.__setattr__(self, "crop_pct", float(pct))
        if self.resize_size is None:
            if self.crop_pct is None:
                resize: int | tuple[int, int] = crop
            elif isinstance(crop, int):
                resize = math.floor(crop / self.crop_pct)
            else:
                resize = (math.floor(crop[0] / self.crop_pct), math.floor(crop[1] / self.crop_pct))
        else:
            resize = _size("resize_size", self.resize_size)
        object.__setattr__(self, "resize_size", resize)
        object.__setattr__(self, "mean", _numbers("mean", self.mean, self.channels))
        std = _numbers("std", self.std, self.channels)
        if min(std) <= 0:
            raise ConfigError(f"std must be > 0 for every channel; got {std}")
        object.__setattr__(self, "std", std)
        for name, value, choices in (
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("resize_mode", self.resize_mode, RESIZE_MODES),
            ("crop_offset", self.crop_offset, CROP_OFFSETS),
        ):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not (
            math.isfinite(self.scale) and self.scale > 0
        ):
            raise ConfigError(f"scale must be a positive number (1/255 for [0, 1] pixels); got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        if self.fill is not None:
            try:
                fill = tuple(int(v) for v in self.fill)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"fill must be {self.channels} integers in [0, 255]; got {self.fill!r}") from e
            if len(fill) != self.channels or not all(0 <= v <= 255 for v in fill):
                raise ConfigError(f"fill must be {self.channels} integers in [0, 255]; got {self.fill!r}")
            object.__setattr__(self, "fill", fill)

    @property
    def height(self) -> int:
        """Model input height (= map height)."""
        return pair(self.crop_size)[0]

    @property
    def width(self) -> int:
        """Model input width (= map width)."""
        return pair(self.crop_size)[1]

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the model input and of the maps."""
        return pair(self.crop_size)

    def pad_fill(self) -> tuple[int, ...]:
        """The padding pixel: ``fill``, else the mean colour for letterbox, else 0."""
        if self.fill is not None:
            return self.fill
        if self.resize_mode == "letterbox":
            return tuple(min(255, max(0, round(m / self.scale))) for m in self.mean)
        return (0,) * self.channels

    def decode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sgcore.io.decode_image` for this geometry."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "mode": self.resize_mode,
            "fill": self.pad_fill(),
            "channels": self.channels,
            "crop_offset": self.crop_offset,
        }

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Turn decoded, cropped uint8 images into normalized model input.

        Args:
            images_uint8: ``(B, H, W, C)`` uint8 tensor, channels last as decoded.

        Returns:
            ``(B, C, H, W)`` float32 tensor ``(x * scale - mean) / std``, on the
            device of the input.
        """
        if not isinstance(images_uint8, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor; got {type(images_uint8).__name__}")
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"images must be uint8; got {images_uint8.dtype}")
        c = self.channels
        if images_uint8.ndim != 4 or images_uint8.shape[-1] != c:
            raise ValueError(
                f"images must have shape (B, H, W, {c}); got {tuple(images_uint8.shape)}"
            )
        device = images_uint8.device
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        x = images_uint8.permute(0, 3, 1, 2).to(torch.float32)
        x = x.div_(255.0) if self.scale == 1.0 / 255.0 else x.mul_(self.scale)
        return x.sub_(mean).div_(std).contiguous()

    def scaled(self, image_size: int | None) -> Preprocess:
        """This preprocessing with the crop's height set to ``image_size``.

        The width (for a non-square input) and ``resize_size`` scale alike.

        Args:
            image_size: new crop height, or None to keep this one.
        """
        if image_size is None:
            return self
        if not _is_positive_int(image_size):
            raise ConfigError(f"image_size must be a positive integer; got {image_size!r}")
        h, w = self.map_shape
        factor = image_size / h
        crop: int | tuple[int, int] = (
            image_size if isinstance(self.crop_size, int) else (image_size, max(1, round(w * factor)))
        )
        if self.crop_pct is not None:  # timm: the resize follows from the crop
            return replace(self, crop_size=crop, resize_size=None)
        rh, rw = pair(self.resize_size)  # type: ignore[arg-type]
        ch, cw = pair(crop)
        resize: int | tuple[int, int]
        if isinstance(self.resize_size, int):
            resize = max(image_size, round(self.resize_size * factor))
        else:
            resize = (max(ch, round(rh * factor)), max(cw, round(rw * factor)))
        return replace(self, crop_size=crop, resize_size=resize)

    def with_overrides(self, overrides: dict[str, Any] | None) -> Preprocess:
        """This preprocessing with some fields replaced (``--preprocess '{...}'``).

        Giving ``crop_size`` or ``crop_pct`` without ``resize_size`` derives the
        resize anew (from ``crop_pct``, else the old crop-to-resize ratio).

        Raises:
            ConfigError: an unknown field or a bad value.
        """
        if not overrides:
            return self
        if not isinstance(overrides, dict):
            raise ConfigError(f"preprocess must be a JSON object; got {type(overrides).__name__}")
        known = [f.name for f in fields(self)]
        unknown = sorted(k for k in overrides if k not in known)
        if unknown:
            raise ConfigError(f"unknown preprocess field(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        data = {**self.to_dict(), **overrides}
        if "resize_size" not in overrides and ("crop_pct" in overrides or "crop_size" in overrides):
            if data["crop_pct"] is not None:
                data["resize_size"] = None
            else:  # keep the resize margin of the old crop
                (oh, ow), (rh, rw) = self.map_shape, pair(self.resize_size)  # type: ignore[arg-type]
                new = _size("crop_size", data["crop_size"])
                nh, nw = pair(new)
                if isinstance(new, int) and isinstance(self.resize_size, int):
                    data["resize_size"] = max(nh, round(rh * nh / oh))
                else:
                    data["resize_size"] = [max(nh, round(rh * nh / oh)), max(nw, round(rw * nw / ow))]
        return Preprocess.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (for the manifest and the config hash)."""
        def size(v: Any) -> Any:
            return v if isinstance(v, int) or v is None else list(v)

        return {
            "crop_size": size(self.crop_size),
            "resize_size": size(self.resize_size),
            "resize_mode": self.resize_mode,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "channels": self.channels,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "fill": None if self.fill is None else list(self.fill),
            "crop_offset": self.crop_offset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; raises ConfigError on missing or bad fields.

        Only ``crop_size``, ``mean`` and ``std`` are required (older manifests
        hold ``resize_size``, ``crop_size``, ``mean``, ``std``, ``interpolation``).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"preprocess must be a dict; got {type(data).__name__}")
        keys = ("crop_size", "mean", "std")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ConfigError(f"preprocess is missing {', '.join(missing)}; got keys {sorted(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ConfigError(f"unknown preprocess field(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        values = dict(data)
        for name in ("mean", "std", "fill"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"bad preprocess {data!r}: {e}") from e


def imagenet_preprocess() -> Preprocess:
    """torchvision's default ImageNet preprocessing: resize 256, crop 224."""
    return Preprocess(resize_size=256, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
