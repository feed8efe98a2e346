"""The audit's one pass over the parts: each part file is read once and fed to every section.

A *feed* is anything with ``add(rows: PartRows, start: int)`` (``start``: the
position of the part's first ok row among all ok rows, in shard order). The
sections keep what they need of each part (statistics, features, a bounded
sample of maps) and never read a part themselves; :class:`Index` and
:class:`SampleFeed` are the feeds every audit has.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from sgcore.results import PartRows, Results, read_part_rows
from sgcore.seeds import image_seed


class Feed(Protocol):
    def add(self, rows: PartRows, start: int) -> None: ...


def scan(results: Results, feeds: Iterable[Feed], *, on_part: Callable[[PartRows], None] | None = None) -> int:
    """Reads every part of ``results`` once, in shard order, and gives each to every feed.

    Returns:
        The number of ok rows.
    """
    feeds = list(feeds)
    start = 0
    for part in results.parts:
        rows = read_part_rows(results, part)
        for feed in feeds:
            feed.add(rows, start)
        start += len(rows.meta)
        if on_part is not None:
            on_part(rows)
    return start


class Index:
    """The ok rows' metadata (no maps) with a ``part`` column, and the error rows, in shard order."""

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self.errors: list[dict[str, Any]] = []
        self.map_shape: tuple[int, int] | None = None
        self._table: pa.Table | None = None

    def add(self, rows: PartRows, start: int) -> None:
        meta = rows.meta
        self._tables.append(meta.append_column("part", pa.array([rows.part] * len(meta), pa.string())))
        self.errors.extend(rows.errors)
        if len(meta) and rows.maps.ndim == 3:
            self.map_shape = (int(rows.maps.shape[1]), int(rows.maps.shape[2]))
        self._table = None

    @property
    def table(self) -> pa.Table:
        """Every ok row's metadata, as :func:`sgcore.results.read_index` returns it."""
        if self._table is None:
            self._table = pa.concat_tables(self._tables, promote_options="permissive")
        return self._table

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables)


class SampleFeed:
    """The ``k`` ok rows that :func:`sgcore.audit.results.hash_sample` draws, with their maps, kept as the pass goes.

    The draw is the ``k`` smallest (hash of seed and id, id): a bounded heap
    gives the same rows as sorting every id, holding ``k`` maps at most.
    """

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed
        self._heap: list[tuple[tuple[int, str], int, np.ndarray]] = []  # max-heap by key via negation

    def add(self, rows: PartRows, start: int) -> None:
        if not self.k:
            return
        ids = rows.meta.column("image_id").to_pylist()
        for i, image_id in enumerate(ids):
            key = (image_seed(self.seed, image_id), image_id)
            neg = (-key[0], _Neg(key[1]))
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, (neg, start + i, rows.maps[i].copy()))  # type: ignore[arg-type]
            elif neg > self._heap[0][0]:
                heapq.heapreplace(self._heap, (neg, start + i, rows.maps[i].copy()))  # type: ignore[arg-type]

    def rows(self) -> list[int]:
        """Positions of the drawn rows among all ok rows, sorted (as ``hash_sample`` returns them)."""
        return sorted(r for _, r, _ in self._heap)

    def maps(self) -> np.ndarray:
        """Their maps ``(k, H, W)`` in the order of :meth:`rows`."""
        by_row = {r: m for _, r, m in self._heap}
        rows = self.rows()
        return np.stack([by_row[r] for r in rows]) if rows else np.zeros((0, 0, 0), np.float32)


class _Neg:
    """A string that orders in reverse, so that a min-heap keeps the largest (hash, id) on top."""

    __slots__ = ("s",)

    def __init__(self, s: str) -> None:
        self.s = s

    def __lt__(self, other: _Neg) -> bool:
        return self.s > other.s

    def __gt__(self, other: _Neg) -> bool:
        return self.s < other.s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Neg) and self.s == other.s

    def __hash__(self) -> int:
        return hash(self.s)
