"""The demo dataset: labelled shape images with object masks, on disk or in memory.

Layout written by :func:`generate_dataset`::

    root/images/<class>/<class>_<i:05d>.png   64x64 RGB
    root/masks/<class>/<class>_<i:05d>.png    L mode, 255 inside the object
    root/.sgcore-demo.json                    what was generated (written last)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sgcore.demo.shapes import DEMO_CLASSES, render_layers, render_sample
from sgcore.errors import ConfigError

DATASET_VERSION = 1
MARKER = ".sgcore-demo.json"

# Fixed seeds of the splits; they must differ so the splits share no image.
EVAL_SEED = 20170612  # the embedded demo's evaluation data
TRAIN_SEED = 1706  # jobs/train_demo.py trains on this split
HELDOUT_SEED = 3825  # accuracy of the trained model is measured on this one


@dataclass(frozen=True, kw_only=True)
class DemoSplit:
    """A demo split in memory.

    Attributes:
        images: ``(N, S, S, 3)`` uint8.
        masks: ``(N, S, S)`` bool object masks.
        labels: ``(N,)`` int64 class indices into :data:`DEMO_CLASSES`.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


def _check(n_per_class: int, seed: int, size: int) -> None:
    for name, value, low in (("n_per_class", n_per_class, 1), ("seed", seed, 0), ("size", size, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")


def make_split(*, n_per_class: int, seed: int, size: int = 64) -> DemoSplit:
    """Draw a split in memory, image for image the same as :func:`generate_dataset`."""
    _check(n_per_class, seed, size)
    images, masks, labels = [], [], []
    for c in range(len(DEMO_CLASSES)):
        for i in range(n_per_class):
            image, mask = render_sample(seed, c, i, size)
            images.append(image)
            masks.append(mask)
            labels.append(c)
    return DemoSplit(images=np.stack(images), masks=np.stack(masks), labels=np.array(labels, np.int64))


def make_layers(*, n_per_class: int, seed: int, size: int = 64) -> dict[str, np.ndarray]:
    """Separate layers (uint8 ``background``, ``foreground``, ``alpha``; ``labels``) for training.

    Training composites objects onto other images' backgrounds, which only the
    layers allow.
    """
    _check(n_per_class, seed, size)
    out: dict[str, list] = {"background": [], "foreground": [], "alpha": [], "labels": []}
    for c in range(len(DEMO_CLASSES)):
        for i in range(n_per_class):
            layers = render_layers(seed, c, i, size)
            out["background"].append(_to_uint8(layers.background))
            out["foreground"].append(_to_uint8(layers.foreground))
            out["alpha"].append(_to_uint8(layers.alpha))
            out["labels"].append(c)
    return {k: np.stack(v) if k != "labels" else np.array(v, np.int64) for k, v in out.items()}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def generate_dataset(root: str | Path, *, n_per_class: int, seed: int, size: int = 64) -> Path:
    """Write the demo dataset (images and masks as PNG) under ``root``.

    Idempotent: a marker file records ``(n_per_class, seed, size, version)``;
    when it matches nothing is written, otherwise ``root/images`` and
    ``root/masks`` are replaced.

    Args:
        root: local directory.
        n_per_class: images per class.
        seed: dataset seed; the same seed gives byte-identical files.
        size: image side in pixels.

    Returns:
        ``root / "images"``.
    """
    _check(n_per_class, seed, size)
    root = Path(root)
    wanted = {"n_per_class": n_per_class, "seed": seed, "size": size, "version": DATASET_VERSION}
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return root / "images"
        except (OSError, ValueError):
            pass  # unreadable marker: regenerate
        marker.unlink()
    for sub in ("images", "masks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for c, name in enumerate(DEMO_CLASSES):
        image_dir = root / "images" / name
        mask_dir = root / "masks" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image, mask = render_sample(seed, c, i, size)
            stem = f"{name}_{i:05d}.png"
            Image.fromarray(image, "RGB").save(image_dir / stem, format="PNG")
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(mask_dir / stem, format="PNG")
    marker.write_text(json.dumps(wanted, sort_keys=True))
    return root / "images"


def ensure_demo_data(root: str | Path = "data/demo", n_per_class: int = 60) -> Path:
    """The embedded demo's evaluation split (fixed seed), generated if needed.

    Returns:
        The images directory (``root / "images"``).
    """
    return generate_dataset(root, n_per_class=n_per_class, seed=EVAL_SEED)
