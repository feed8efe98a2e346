"""Labels from a side file: ``--labels FILE.csv|.parquet`` mapping image path -> label."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sgcore.errors import InputError
from sgcore.io._fs import read_bytes, url_to_fs

# Column names tried, in order, when the file does not name them our way.
KEY_COLUMNS = ("image_id", "path", "file", "filename", "file_name", "image", "key", "source", "url",
               "id")
LABEL_COLUMNS = ("label", "class", "cls", "category", "target")

log = logging.getLogger("sgcore")


def read_table(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    what: str,
    string_columns: tuple[str, ...] = (),
    hint: str = "",
) -> pa.Table:
    """Reads a small side table (CSV with a header row, or Parquet by extension).

    Args:
        what: how errors name the file, e.g. ``"labels file"``.
        string_columns: CSV columns kept as text (ids such as ``0007``).
        hint: appended to error messages: how to fix the file.

    Raises:
        InputError: the file is missing, unreadable or not a CSV/Parquet table.
    """
    return _read_table(url, storage_options, what=what, string_columns=string_columns, hint=hint)[0]


def _read_table(url: str, storage_options: dict[str, Any] | None, *, what: str,
                string_columns: tuple[str, ...] = (), hint: str = "") -> tuple[pa.Table, str]:
    """:func:`read_table`, and the sha256 of the bytes it parsed (one read)."""
    suffix = f"; {hint}" if hint else ""
    fs, path = url_to_fs(url, storage_options)
    try:
        data = read_bytes(fs, path, url=url)
    except InputError:
        raise  # missing credentials: the message already names the URL and the fix
    except FileNotFoundError as e:
        raise InputError(f"{what} {url} does not exist{suffix}") from e
    except OSError as e:
        raise InputError(f"cannot read {what} {url}: {e}{suffix}") from e
    sha = hashlib.sha256(data).hexdigest()
    try:
        if path.lower().endswith((".parquet", ".pq")):
            return pq.read_table(io.BytesIO(data)), sha
        options = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in string_columns}, strings_can_be_null=False
        )
        return pacsv.read_csv(io.BytesIO(data), convert_options=options), sha
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{what} {url} is not a readable CSV/Parquet table: {e}{suffix}") from e


@dataclass(frozen=True, kw_only=True)
class LabelsFile:
    """A labels file as read: the mapping, which of its columns gave keys and labels, and
    the sha256 of its bytes (what identifies it: the job's config hash includes it)."""

    url: str
    mapping: dict[str, str]
    key_column: str
    label_column: str
    columns: tuple[str, ...]
    sha256: str | None = None

    def describe(self) -> str:
        """Which columns were used, for error messages."""
        return (f"path column {self.key_column!r}, label column {self.label_column!r}; "
                f"columns: {', '.join(self.columns)}")

    def describe_ids(self) -> str:
        """An id of the file, for error messages."""
        first = next(iter(self.mapping), None)
        return f"file ids e.g. {first!r}" if first is not None else "the file has no labelled rows"


def load_labels(url: str, storage_options: dict[str, Any] | None = None) -> LabelsFile:
    """Reads a path -> label table (CSV with a header row, or Parquet).

    The key column is the first of ``image_id, path, file, filename, file_name,
    image, key, source, url, id`` present (else the first column); the label column
    the first of ``label, class, cls, category, target`` (else the next column).
    Empty cells are no label. Keys are matched against the image id (path relative
    to the input root) and then against the full source URL. CSV keys and labels
    in those columns stay text (``0007`` is not the number 7).

    Raises:
        InputError: the file is missing, unreadable, or has fewer than two columns.
    """
    table, sha = _read_table(url, storage_options, what="labels file",
                             string_columns=KEY_COLUMNS + LABEL_COLUMNS)
    names = table.column_names
    expected = (f"a path column (one of {', '.join(KEY_COLUMNS)}) and a label column "
                f"(one of {', '.join(LABEL_COLUMNS)})")
    if len(names) < 2:
        raise InputError(f"labels file {url} needs {expected}; found columns: {', '.join(names) or 'none'}")
    key = next((c for c in KEY_COLUMNS if c in names), None)
    label = next((c for c in LABEL_COLUMNS if c in names and c != key), None)
    key = key or next(c for c in names if c != label)
    label = label or next(c for c in names if c != key)
    keys = table.column(key).to_pylist()
    values = table.column(label).to_pylist()
    mapping = {str(k): str(v) for k, v in zip(keys, values, strict=True) if k not in (None, "")
               and v not in (None, "")}
    return LabelsFile(url=url, mapping=mapping, key_column=key, label_column=label, columns=tuple(names),
                      sha256=sha)


def read_labels(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """The path -> label mapping of a labels file (see :func:`load_labels`).

    Raises:
        InputError: the file is missing, unreadable, or has fewer than two columns.
    """
    return load_labels(url, storage_options).mapping


@functools.lru_cache(maxsize=4)
def _cached(url: str, options_json: str, sha256: str | None) -> dict[str, str]:
    table = load_labels(url, json.loads(options_json))
    if sha256 is not None and table.sha256 != sha256:
        raise InputError(
            f"the labels table {url} changed while the job ran (sha256 {sha256[:12]}... -> "
            f"{table.sha256[:12]}...); its rows would mix two labelings: rerun with --overwrite "
            "once it no longer changes"
        )
    return table.mapping


def cached_labels(url: str, storage_options: dict[str, Any] | None = None, *,
                  sha256: str | None = None) -> dict[str, str]:
    """:func:`read_labels`, read once per process (decode tasks of many shards share it).

    Args:
        sha256: the content the planner read (``ShardSpec.labels_sha256``): another
            content is refused, never used (a cached copy is kept per content).

    Raises:
        InputError: the file is unusable, or its content is not ``sha256``.
    """
    return _cached(url, json.dumps(storage_options or {}, sort_keys=True, default=str), sha256)


def lookup(labels: dict[str, str], image_id: str, source: str) -> str | None:
    """The label of one image: by id (relative path), else by full URL."""
    found = labels.get(image_id)
    return found if found is not None else labels.get(source)


def check_labels(labels: LabelsFile, images: list[tuple[str, str]]) -> None:
    """Refuses a labels file that labels none of ``images`` ((id, source) pairs); warns if some miss.

    Raises:
        InputError: not one image id (or source URL) is a key of the file.
    """
    if not images:
        return
    missed = [image_id for image_id, source in images if lookup(labels.mapping, image_id, source) is None]
    if not missed:
        return
    n = len(images)
    if len(missed) == n:
        raise InputError(
            f"labels file {labels.url}: 0 of {n} image ids matched ({labels.describe_ids()}, image ids "
            f"e.g. {images[0][0]!r}); its path column must hold image ids or full URLs "
            f"({labels.describe()})"
        )
    log.warning("labels file %s: %d of %d image ids matched; the other %d get no label (e.g. %r)",
                labels.url, n - len(missed), n, len(missed), missed[0])


__all__ = ["KEY_COLUMNS", "LABEL_COLUMNS", "LabelsFile", "cached_labels", "check_labels", "load_labels",
           "lookup", "read_labels"]
