"""The demo dataset: labelled shape images with object masks, on disk or in memory.

Layout written by :func:`generate_dataset`::

    root/images/<class>/<class>_<i:05d>.png   64x64 RGB
    root/masks/<class>/<class>_<i:05d>.png    L mode, 255 inside the object
    root/marks.csv                            the planted shortcut's marks: image_id, x0, y0, x1, y1
    root/.sgcore-demo.json                    what was generated (written last)

``marks.csv`` lists the images that carry the mark of the planted shortcut
(:data:`~sgcore.demo.shapes.DEMO_SHORTCUT`), with its box in pixels (exclusive
ends); it has the columns of ``jobs.audit --boxes``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sgcore.demo.shapes import DEMO_CLASSES, DEMO_SHORTCUT, Shortcut, render_layers
from sgcore.errors import ConfigError

DATASET_VERSION = 2  # 2: the planted shortcut
MARKER = ".sgcore-demo.json"
MARKS_FILE = "marks.csv"

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
        marks: ``(N, 4)`` int64 box ``x0, y0, x1, y1`` of the shortcut's mark,
            ``-1`` on images without one.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    marks: np.ndarray

    @property
    def marked(self) -> np.ndarray:
        """``(N,)`` bool: the image carries the shortcut's mark."""
        return self.marks[:, 0] >= 0


def _check(n_per_class: int, seed: int, size: int) -> None:
    for name, value, low in (("n_per_class", n_per_class, 1), ("seed", seed, 0), ("size", size, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")


def make_split(
    *, n_per_class: int, seed: int, size: int = 64, shortcut: Shortcut | None = DEMO_SHORTCUT
) -> DemoSplit:
    """Draw a split in memory, image for image the same as :func:`generate_dataset`."""
    _check(n_per_class, seed, size)
    images, masks, labels, marks = [], [], [], []
    for c in range(len(DEMO_CLASSES)):
        for i in range(n_per_class):
            layers = render_layers(seed, c, i, size, shortcut)
            images.append(layers.compose(np.random.default_rng([seed, c, i, 1])))
            masks.append(layers.mask)
            labels.append(c)
            marks.append(layers.mark or (-1, -1, -1, -1))
    return DemoSplit(
        images=np.stack(images),
        masks=np.stack(masks),
        labels=np.array(labels, np.int64),
        marks=np.array(marks, np.int64).reshape(-1, 4),
    )


def make_layers(
    *, n_per_class: int, seed: int, size: int = 64, shortcut: Shortcut | None = DEMO_SHORTCUT
) -> dict[str, np.ndarray]:
    """Separate layers for training: uint8 ``background``, ``foreground``, ``alpha``;
    float32 ``opacity`` of the object; uint8 ``mark`` (RGB) and ``mark_alpha``
    (255 on the shortcut's mark, where the image has one); int64 ``labels``.

    Training composites objects onto other images' backgrounds, which only the
    layers allow.
    """
    _check(n_per_class, seed, size)
    keys = ("background", "foreground", "alpha", "opacity", "mark", "mark_alpha", "labels")
    out: dict[str, list] = {k: [] for k in keys}
    blank = np.zeros((size, size, 3), np.float32)
    for c in range(len(DEMO_CLASSES)):
        for i in range(n_per_class):
            layers = render_layers(seed, c, i, size, shortcut)
            out["background"].append(_to_uint8(layers.background))
            out["foreground"].append(_to_uint8(layers.foreground))
            out["alpha"].append(_to_uint8(layers.alpha))
            out["opacity"].append(layers.opacity)
            mark_alpha = np.zeros((size, size), np.uint8)
            mark = blank
            if layers.mark is not None and layers.shortcut is not None:
                mark = layers.shortcut.paint(blank, layers.mark)
                x0, y0, x1, y1 = layers.mark
                mark_alpha[y0:y1, x0:x1] = 255
            out["mark"].append(_to_uint8(mark))
            out["mark_alpha"].append(mark_alpha)
            out["labels"].append(c)
    dtypes = {"labels": np.int64, "opacity": np.float32}
    return {k: np.array(v, dtypes[k]) if k in dtypes else np.stack(v) for k, v in out.items()}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def generate_dataset(
    root: str | Path, *, n_per_class: int, seed: int, size: int = 64, shortcut: Shortcut | None = DEMO_SHORTCUT
) -> Path:
    """Write the demo dataset (images and masks as PNG, ``marks.csv``) under ``root``.

    Idempotent: a marker file records ``(n_per_class, seed, size, shortcut, version)``;
    when it matches nothing is written, otherwise ``root/images`` and
    ``root/masks`` are replaced.

    Args:
        root: local directory.
        n_per_class: images per class.
        seed: dataset seed; the same seed gives byte-identical files.
        size: image side in pixels.
        shortcut: the planted shortcut (None: no marks).

    Returns:
        ``root / "images"``.
    """
    _check(n_per_class, seed, size)
    root = Path(root)
    wanted = {"n_per_class": n_per_class, "seed": seed, "size": size, "version": DATASET_VERSION,
              "shortcut": None if shortcut is None else asdict(shortcut)}
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
    marks = ["image_id,x0,y0,x1,y1"]
    for c, name in enumerate(DEMO_CLASSES):
        image_dir = root / "images" / name
        mask_dir = root / "masks" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            layers = render_layers(seed, c, i, size, shortcut)
            image, mask = layers.compose(np.random.default_rng([seed, c, i, 1])), layers.mask
            stem = f"{name}_{i:05d}.png"
            Image.fromarray(image, "RGB").save(image_dir / stem, format="PNG")
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(mask_dir / stem, format="PNG")
            if layers.mark is not None:
                marks.append(f"{name}/{stem}," + ",".join(str(v) for v in layers.mark))
    (root / MARKS_FILE).write_text("\n".join(marks) + "\n")
    marker.write_text(json.dumps(wanted, sort_keys=True))
    return root / "images"


def ensure_demo_data(root: str | Path = "data/demo", n_per_class: int = 60) -> Path:
    """The embedded demo's evaluation split (fixed seed), generated if needed.

    Returns:
        The images directory (``root / "images"``).
    """
    return generate_dataset(root, n_per_class=n_per_class, seed=EVAL_SEED)
