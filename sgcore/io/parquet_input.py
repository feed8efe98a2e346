"""Parquet tables of images: one row per image, its bytes in a column.

The image column is ``binary`` (or ``large_binary``), or a struct with
``bytes`` and ``path`` fields as Hugging Face ``datasets`` writes its ``Image``
feature. An integer label column with Hugging Face ``ClassLabel`` metadata is
turned into the class names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgcore.errors import InputError

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
    """Picks the image and label columns (given names are checked, else guessed).

    Raises:
        InputError: a named column is missing or of the wrong type, or no (or
            more than one, none of them conventionally named) image column.
    """
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            raise InputError(f"--image-column {image_column!r} is not in {url}; columns: {', '.join(names)}")
        t = schema.field(image_column).type
        if not _is_image_type(t):
            raise InputError(
                f"--image-column {image_column!r} in {url} must be binary or a struct with 'bytes'; got {t}"
            )
    else:
        candidates = [n for n in names if _is_image_type(schema.field(n).type)]
        preferred = [n for n in IMAGE_COLUMN_NAMES if n in candidates]
        if len(candidates) == 1:
            image_column = candidates[0]
        elif preferred:
            image_column = preferred[0]
        elif candidates:
            raise InputError(
                f"{url} has several binary columns ({', '.join(candidates)}); choose one with --image-column"
            )
        else:
            raise InputError(
                f"{url} has no image-bytes column (binary, or a struct with 'bytes'); columns: "
                f"{', '.join(names)}; use --image-column"
            )
    if label_column is not None:
        if label_column not in names:
            raise InputError(f"--label-column {label_column!r} is not in {url}; columns: {', '.join(names)}")
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
            data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
            lab = labels[j] if labels is not None else None
            if names is not None and isinstance(lab, int):
                # ClassLabel stores -1 for "no label".
                lab = names[lab] if 0 <= lab < len(names) else None
            yield (
                index,
                None if ids is None or ids[j] is None else str(ids[j]),
                data,
                path,
                None if lab is None else str(lab),
            )
            index += 1


__all__ = [
    "IMAGE_COLUMN_NAMES",
    "LABEL_COLUMN_NAMES",
    "PARQUET_EXTENSIONS",
    "ParquetLayout",
    "check_id_column",
    "group_starts",
    "hf_class_names",
    "inspect_file",
    "is_parquet",
    "iter_rows",
    "read_ids",
    "resolve_columns",
]
