"""The ``parquet`` layout: tables of images, one row per image, its bytes in a column.

The format: the image column is ``binary`` (or ``large_binary``), or a struct
with ``bytes`` and ``path`` fields as Hugging Face ``datasets`` writes its
``Image`` feature (a struct with only a ``path`` is read from that file,
relative to the table). Without ``--image-column`` the column is the only
such column, else the first of :data:`IMAGE_COLUMN_NAMES` among them; the
label column is ``--label-column``, else the first of
:data:`LABEL_COLUMN_NAMES`. An integer label column with Hugging Face
``ClassLabel`` metadata is turned into the class names.

Shards are row ranges ``(file, first row, stop row)`` planned from the footers
alone: a file of at most ``--shard-size`` rows is one shard (id ``<n>``, the
file's index in the listing); a larger one is cut at row-group boundaries into
runs of row groups holding >= ``--shard-size`` rows (ids ``<n>-<k>``), and a row
group of more than ``--shard-size`` rows into ranges of ``--shard-size`` rows,
so a shard holds fewer than 2 x ``--shard-size`` rows whatever the file. The
plan keeps no object per row (ids are formed by the decode task). Image id =
``<file path>#<row index>`` or the ``--id-column`` value; source =
``<file URL>#<row index>``; label = the label column, or the ``--labels`` file
(read by the decode task).

A Ray Data batch of a table (:meth:`ParquetTables.read_batch`) goes through
the same column rules and the same row conversion; its ids come from the id
column (a batch carries no row index).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgcore.errors import InputError
from sgcore.io._fs import join
from sgcore.io._retry import StorageUnavailable
from sgcore.io.failures import READ_ERRORS, STORAGE_ERRORS
from sgcore.io.labels import check_labels
from sgcore.io.layouts.base import (
    Batch,
    BatchOptions,
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
    batch_source,
    hidden,
    missing,
    open_url,
    read_url,
    relative_id,
    scalar,
    shard_file,
)

# ------------------------------------------------------------------ the format
PARQUET_EXTENSIONS = (".parquet", ".pq", ".parq")
# Preferred names when several columns could hold images.
IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes", "content")
LABEL_COLUMN_NAMES = ("label", "labels", "cls", "class")
_BATCH_ROWS = 64


@dataclass(frozen=True, kw_only=True)
class ParquetLayout:
    """What a Parquet input file holds: its rows per row group and resolved columns."""

    row_group_rows: tuple[int, ...]
    image_column: str
    label_column: str | None
    class_names: tuple[str, ...] | None = None


def is_parquet(name: str) -> bool:
    return name.lower().endswith(PARQUET_EXTENSIONS)


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        return "bytes" in names
    return False


def resolve_columns(
    schema: pa.Schema, *, image_column: str | None, label_column: str | None, url: str
) -> tuple[str, str | None]:
    """Picks the image and label columns of a file (given names are checked, else guessed).

    Raises:
        InputError: a named column is missing or of the wrong type, or no (or
            more than one, none of them conventionally named) image column.
    """
    return choose_columns(schema.names, lambda n: _is_image_type(schema.field(n).type),
                          lambda n: str(schema.field(n).type), image_column=image_column,
                          label_column=label_column, where=url)


def choose_columns(
    names: Sequence[str],
    is_image: Callable[[str], bool],
    type_of: Callable[[str], str],
    *,
    image_column: str | None,
    label_column: str | None,
    where: str,
    flag: Callable[[str], str] = lambda setting: "--" + setting.replace("_", "-"),
) -> tuple[str, str | None]:
    """The rule for the image and label columns, for a file's schema and a batch alike.

    Args:
        names: the columns, in order.
        is_image: whether a column holds images (binary, or a struct with ``bytes``).
        type_of: a column's type, for messages.
        where: the file's URL (or ``the batch``), for messages.
        flag: how messages spell a setting (``--image-column``, ``image_column``).

    Raises:
        InputError: a named column is missing or of the wrong type, or no (or
            more than one, none of them conventionally named) image column.
    """
    image_flag, label_flag = flag("image_column"), flag("label_column")
    if image_column is not None:
        if image_column not in names:
            raise InputError(f"{image_flag} {image_column!r} is not in {where}; columns: {', '.join(names)}")
        if not is_image(image_column):
            raise InputError(f"{image_flag} {image_column!r} in {where} must be binary or a struct with "
                             f"'bytes'; got {type_of(image_column)}")
    else:
        candidates = [n for n in names if is_image(n)]
        preferred = [n for n in IMAGE_COLUMN_NAMES if n in candidates]
        if len(candidates) == 1:
            image_column = candidates[0]
        elif preferred:
            image_column = preferred[0]
        elif candidates:
            raise InputError(
                f"{where} has several binary columns ({', '.join(candidates)}); choose one with {image_flag}"
            )
        else:
            raise InputError(
                f"{where} has no image-bytes column (binary, or a struct with 'bytes'); columns: "
                f"{', '.join(names)}; use {image_flag}"
            )
    if label_column is not None:
        if label_column not in names:
            raise InputError(f"{label_flag} {label_column!r} is not in {where}; columns: {', '.join(names)}")
    else:
        label_column = next((n for n in LABEL_COLUMN_NAMES if n in names and n != image_column), None)
    return image_column, label_column


def hf_class_names(schema: pa.Schema, column: str | None) -> tuple[str, ...] | None:
    """Class names of a Hugging Face ``ClassLabel`` column, from the schema metadata."""
    if column is None or not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    try:
        info = json.loads(schema.metadata[b"huggingface"])
        feature = info.get("info", {}).get("features", {}).get(column, {})
    except (ValueError, AttributeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return tuple(str(n) for n in names) if isinstance(names, list) else None


def check_id_column(schema: pa.Schema, id_column: str | None, url: str) -> None:
    """Raises InputError when ``id_column`` is given and not a column of ``schema``."""
    if id_column is not None and id_column not in schema.names:
        raise InputError(f"--id-column {id_column!r} is not in {url}; columns: {', '.join(schema.names)}")


def inspect_file(f: Any, *, image_column: str | None, label_column: str | None, url: str,
                 id_column: str | None = None) -> ParquetLayout:
    """Reads only the footer of an open Parquet file.

    Raises:
        InputError: a named column (image, label or id) is missing, or no image column.
    """
    pf = pq.ParquetFile(f)
    schema = pf.schema_arrow
    image, label = resolve_columns(schema, image_column=image_column, label_column=label_column, url=url)
    check_id_column(schema, id_column, url)
    rows = tuple(pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups))
    return ParquetLayout(row_group_rows=rows, image_column=image, label_column=label,
                         class_names=hf_class_names(schema, label))


def read_ids(f: Any, id_column: str) -> pa.ChunkedArray:
    """The values of ``id_column`` as text, in file order (only that column is read; Arrow memory, no
    Python object per row)."""
    column = pq.ParquetFile(f).read(columns=[id_column]).column(0)
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def group_starts(pf: pq.ParquetFile) -> list[int]:
    """The file-level index of each row group's first row, and the file's row count last."""
    starts = [0]
    for i in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    return starts


def iter_rows(
    f: Any,
    *,
    row_groups: tuple[int, ...] | None,
    first_row: int,
    stop_row: int | None,
    image_column: str | None,
    label_column: str | None,
    id_column: str | None,
    url: str,
) -> Iterator[tuple[int, str | None, Any, str | None, str | None]]:
    """Yields ``(row index in file, id or None, image bytes or None, image path or None, label)``.

    Yields the rows ``first_row`` (a file-level index) to ``stop_row`` (exclusive;
    None: to the end), reading only ``row_groups`` (None: the row groups holding
    that range, found from the footer). Rows are read in batches of a few dozen,
    so memory stays bounded whatever the row-group size; batches before
    ``first_row`` in its row group are read but not converted.
    """
    pf = pq.ParquetFile(f)
    schema = pf.schema_arrow
    image, label = resolve_columns(schema, image_column=image_column, label_column=label_column, url=url)
    check_id_column(schema, id_column, url)
    names = hf_class_names(schema, label)
    columns = [c for c in dict.fromkeys([image, label, id_column]) if c is not None]
    starts = group_starts(pf)
    if row_groups is None:
        stop = starts[-1] if stop_row is None else stop_row
        row_groups = tuple(g for g in range(len(starts) - 1) if starts[g] < stop and starts[g + 1] > first_row)
    if not row_groups:
        return
    index = starts[row_groups[0]]
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=list(row_groups), columns=columns):
        if index + batch.num_rows <= first_row:
            index += batch.num_rows
            continue
        images = batch.column(columns.index(image)).to_pylist()
        labels = batch.column(columns.index(label)).to_pylist() if label is not None else None
        ids = batch.column(columns.index(id_column)).to_pylist() if id_column is not None else None
        for j, value in enumerate(images):
            if stop_row is not None and index >= stop_row:
                return
            if index < first_row:
                index += 1
                continue
            yield (index, *row_values(value, labels[j] if labels is not None else None,
                                      ids[j] if ids is not None else None, names))
            index += 1


def row_values(image: Any, label: Any, id_: Any, class_names: tuple[str, ...] | None
               ) -> tuple[str | None, Any, str | None, str | None]:
    """One row's ``(id or None, image bytes or None, image path or None, label or None)``.

    The one conversion of a row, from a file (:func:`iter_rows`) and from a batch
    (:meth:`ParquetTables.read_batch`): a Hugging Face struct gives its bytes and
    path, a ``ClassLabel`` index its class name, ids and labels are text.
    """
    data, path = (image.get("bytes"), image.get("path")) if isinstance(image, Mapping) else (image, None)
    if class_names is not None and isinstance(label, int):
        # ClassLabel stores -1 for "no label".
        label = class_names[label] if 0 <= label < len(class_names) else None
    return (None if id_ is None else str(id_), data, path, None if label is None else str(label))


# ------------------------------------------------------------------ the layout
_FOOTER_THREADS = 16
_BUFFER = 1 << 16  # Parquet reads jump between footer and column chunks: small reads


class ParquetTables:
    """Parquet files, one row per image."""

    name = "parquet"
    found = ".parquet files"
    counted = ".parquet file(s)"

    def detects(self, name: str) -> bool:
        return is_parquet(name) and not hidden(name)

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
                for index, id_, data, img_path, label in iter_rows(
                    f, row_groups=spec.row_groups, first_row=spec.first_row, stop_row=spec.stop_row,
                    image_column=spec.image_column, label_column=spec.label_column,
                    id_column=spec.id_column, url=url,
                ):
                    done.add(index)
                    yield _sample(id_ if id_ is not None else f"{rel}#{index}", f"{url}#{index}", label,
                                  data, img_path, table=url, row=f"row {index} of {url}",
                                  storage_options=storage_options)
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

    def takes(self, batch: Batch) -> bool:
        return True  # any table: the layout of a batch that no other layout takes

    def read_batch(self, batch: Batch, options: BatchOptions) -> Iterator[tuple[int, RawSample]]:
        columns, schema = batch.columns, batch.schema
        if schema is not None:  # a pyarrow batch: the file's rule on its schema
            binary = {n for n in columns if _is_image_type(schema.field(n).type)}
            types = {n: str(schema.field(n).type) for n in columns}
        else:  # numpy or pandas: the same rule on the values
            binary = {n for n, values in columns.items() if _holds_images(values)}
            types = {n: _value_type(values) for n, values in columns.items()}
        image, label = choose_columns(list(columns), binary.__contains__, types.__getitem__,
                                      image_column=options.image_column, label_column=options.label_column,
                                      where="the batch", flag=lambda setting: setting)
        images = columns[image]
        labels = columns[label] if label is not None else None
        ids = batch.column(options.id_column, "id_column")
        names = hf_class_names(schema, label) if schema is not None else None
        tables = columns.get("path")  # read_parquet(include_paths=True): the table of each row
        for i in range(batch.size):
            id_, data, img_path, lab = row_values(
                _present(images[i]), _present(labels[i]) if labels is not None else None, _present(ids[i]),
                names)
            image_id, error = relative_id("" if id_ is None else id_, options.root)
            source = batch_source(options.root, image_id) if error is None else image_id
            if error is not None:
                yield i, RawSample(image_id=image_id, source=source, label=lab, error=error)
                continue
            table = str(tables[i]) if tables is not None and not missing(tables[i]) else None
            yield i, _sample(image_id, source, lab, data, img_path, table=table, row=source,
                             storage_options=options.storage_options)

    def holds(self, source: str) -> bool:
        base, _, row = source.rpartition("#")
        return bool(base) and is_parquet(base) and row.isdigit()

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        base, _, frag = source.rpartition("#")
        row = int(frag)
        with open_url(base, storage_options, buffer_size=_BUFFER) as f:
            for index, _id, data, img_path, _label in iter_rows(
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


def _sample(image_id: str, source: str, label: str | None, data: Any, img_path: str | None, *,
            table: str | None, row: str, storage_options: dict[str, Any] | None) -> RawSample:
    """The sample of one row, from a file or from a batch: its bytes, its image file, or an error.

    Args:
        table: the table's URL, which an image path is relative to (None: unknown).
        row: the row, for messages.
    """
    if data is None and img_path:
        return _read_referenced(table, img_path, image_id, source, label, storage_options)
    if data is None:
        return RawSample(image_id=image_id, source=source, label=label, error=f"no image bytes in {row}")
    return RawSample(image_id=image_id, source=source, label=label,
                     data=bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data)


def _read_referenced(url: str | None, img_path: str, image_id: str, source: str, label: str | None,
                     storage_options: dict[str, Any] | None) -> RawSample:
    """A Hugging Face image struct with only a path: read that file (relative to the table)."""
    if url is None and "://" not in img_path and not img_path.startswith("/"):
        return RawSample(image_id=image_id, source=source, label=label,
                         error=f"the image of {source} is a path relative to its table ({img_path}); "
                               "read the table with include_paths=True and give id_column")
    target_url = _referenced_url(url or "", img_path)
    try:
        return RawSample(image_id=image_id, source=source, label=label,
                         data=read_url(target_url, storage_options))
    except StorageUnavailable:
        raise
    except STORAGE_ERRORS as e:
        return RawSample(image_id=image_id, source=source, label=label,
                         error=f"cannot read {target_url} (image path of {source}): {type(e).__name__}: {e}")


def _present(value: Any) -> Any:
    """A batch value as a file row gives it: NaN (pandas' missing value) is None, numpy scalars are Python's."""
    return None if missing(value) else scalar(value)


def _holds_images(values: Sequence[Any]) -> bool:
    """Whether a column of a schema-less batch holds image bytes: its first present value is binary,
    or a struct with ``bytes`` (the rule of :func:`_is_image_type`, on values)."""
    first = next((v for v in values if not missing(v)), None)
    return isinstance(first, bytes | bytearray | memoryview) or (isinstance(first, Mapping) and "bytes" in first)


def _value_type(values: Sequence[Any]) -> str:
    first = next((v for v in values if not missing(v)), None)
    return type(first).__name__


def _rows(spec: ShardSpec) -> range:
    """The file-level rows of a Parquet shard planned from its footer (empty for an unread footer)."""
    if spec.row_groups is None:
        return range(0)
    return range(spec.first_row, spec.stop_row if spec.stop_row is not None else spec.first_row + spec.size)


def _plan(root: Root, files: list[str], options: PlanOptions, *, kind: str) -> list[ShardSpec]:
    """Row ranges of each file, from its footer (see the module docstring)."""
    id_column = options.id_column
    columns = dict(image_column=options.image_column, label_column=options.label_column, id_column=id_column)

    def inspect(rel: str) -> ParquetLayout | BaseException:
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                return inspect_file(f, url=root.url_of(rel), **columns)
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
    def ids_of(rel: str) -> pa.ChunkedArray | None:
        try:
            with root.open(rel, buffer_size=_BUFFER) as f:
                return read_ids(f, id_column)
        except READ_ERRORS:
            return None  # unreadable: that file becomes an error row at decode

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        ids: list[tuple[str, pa.ChunkedArray]] = []
        left = limit
        for rel, values in zip(files, pool.map(ids_of, files), strict=True):
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


__all__ = [
    "IMAGE_COLUMN_NAMES",
    "LABEL_COLUMN_NAMES",
    "PARQUET_EXTENSIONS",
    "ParquetLayout",
    "ParquetTables",
    "check_id_column",
    "choose_columns",
    "group_starts",
    "hf_class_names",
    "inspect_file",
    "is_parquet",
    "iter_rows",
    "read_ids",
    "resolve_columns",
    "row_values",
]
