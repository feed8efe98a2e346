"""A listing in compact form: sorted names and their stamps in Arrow arrays, and ranges of it.

A million listed files as Python strings (plus a dict of their stamps) cost the
driver about a kilobyte each; in two Arrow string arrays they cost their bytes
plus an offset. A shard of image files holds a :class:`Names` range of such a
table, not a tuple of strings, and becomes a plain tuple only when it is sent to
a task (pickled), so the driver holds no object per image.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa

# Names turned into Python strings at a time when a range is iterated.
_BATCH = 4096


class FileTable:
    """Names (sorted, relative to the input root) and their stamps (None where unknown), aligned.

    Built from ``(name, stamp)`` pairs in chunks, so that a streamed listing never
    holds more than one chunk of Python strings.
    """

    def __init__(self, names: pa.ChunkedArray, stamps: pa.ChunkedArray):
        self.names = names
        self.stamps = stamps

    @classmethod
    def build(cls, pairs: Iterable[tuple[str, str | None]], *, chunk: int = 1 << 16) -> FileTable:
        """A table of ``(name, stamp)`` pairs given in sorted order.

        Raises:
            UnicodeEncodeError, pa.ArrowException: a name Arrow cannot hold (an
                undecodable file name); the caller lists such an input the old way.
        """
        names: list[pa.Array] = []
        stamps: list[pa.Array] = []
        batch_n: list[str] = []
        batch_s: list[str | None] = []
        for name, stamp in pairs:
            batch_n.append(name)
            batch_s.append(stamp)
            if len(batch_n) >= chunk:
                names.append(pa.array(batch_n, pa.string()))
                stamps.append(pa.array(batch_s, pa.string()))
                batch_n, batch_s = [], []
        if batch_n or not names:
            names.append(pa.array(batch_n, pa.string()))
            stamps.append(pa.array(batch_s, pa.string()))
        return cls(pa.chunked_array(names, pa.string()), pa.chunked_array(stamps, pa.string()))

    @classmethod
    def of(cls, names: Sequence[str], stamps: Mapping[str, str]) -> FileTable:
        """The table of a listing's names and stamps (the table itself when they are one)."""
        if isinstance(names, Names) and names.start == 0 and names.stop == len(names.table):
            return names.table
        return cls.build((n, stamps.get(n)) for n in names)

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: Callable[[str], bool]) -> FileTable:
        """The rows whose name ``keep`` accepts (this table when it accepts all)."""
        mask = np.fromiter((keep(n) for n in Names(self)), dtype=bool, count=len(self))
        if mask.all():
            return self
        m = pa.array(mask)
        return FileTable(self.names.filter(m), self.stamps.filter(m))

    def view(self, start: int = 0, stop: int | None = None) -> Names:
        return Names(self, start, len(self) if stop is None else stop)


class Names(Sequence[str]):
    """The names of rows ``start``..``stop`` of a :class:`FileTable`, read as a sequence of strings.

    Equal to any sequence of the same strings (a tuple included); pickles as a
    plain tuple, so that a task receives its shard's names and not the table.
    """

    __slots__ = ("start", "stop", "table")

    def __init__(self, table: FileTable, start: int = 0, stop: int | None = None):
        self.table = table
        self.start = start
        self.stop = len(table) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Names: ...

    def __getitem__(self, i: int | slice) -> str | Names:
        n = len(self)
        if isinstance(i, slice):
            a, b, step = i.indices(n)
            if step != 1:
                return tuple(self)[i]  # type: ignore[return-value]
            return Names(self.table, self.start + a, self.start + max(a, b))
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("Names index out of range")
        return self.table.names[self.start + i].as_py()

    def __iter__(self) -> Iterator[str]:
        for a in range(self.start, self.stop, _BATCH):
            yield from self.table.names.slice(a, min(_BATCH, self.stop - a)).to_pylist()

    def stamps(self) -> list[str | None]:
        """The stamps of these names, in order."""
        return self.table.stamps.slice(self.start, len(self)).to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Names | tuple):  # like the tuple it stands for: never equal to a list
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        head = ", ".join(repr(n) for n in self[:3])
        return f"Names({len(self)}: {head}{', ...' if len(self) > 3 else ''})"

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (tuple(self),)


class Stamps(Mapping[str, str]):
    """name -> stamp over a :class:`FileTable` (looked up by bisection of the sorted names)."""

    def __init__(self, table: FileTable):
        self.table = table

    def _index(self, name: str) -> int | None:
        names = self.table.names
        i = bisect.bisect_left(_Lazy(names), name)
        return i if i < len(names) and names[i].as_py() == name else None

    def __getitem__(self, name: str) -> str:
        i = self._index(name)
        stamp = self.table.stamps[i].as_py() if i is not None else None
        if stamp is None:
            raise KeyError(name)
        return stamp

    def __iter__(self) -> Iterator[str]:
        view = self.table.view()
        return (n for n, s in zip(view, _stamps_of(view), strict=True) if s is not None)

    def __len__(self) -> int:
        return len(self.table) - self.table.stamps.null_count


def _stamps_of(view: Names) -> Iterator[str | None]:
    for a in range(view.start, view.stop, _BATCH):
        yield from view.table.stamps.slice(a, min(_BATCH, view.stop - a)).to_pylist()


class _Lazy(Sequence[str]):
    """An Arrow string array indexed one string at a time (for bisection)."""

    def __init__(self, names: pa.ChunkedArray):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: Any) -> Any:
        return self.names[i].as_py()


__all__ = ["FileTable", "Names", "Stamps"]
