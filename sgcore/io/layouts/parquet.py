"""The ``parquet`` layout: tables with an image-bytes column (see :mod:`sgcore.io.parquet_input`).

Shards are row ranges ``(file, first row, stop row)`` planned from the footers
alone: a file of at most ``--shard-size`` rows is one shard (id ``<n>``, the
file's index in the listing); a larger one is cut at row-group boundaries into
runs of row groups holding >= ``--shard-size`` rows (ids ``<n>-<k>``), and a row
group of more than ``--shard-size`` rows into ranges of ``--shard-size`` rows,
so a shard holds fewer than 2 x ``--shard-size`` rows whatever the file. The
plan keeps no object per row (ids are formed by the decode task). Image id =
``<file path>#<row index>`` or the ``--id-column`` value; source =
``<file URL>#<row index>``; label = the label column, or the ``--labels`` file
(read by the decode task). A Hugging Face image struct with only a ``path`` is
read from that file, relative to the table.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sgcore.errors import InputError
from sgcore.io import parquet_input
from sgcore.io._fs import join
from sgcore.io._retry import StorageUnavailable
from sgcore.io.failures import READ_ERRORS, STORAGE_ERRORS
from sgcore.io.labels import check_labels
from sgcore.io.layouts.base import (
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
    hidden,
    open_url,
    read_url,
    shard_file,
)

_FOOTER_THREADS = 16
_BUFFER = 1 << 16  # Parquet reads jump between footer and column chunks: small reads


class ParquetTables:
    """Parquet files, one row per image."""

    name = "parquet"
    found = ".parquet files"
    counted = ".parquet file(s)"

    def detects(self, name: str) -> bool:
        return parquet_input.is_parquet(name) and not hidden(name)

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        root = listing.root
        files = [n for n in listing.names if self.detects(n)]
        shards = _plan(root, files, options, kind=self.name)
        if options.labels is not None and options.id_column is None:
            # The labels file holds a key per row already: these pairs cost no more than it.
            check_labels(options.labels, [(i, f"{root.url_of(s.file)}#{i.rsplit('#', 1)[1]}")
                                          for s in shards if s.row_groups is not None and s.file is not None
                                          for i in s.planned_ids()])
        return shards

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        root = Root.of(spec.root, storage_options)
        rel = shard_file(spec)
        url = root.url_of(rel)
        done: set[int] = set()
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                for index, id_, data, img_path, label in parquet_input.iter_rows(
                    f, row_groups=spec.row_groups, first_row=spec.first_row, stop_row=spec.stop_row,
                    image_column=spec.image_column, label_column=spec.label_column,
                    id_column=spec.id_column, url=url,
                ):
                    done.add(index)
                    image_id = id_ if id_ is not None else f"{rel}#{index}"
                    source = f"{url}#{index}"
                    if data is None and img_path:
                        yield _read_referenced(url, img_path, image_id, source, label, storage_options)
                    elif data is None:
                        yield RawSample(image_id=image_id, source=source, label=label,
                                        error=f"no image bytes in row {index} of {url}")
                    else:
                        yield RawSample(image_id=image_id, source=source, label=label, data=bytes(data))
        except StorageUnavailable:
            raise
        except (InputError, *READ_ERRORS) as e:  # InputError: the file's columns changed since the plan
            message = f"cannot read {url}: {type(e).__name__}: {e}"
            pending = [r for r in _rows(spec) if r not in done]
            if pending:
                # The rows are known from the plan: one error row per image that was not read
                # (named <file>#<row>, as the plan names them, when the id column was not reached).
                for r in pending:
                    yield RawSample(image_id=f"{rel}#{r}", source=f"{url}#{r}", label=None, error=message)
            else:
                yield RawSample(image_id=rel if not done else f"{rel}#rest", source=url, label=None,
                                error=message)

    def holds(self, source: str) -> bool:
        base, _, row = source.rpartition("#")
        return bool(base) and parquet_input.is_parquet(base) and row.isdigit()

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        base, _, frag = source.rpartition("#")
        row = int(frag)
        with open_url(base, storage_options, buffer_size=_BUFFER) as f:
            for index, _id, data, img_path, _label in parquet_input.iter_rows(
                f, row_groups=None, first_row=row, stop_row=row + 1, image_column=image_column,
                label_column=None, id_column=None, url=base,
            ):
                if index == row:
                    if data is None and img_path:
                        return read_url(_referenced_url(base, img_path), storage_options)
                    if data is None:
                        raise InputError(f"no image bytes in row {row} of {base}")
                    return bytes(data)
        raise InputError(f"{base} has no row {row}")


def _referenced_url(table_url: str, img_path: str) -> str:
    """The URL of an image path stored in a table: a URL, an absolute path, or relative to the table."""
    if "://" in img_path or img_path.startswith("/"):
        return img_path
    return join(posixpath.dirname(table_url), img_path)


def _read_referenced(url: str, img_path: str, image_id: str, source: str, label: str | None,
                     storage_options: dict[str, Any] | None) -> RawSample:
    """A Hugging Face image struct with only a path: read that file (relative to the table)."""
    target_url = _referenced_url(url, img_path)
    try:
        return RawSample(image_id=image_id, source=source, label=label,
                         data=read_url(target_url, storage_options))
    except StorageUnavailable:
        raise
    except STORAGE_ERRORS as e:
        return RawSample(image_id=image_id, source=source, label=label,
                         error=f"cannot read {target_url} (image path of {source}): {type(e).__name__}: {e}")


def _rows(spec: ShardSpec) -> range:
    """The file-level rows of a Parquet shard planned from its footer (empty for an unread footer)."""
    if spec.row_groups is None:
        return range(0)
    return range(spec.first_row, spec.stop_row if spec.stop_row is not None else spec.first_row + spec.size)


def _plan(root: Root, files: list[str], options: PlanOptions, *, kind: str) -> list[ShardSpec]:
    """Row ranges of each file, from its footer (see the module docstring)."""
    id_column = options.id_column
    columns = dict(image_column=options.image_column, label_column=options.label_column, id_column=id_column)

    def inspect(rel: str) -> parquet_input.ParquetLayout | BaseException:
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                return parquet_input.inspect_file(f, url=root.url_of(rel), **columns)
        except InputError:
            raise
        except READ_ERRORS as e:  # unreadable footer: one error row for the file, at decode
            return e

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        layouts = list(pool.map(inspect, files))
    if id_column is not None:
        _check_unique_ids(root, files, id_column, options.limit)
    common = dict(kind=kind, root=root.url, labels_url=options.labels_url, **columns)
    shards: list[ShardSpec] = []
    left = options.limit
    for i, (rel, layout) in enumerate(zip(files, layouts, strict=True)):
        if left is not None and left <= 0:
            break
        if isinstance(layout, BaseException):
            shards.append(ShardSpec(shard_id=f"{i:05d}", members=(rel,), file=rel, count=1, **common))
            if left is not None:
                left -= 1
            continue
        ranges = _row_ranges(layout.row_group_rows, options.shard_size)
        pieces = []
        for groups_, first, stop in ranges:
            if left is not None:
                stop = min(stop, first + left)
                left -= stop - first
            pieces.append((groups_, first, stop))
            if left is not None and left <= 0:
                break
        for j, (groups_, first, stop) in enumerate(pieces):
            split = len(ranges) > 1
            shards.append(ShardSpec(
                shard_id=f"{i:05d}-{j:04d}" if split else f"{i:05d}", members=(rel,), file=rel,
                count=stop - first, row_groups=groups_, first_row=first, stop_row=stop, split=split, **common))
    return [s for s in shards if s.size > 0 or s.count is None]


def _check_unique_ids(root: Root, files: list[str], id_column: str, limit: int | None) -> None:
    """Refuses an ``id_column`` whose values repeat among the planned rows (ids name outputs).

    The values stay Arrow arrays (a few bytes a row, no Python object per row);
    only the repeated ones are looked up, to name them.

    Raises:
        InputError: naming the repeated values, how often, and where.
    """
    def read_ids(rel: str) -> pa.ChunkedArray | None:
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                return parquet_input.read_ids(f, id_column)
        except READ_ERRORS:
            return None  # unreadable: that file becomes an error row at decode

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        ids: list[tuple[str, pa.ChunkedArray]] = []
        left = limit
        for rel, values in zip(files, pool.map(read_ids, files), strict=True):
            if values is None:
                continue
            if left is not None:
                values = values.slice(0, max(left, 0))
                left -= len(values)
            ids.append((rel, values))
    if not ids:
        return
    everything = pa.chunked_array([c for _, v in ids for c in v.chunks], type=pa.string())
    counts = pc.value_counts(everything.drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(repeated) == 0:
        return
    where: dict[str, list[str]] = {}
    for rel, values in ids:  # only the repeated values' rows, in file order
        hits = pc.is_in(values, value_set=repeated)
        for row in pc.indices_nonzero(hits.combine_chunks() if isinstance(hits, pa.ChunkedArray) else hits
                                      ).to_pylist():
            where.setdefault(values[row].as_py(), []).append(f"{rel}#{row}")
    shown = "; ".join(f"{k!r} {len(v)} times ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                      for k, v in list(where.items())[:3])
    raise InputError(
        f"--id-column {id_column!r} repeats values: {shown}; {len(where)} value(s) repeat in all. "
        "Image ids must be unique: choose a column of unique values, or drop --id-column "
        "(ids are then <file>#<row>)"
    )


def _row_ranges(rows: tuple[int, ...], shard_size: int) -> list[tuple[tuple[int, ...], int, int]]:
    """A file's shards as (row groups, first row, stop row).

    Consecutive row groups are gathered until they hold >= ``shard_size`` rows
    (as sgcore always cut them); a row group of more than ``shard_size`` rows is
    cut into ranges of ``shard_size`` rows, so that no shard holds ``2 x
    shard_size`` rows or more.
    """
    out: list[tuple[tuple[int, ...], int, int]] = []
    cur: list[int] = []
    first = start = 0
    for g, r in enumerate(rows):
        if r > shard_size:
            if cur:
                out.append((tuple(cur), first, start))
                cur = []
            out += [((g,), a, min(a + shard_size, start + r)) for a in range(start, start + r, shard_size)]
            start += r
            continue
        if not cur:
            first = start
        cur.append(g)
        start += r
        if start - first >= shard_size:
            out.append((tuple(cur), first, start))
            cur = []
    if cur:
        out.append((tuple(cur), first, start))
    return out or [((), 0, 0)]


__all__ = ["ParquetTables"]
