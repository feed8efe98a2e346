"""Per-class view: mean map, map statistics and extreme examples per class.

Answers "which classes does the model explain by the background?": a class
whose maps put much mass on the border band, or spread it evenly (high
entropy, low Gini), is explained by context rather than by an object.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from sgcore.audit.metrics import border_mask, border_share, entropy, gini


def map_statistics(maps: np.ndarray, *, border_width: float = 0.125) -> dict[str, np.ndarray]:
    """Entropy (normalized), Gini index and border share of each map ``(N, H, W)``."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W); got {maps.shape}")
    if maps.shape[0] == 0:
        return {"entropy": np.zeros(0), "gini": np.zeros(0), "border_share": np.zeros(0)}
    return {
        "entropy": np.asarray(entropy(maps)),
        "gini": np.asarray(gini(maps)),
        "border_share": np.asarray(border_share(maps, width_fraction=border_width)),
    }


@dataclass(kw_only=True)
class _ClassState:
    count: int = 0
    map_sum: np.ndarray | None = None
    stats: dict[str, list[float]] = field(default_factory=lambda: {"entropy": [], "gini": [], "border_share": []})
    # (gini, image_id, map) heaps: the most and the least concentrated.
    most: list[tuple[float, str, np.ndarray]] = field(default_factory=list)
    least: list[tuple[float, str, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ClassSummary:
    """One class's view (see :class:`ClassView`)."""

    name: str
    count: int
    mean_map: np.ndarray
    entropy: float
    gini: float
    border_share: float
    most_concentrated: list[tuple[str, float, np.ndarray]]
    least_concentrated: list[tuple[str, float, np.ndarray]]


class ClassView:
    """Accumulates maps part by part; memory holds one mean map and 2k examples per class.

    Each map is scaled to unit mass before it enters the class mean, so that
    images with large gradients do not dominate it. "Concentrated" is ranked
    by the Gini index of the map.

    Args:
        examples: how many most and least concentrated examples to keep per class.
        border_width: border band width as a fraction of the shorter side.
    """

    def __init__(self, *, examples: int = 3, border_width: float = 0.125) -> None:
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
            raise ValueError(f"examples must be a non-negative int; got {examples!r}")
        self.examples = examples
        self.border_width = border_width
        self._classes: dict[str, _ClassState] = {}

    def add(self, labels: list[str], image_ids: list[str], maps: np.ndarray) -> dict[str, np.ndarray]:
        """Adds maps ``(N, H, W)`` with their class names; returns their statistics."""
        maps = np.asarray(maps, dtype=np.float64)
        if not (len(labels) == len(image_ids) == maps.shape[0]):
            raise ValueError(
                f"labels, image_ids and maps must have the same length; "
                f"got {len(labels)}, {len(image_ids)} and {maps.shape[0]}"
            )
        stats = map_statistics(maps, border_width=self.border_width)
        mags = np.abs(maps)
        totals = mags.reshape(len(maps), -1).sum(axis=1)
        for i, (label, image_id) in enumerate(zip(labels, image_ids, strict=True)):
            state = self._classes.setdefault(label, _ClassState())
            unit = mags[i] / totals[i] if totals[i] > 0 else np.full_like(mags[i], 1.0 / mags[i].size)
            state.map_sum = unit if state.map_sum is None else state.map_sum + unit
            state.count += 1
            for key in state.stats:
                state.stats[key].append(float(stats[key][i]))
            g = float(stats["gini"][i])
            if self.examples:
                _push(state.most, (g, image_id, maps[i].astype(np.float32)), self.examples)
                _push(state.least, (-g, image_id, maps[i].astype(np.float32)), self.examples)
        return stats

    def summaries(self) -> list[ClassSummary]:
        """One summary per class, sorted by class name."""
        out = []
        for name in sorted(self._classes):
            s = self._classes[name]
            if s.map_sum is None:  # every class listed got at least one map
                continue
            # A class with fewer than 2k images: the most concentrated half, then the least of
            # the rest, so that no image shows as both (one image is only "most").
            most = sorted(s.most, key=lambda t: -t[0])[: min(self.examples, (s.count + 1) // 2)]
            shown = {i for _, i, _ in most}
            least = [t for t in sorted(s.least, key=lambda t: -t[0]) if t[1] not in shown]
            out.append(
                ClassSummary(
                    name=name,
                    count=s.count,
                    mean_map=(s.map_sum / s.count).astype(np.float32),
                    entropy=float(np.mean(s.stats["entropy"])),
                    gini=float(np.mean(s.stats["gini"])),
                    border_share=float(np.mean(s.stats["border_share"])),
                    most_concentrated=[(i, g, m) for g, i, m in most],
                    least_concentrated=[(i, -g, m) for g, i, m in least],
                )
            )
        return out

    def border_area(self, height: int, width: int) -> float:
        """The border band's share of the image: what a position-blind map scores."""
        return float(border_mask(height, width, width_fraction=self.border_width).mean())


def _push(heap: list[tuple[float, str, np.ndarray]], item: tuple[float, str, np.ndarray], k: int) -> None:
    """Keeps the k items with the largest (score, image_id).

    Image ids are unique, so tuple comparison never reaches the maps.
    """
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)
