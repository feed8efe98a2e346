"""Model-input preprocessing, following torchvision's ImageClassification.

Geometry (done by the decoders, on decoded images): resize the shorter side
to ``resize_size``, then center-crop ``crop_size`` x ``crop_size``. Then
:meth:`Preprocess.normalize` turns the uint8 crops into the float input the
model expects: ``(x / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sgcore.errors import ConfigError

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")

# torchvision's ImageClassification defaults (the ImageNet recipe).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except TypeError as e:
        raise ConfigError(f"{name} must be 3 numbers (one per RGB channel); got {value!r}") from e
    if len(items) != 3 or not all(math.isfinite(v) for v in items):
        raise ConfigError(f"{name} must be 3 finite numbers (one per RGB channel); got {value!r}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How decoded images become model input.

    Attributes:
        resize_size: the shorter side is resized to this many pixels.
        crop_size: then a centered ``crop_size`` x ``crop_size`` crop is taken;
            saliency maps have this size.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by, after the mean.
        interpolation: resize filter: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        std = _triple("std", self.std)
        if min(std) <= 0:
            raise ConfigError(f"std must be > 0 for every channel; got {std}")
        object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}; "
                f"got {self.interpolation!r}"
            )

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Turn decoded, cropped uint8 images into normalized model input.

        Args:
            images_uint8: ``(B, H, W, 3)`` uint8 tensor, channels last as decoded.

        Returns:
            ``(B, 3, H, W)`` float32 tensor ``(x / 255 - mean) / std``, on the
            device of the input.
        """
        if not isinstance(images_uint8, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor; got {type(images_uint8).__name__}")
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"images must be uint8; got {images_uint8.dtype}")
        if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
            raise ValueError(
                f"images must have shape (B, H, W, 3); got {tuple(images_uint8.shape)}"
            )
        device = images_uint8.device
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        x = images_uint8.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        return x.sub_(mean).div_(std).contiguous()

    def scaled(self, image_size: int | None) -> Preprocess:
        """This preprocessing with ``crop_size=image_size`` and ``resize_size`` scaled alike.

        Args:
            image_size: new crop size, or None to keep this one.
        """
        if image_size is None:
            return self
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size must be a positive integer; got {image_size!r}")
        resize = max(image_size, round(self.resize_size * image_size / self.crop_size))
        return Preprocess(
            resize_size=resize,
            crop_size=image_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (for the manifest and the config hash)."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; raises ConfigError on missing or bad fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"preprocess must be a dict; got {type(data).__name__}")
        keys = ("resize_size", "crop_size", "mean", "std")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ConfigError(f"preprocess is missing {', '.join(missing)}; got keys {sorted(data)}")
        return cls(
            resize_size=data["resize_size"],
            crop_size=data["crop_size"],
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
        )


def imagenet_preprocess() -> Preprocess:
    """torchvision's default ImageNet preprocessing: resize 256, crop 224."""
    return Preprocess(resize_size=256, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
