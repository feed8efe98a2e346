"""The ``parquet`` layout: tables with an image-bytes column (see :mod:`sgcore.io.parquet_input`).

One shard per file, or per run of row groups in large files; image id =
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
            rows = [m.rsplit("#", 1) for s in shards for m in s.members if "#" in m]
            check_labels(options.labels, [(f"{rel}#{row}", f"{root.url_of(rel)}#{row}") for rel, row in rows])
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
            pending = [m for m in spec.members if "#" in m and int(m.rsplit("#", 1)[1]) not in done]
            if pending:
                # The rows are known from the plan: one error row per image that was not read
                # (named <file>#<row>, as the plan names them, when the id column was not reached).
                for m in pending:
                    yield RawSample(image_id=m, source=f"{url}#{m.rsplit('#', 1)[1]}", label=None,
                                    error=message)
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
                f, row_groups=None, first_row=0, stop_row=row + 1, image_column=image_column,
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


def _plan(root: Root, files: list[str], options: PlanOptions, *, kind: str) -> list[ShardSpec]:
    """One shard per file, or per run of row groups holding >= ``shard_size`` rows."""
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

    def read_ids(rel: str) -> list[Any]:
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                return parquet_input.read_ids(f, id_column)
        except READ_ERRORS:
            return []  # unreadable: that file becomes an error row at decode

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        layouts = list(pool.map(inspect, files))
        if id_column is not None:
            _check_unique_ids(list(pool.map(read_ids, files)), files, id_column, options.limit)
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
        groups = _group_row_groups(layout.row_group_rows, options.shard_size)
        pieces = []
        for groups_, first, n in groups:
            stop = first + n
            if left is not None:
                stop = min(stop, first + left)
                left -= stop - first
            pieces.append((groups_, first, stop))
            if left is not None and left <= 0:
                break
        for j, (groups_, first, stop) in enumerate(pieces):
            sid = f"{i:05d}" if len(groups) == 1 else f"{i:05d}-{j:04d}"
            shards.append(ShardSpec(
                shard_id=sid, members=tuple(f"{rel}#{r}" for r in range(first, stop)), file=rel,
                count=stop - first, row_groups=groups_, first_row=first, stop_row=stop, **common))
    return [s for s in shards if s.size > 0 or s.count is None]


def _check_unique_ids(ids: list[list[Any]], files: list[str], id_column: str, limit: int | None) -> None:
    """Refuses an ``id_column`` whose values repeat among the planned rows (ids name outputs).

    Raises:
        InputError: naming the repeated values, how often, and where.
    """
    where: dict[str, list[str]] = {}
    left = limit
    for rel, values in zip(files, ids, strict=True):
        for row, v in enumerate(values):
            if left is not None and left <= 0:
                break
            if v is not None:
                where.setdefault(str(v), []).append(f"{rel}#{row}")
            if left is not None:
                left -= 1
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    if repeated:
        shown = "; ".join(f"{k!r} {len(v)} times ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                          for k, v in list(repeated.items())[:3])
        raise InputError(
            f"--id-column {id_column!r} repeats values: {shown}; {len(repeated)} value(s) repeat in all. "
            "Image ids must be unique: choose a column of unique values, or drop --id-column "
            "(ids are then <file>#<row>)"
        )


def _group_row_groups(rows: tuple[int, ...], shard_size: int) -> list[tuple[tuple[int, ...], int, int]]:
    """Consecutive row groups gathered until they hold >= shard_size rows: (groups, first row, rows)."""
    out: list[tuple[tuple[int, ...], int, int]] = []
    cur: list[int] = []
    first = start = n = 0
    for g, r in enumerate(rows):
        if not cur:
            first = start
        cur.append(g)
        n += r
        start += r
        if n >= shard_size:
            out.append((tuple(cur), first, n))
            cur, n = [], 0
    if cur:
        out.append((tuple(cur), first, n))
    return out or [((), 0, 0)]


__all__ = ["ParquetTables"]
