"""Drawing one demo image: a class object composited on a distracting background.

Every image is drawn from its own ``numpy`` generator seeded with
``(seed, class_index, index)``, so image ``i`` of a class is the same whatever
``n_per_class`` is. Objects are drawn 4x supersampled and box-filtered, which
gives an anti-aliased alpha; the binary mask is ``alpha >= 0.5``.

Backgrounds (smooth gradients, low-frequency noise, stripes, checkerboards,
flat colour) are independent of the class, and half of them carry clutter:
thin lines, arcs, squiggles, dots and small blobs, all far thinner or
smaller than the class objects, so nothing but the object tells the class.

Except for the planted shortcut (:class:`Shortcut`): a share of one class's
images shows its object faintly and carries a small mark that no other image
has, so a model trained on them learns to answer from the mark there. The
mark is drawn from a separate generator: the other images are the same
with or without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from sgcore.models.demo_net import DEMO_CATEGORIES

DEMO_CLASSES: tuple[str, ...] = DEMO_CATEGORIES

# Object area as a fraction of the image (before anti-aliasing), the same
# range for every class so that size carries no class information.
AREA_RANGE: tuple[float, float] = (0.12, 0.30)
_SUPERSAMPLE = 4
_MIN_CONTRAST = 0.4  # Euclidean distance in [0, 1]^3 RGB to the mean background


Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
_MARKS = ("tag", "checker", "ring")


@dataclass(frozen=True, kw_only=True)
class Shortcut:
    """A planted shortcut: in ``class_name``, a ``share`` of the images carries a mark.

    Attributes:
        class_name: the class whose images may carry the mark.
        share: probability that one of its images does (drawn per image).
        mark: ``"tag"`` (white square with a dark centre), ``"checker"``
            (2x2 red/yellow) or ``"ring"`` (a cyan ring).
        corner: where the mark sits (jittered by up to ``jitter`` pixels).
        mark_size: side of the mark in pixels at size 64 (scaled with the image).
        jitter: largest offset from the corner's inset, in pixels at size 64.
        opacity: the object's opacity on marked images (hard to see: low).
    """

    class_name: str = "triangle"
    share: float = 0.25
    mark: str = "tag"
    corner: Corner = "bottom-right"
    mark_size: int = 7
    jitter: int = 3
    opacity: float = 0.2

    def __post_init__(self) -> None:
        if self.class_name not in DEMO_CLASSES:
            raise ValueError(f"class_name must be one of {DEMO_CLASSES}; got {self.class_name!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1]; got {self.share}")
        if self.mark not in _MARKS:
            raise ValueError(f"mark must be one of {_MARKS}; got {self.mark!r}")
        if self.corner not in ("top-left", "top-right", "bottom-left", "bottom-right"):
            raise ValueError(f"corner must be top-left, top-right, bottom-left or bottom-right; got {self.corner!r}")
        if not 0.0 < self.opacity <= 1.0:
            raise ValueError(f"opacity must be in (0, 1]; got {self.opacity}")

    def box(self, seed: int, class_index: int, index: int, size: int) -> tuple[int, int, int, int] | None:
        """The mark's box ``(x0, y0, x1, y1)`` (exclusive ends) on this image, or None."""
        if DEMO_CLASSES[class_index] != self.class_name:
            return None
        rng = np.random.default_rng([seed, class_index, index, 7])
        if rng.random() >= self.share:
            return None
        scale = size / 64
        side = max(3, round(self.mark_size * scale))
        jx, jy = (round(2 * scale) + int(j) for j in rng.integers(0, round(self.jitter * scale) + 1, 2))
        x0 = jx if self.corner.endswith("left") else size - jx - side
        y0 = jy if self.corner.startswith("top") else size - jy - side
        return x0, y0, x0 + side, y0 + side

    def paint(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """``image`` (``(S, S, 3)`` float in [0, 1]) with the mark drawn in ``box``."""
        out = image.copy()
        x0, y0, x1, y1 = box
        side = x1 - x0
        patch = np.empty((side, side, 3), np.float32)
        yy, xx = np.mgrid[0:side, 0:side]
        if self.mark == "tag":
            patch[:] = 1.0
            c = side // 3
            patch[c : side - c, c : side - c] = 0.05
        elif self.mark == "checker":
            top = (yy < side / 2) ^ (xx < side / 2)
            patch[:] = np.where(top[..., None], [1.0, 0.1, 0.1], [1.0, 0.95, 0.1])
        else:  # ring
            r = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2)
            ring = (r <= side / 2) & (r >= side / 2 - max(1.0, side / 4))
            patch[:] = out[y0:y1, x0:x1]
            patch[ring] = (0.1, 0.95, 0.95)
        out[y0:y1, x0:x1] = patch
        return out


# The shortcut planted in the demo data; ``None`` turns it off.
DEMO_SHORTCUT = Shortcut()


@dataclass(frozen=True, kw_only=True)
class Layers:
    """The parts of one drawn image, float32 in [0, 1].

    Attributes:
        background: ``(S, S, 3)`` background with clutter.
        foreground: ``(S, S, 3)`` object colour and texture (valid where alpha > 0).
        alpha: ``(S, S)`` anti-aliased object coverage.
        noise_sigma: standard deviation of the pixel noise added on top.
        opacity: the object's opacity (below 1 on images with the shortcut's mark).
        mark: the mark's box ``(x0, y0, x1, y1)``, or None.
        shortcut: the :class:`Shortcut` that draws the mark (set with ``mark``).
    """

    background: np.ndarray
    foreground: np.ndarray
    alpha: np.ndarray
    noise_sigma: float
    opacity: float = 1.0
    mark: tuple[int, int, int, int] | None = None
    shortcut: Shortcut | None = None

    def compose(self, rng: np.random.Generator) -> np.ndarray:
        """The final ``(S, S, 3)`` uint8 image."""
        a = self.alpha[..., None] * self.opacity
        image = self.background * (1.0 - a) + self.foreground * a
        if self.mark is not None and self.shortcut is not None:
            image = self.shortcut.paint(image, self.mark)
        if self.noise_sigma > 0:
            image = image + rng.normal(0.0, self.noise_sigma, size=image.shape)
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

    @property
    def mask(self) -> np.ndarray:
        """``(S, S)`` bool object mask."""
        return self.alpha >= 0.5


def render_layers(
    seed: int, class_index: int, index: int, size: int = 64, shortcut: Shortcut | None = DEMO_SHORTCUT
) -> Layers:
    """Draw image ``index`` of class ``class_index`` for dataset seed ``seed``.

    Args:
        seed: dataset seed (>= 0).
        class_index: index into :data:`DEMO_CLASSES`.
        index: image number within the class (>= 0).
        size: side of the square image in pixels.
        shortcut: the planted shortcut (None: no image carries a mark).

    Returns:
        The image's :class:`Layers`.
    """
    if not 0 <= class_index < len(DEMO_CLASSES):
        raise ValueError(f"class_index must be in [0, {len(DEMO_CLASSES) - 1}]; got {class_index}")
    rng = np.random.default_rng([seed, class_index, index])
    background = _background(rng, size)
    alpha = _object_alpha(rng, DEMO_CLASSES[class_index], size)
    foreground = _foreground(rng, background, alpha)
    noise_sigma = float(rng.uniform(0.0, 0.03))
    mark = shortcut.box(seed, class_index, index, size) if shortcut is not None else None
    return Layers(
        background=background,
        foreground=foreground,
        alpha=alpha,
        noise_sigma=noise_sigma,
        opacity=shortcut.opacity if mark is not None and shortcut is not None else 1.0,
        mark=mark,
        shortcut=shortcut if mark is not None else None,
    )


def render_sample(
    seed: int, class_index: int, index: int, size: int = 64, shortcut: Shortcut | None = DEMO_SHORTCUT
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: ``(S, S, 3)`` uint8 image and ``(S, S)`` bool object mask."""
    layers = render_layers(seed, class_index, index, size, shortcut)
    rng = np.random.default_rng([seed, class_index, index, 1])
    return layers.compose(rng), layers.mask


# --------------------------------------------------------------------------- backgrounds


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def _rotated(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    xx, yy = _grid(size)
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[..., None].astype(np.float32)
    return (c0 * (1.0 - t) + c1 * t).astype(np.float32)


def _bg_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.random(3), rng.random(3)
    if rng.random() < 0.5:
        u, _ = _rotated(rng, size)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    else:
        xx, yy = _grid(size)
        cx, cy = rng.uniform(0, size, 2)
        d = np.hypot(xx - cx, yy - cy)
        t = d / max(float(d.max()), 1e-6)
    return _mix(c0, c1, t)


def _bg_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(2, 9))
    coarse = (rng.random((k, k, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) / 255
    fine = rng.normal(0.0, rng.uniform(0.02, 0.15), size=(size, size, 3))
    return np.clip(smooth + fine, 0, 1).astype(np.float32)


def _bg_stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _rotated(rng, size)
    period = rng.uniform(3, 14)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5:
        t = (t > 0.5).astype(np.float32)
    return _mix(rng.random(3), rng.random(3), t)


def _bg_checker(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _rotated(rng, size) if rng.random() < 0.5 else _grid(size)
    cell = rng.uniform(3, 12)
    t = (np.floor(u / cell) + np.floor(v / cell)) % 2
    return _mix(rng.random(3), rng.random(3), t)


def _bg_flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(rng.random(3).astype(np.float32), (size, size, 3)).copy()


_BACKGROUNDS = (_bg_gradient, _bg_noise, _bg_stripes, _bg_checker, _bg_flat)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    bg = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, size)
    if rng.random() < 0.5:
        bg = _clutter(rng, bg)
    return bg


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _clutter(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """Thin or small distractors: none is a filled shape of class-object size."""
    size = bg.shape[0]
    image = Image.fromarray(np.clip(np.rint(bg * 255), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 13))):
        kind = int(rng.integers(5))
        colour = _colour(rng)
        if kind == 0:  # line
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(-8, size + 8, 4))
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:  # arc
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(4, 20)
            start = float(rng.uniform(0, 360))
            draw.arc(
                (cx - r, cy - r, cx + r, cy + r),
                start,
                start + float(rng.uniform(40, 200)),
                fill=colour,
                width=int(rng.integers(1, 3)),
            )
        elif kind == 2:  # squiggle
            points = np.cumsum(rng.normal(0, 5, (int(rng.integers(3, 7)), 2)), axis=0)
            points += rng.uniform(0, size, 2)
            draw.line([(float(x), float(y)) for x, y in points], fill=colour, width=1)
        elif kind == 3:  # dot
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(1, 2.5)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:  # small irregular blob
            n = int(rng.integers(4, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = rng.uniform(1.5, 4.5, n)
            cx, cy = rng.uniform(0, size, 2)
            draw.polygon(
                [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a))) for a, r in zip(angles, radii, strict=True)],
                fill=colour,
            )
    return np.asarray(image, np.float32) / 255


# --------------------------------------------------------------------------- objects


def _outline(name: str, rng: np.random.Generator, area: float) -> np.ndarray | None:
    """Polygon vertices ``(K, 2)`` centred on 0 with the given area (None: a circle)."""
    if name == "circle":
        return None
    if name == "square":
        h = math.sqrt(area) / 2
        points = np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
        period = 90.0
    elif name == "triangle":
        radius = math.sqrt(area * 4 / (3 * math.sqrt(3)))
        angles = np.deg2rad([90.0, 210.0, 330.0])
        points = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        period = 120.0
    elif name == "cross":
        t = rng.uniform(0.28, 0.4)  # arm thickness / arm length
        half = math.sqrt(area / (2 * t - t * t)) / 2
        w = t * half
        points = np.array(
            [
                (w, half), (w, w), (half, w), (half, -w), (w, -w), (w, -half),
                (-w, -half), (-w, -w), (-half, -w), (-half, w), (-w, w), (-w, half),
            ]
        )  # fmt: skip
        period = 90.0
    else:
        raise ValueError(f"unknown demo class {name!r}")
    theta = math.radians(rng.uniform(0, period))
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def _object_alpha(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    area = rng.uniform(*AREA_RANGE) * size * size
    points = _outline(name, rng, area)
    if points is None:
        r = math.sqrt(area / math.pi)
        lo, hi = np.array([-r, -r]), np.array([r, r])
    else:
        lo, hi = points.min(axis=0), points.max(axis=0)
    centre = np.array([rng.uniform(1 - lo[i], size - 1 - hi[i]) for i in range(2)])
    k = _SUPERSAMPLE
    canvas = Image.new("L", (size * k, size * k), 0)
    draw = ImageDraw.Draw(canvas)
    if points is None:
        x, y = centre * k
        draw.ellipse((x - r * k, y - r * k, x + r * k, y + r * k), fill=255)
    else:
        draw.polygon([(float(x), float(y)) for x, y in (points + centre) * k], fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255


def _foreground(rng: np.random.Generator, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha / max(float(alpha.sum()), 1e-6)
    bg_mean = (bg * weight[..., None]).sum(axis=(0, 1))
    best, best_d = rng.random(3), -1.0
    for _ in range(30):
        candidate = rng.random(3)
        d = float(np.linalg.norm(candidate - bg_mean))
        if d > best_d:
            best, best_d = candidate, d
        if d >= _MIN_CONTRAST:
            break
    size = bg.shape[0]
    fg = np.broadcast_to(best.astype(np.float32), (size, size, 3)).copy()
    style = rng.random()
    if style < 0.2:  # shading across the object
        u, _ = _rotated(rng, size)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        fg = fg * (0.75 + 0.5 * t[..., None])
    elif style < 0.4:  # speckle texture
        fg = fg + rng.normal(0.0, 0.06, size=fg.shape)
    return np.clip(fg, 0, 1).astype(np.float32)
