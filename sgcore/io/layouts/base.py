"""What every input layout shares: the shard, sample and batch types, the protocol, the input root."""

from __future__ import annotations

import io
import math
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from fsspec.spec import AbstractFileSystem

from sgcore.errors import ConfigError
from sgcore.io._fs import join, open_input, read_bytes, url_to_fs
from sgcore.io.labels import LabelsFile


@dataclass(frozen=True, kw_only=True)
class ShardSpec:
    """One unit of work: which files (or rows), relative to the input root.

    Attributes:
        shard_id: names the output part (``part-<shard_id>.parquet``).
        kind: the layout, ``images``, ``webdataset`` or ``parquet``.
        root: URL the members are relative to.
        members: image paths (images: a :class:`~sgcore.io.layouts.names.Names` range
            of the planned listing, which is a tuple once sent to a task); the tar or Parquet file (webdataset, parquet:
            its rows are the range ``first_row``..``stop_row``, never listed one by
            one, so that the plan holds no object per image).
        file: the tar/Parquet file, relative to ``root``.
        count: number of images when known (None for a tar that could not be scanned).
        first_row, stop_row: the shard's range of the file's images: Parquet rows,
            or a tar's image samples in order; ``stop_row=None`` reads to the end
            (and checks that a tar ends as one does).
        row_groups: the Parquet row groups holding that range.
        offset: where the tar's sample ``first_row`` starts (its first header), so
            that the reader seeks there (None: read from the start; a compressed tar).
        repeats: (sample index, occurrence) of the samples in range whose key came
            earlier in the tar (a split tar; a whole tar's reader finds them itself).
        split: the file is cut into several shards (its ids are ``<n>-<k>``).
        image_column, label_column, id_column: Parquet columns (None: detected).
        labels: per-member labels from a labels file (images layout).
        labels_url: the labels file, read by the decode task (tar/Parquet layouts).
        labels_sha256: its sha256 as the planner read it; the decode task's read must match.
        content: a hash of the size and modification stamp (mtime, S3 ETag) of the
            shard's input files as listed; recorded in its part, so that a resume
            notices replaced bytes under the same names. A range of a file carries
            the file's identity: the range follows from the file and the settings,
            and the plan's fingerprint (over :meth:`planned_ids`) holds it too.
    """

    shard_id: str
    kind: str
    root: str
    members: Sequence[str]
    file: str | None = None
    count: int | None = None
    row_groups: tuple[int, ...] | None = None
    first_row: int = 0
    stop_row: int | None = None
    offset: int | None = None
    repeats: tuple[tuple[int, int], ...] | None = None
    split: bool = False
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    labels: tuple[str | None, ...] | None = None
    labels_url: str | None = None
    labels_sha256: str | None = None
    content: str | None = None  # identity of the input bytes (see listing.content_identity)

    @property
    def size(self) -> int:
        """Images in the shard (1 for a tar whose count is not known before reading it)."""
        return self.count if self.count is not None else len(self.members)

    def planned_ids(self) -> Iterator[str]:
        """The ids the plan gives the shard's images, in order, one at a time (none are held).

        Image files: their paths. A Parquet range: ``<file>#<row>`` per row (the
        ids without an id column). A tar: its path, or for one range of a split tar
        :func:`range_id` (sample keys are only known once the tar is read).
        """
        if self.kind == "parquet" and self.file is not None and self.row_groups is not None:
            stop = self.stop_row if self.stop_row is not None else self.first_row + self.size
            return (f"{self.file}#{r}" for r in range(self.first_row, stop))
        if self.kind == "webdataset" and self.split:
            return iter((range_id(shard_file(self), self.first_row, self.stop_row, self.size),))
        return iter(self.members)


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One input image before decoding; ``error`` set when it could not be read.

    ``data`` is the encoded image, or pixels decoded already (a batch of
    ``ray.data.read_images``); None with ``error`` set.
    """

    image_id: str
    source: str
    label: str | None
    data: bytes | np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Root:
    """An input root resolved once: its filesystem, its path there, and its URL.

    Shard members are relative to it; their filesystem paths and their URLs (for
    ``source`` and messages) are formed here, the same way for every layout.
    """

    fs: AbstractFileSystem
    path: str
    url: str

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None) -> Root:
        fs, path = url_to_fs(url, storage_options)
        return cls(fs=fs, path=path, url=url)

    def path_of(self, rel: str) -> str:
        return posixpath.join(self.path, rel) if self.path else rel

    def url_of(self, rel: str) -> str:
        return join(self.url, rel)

    def open(self, rel: str, *, buffer_size: int = 1 << 20) -> io.BufferedReader:
        """A retrying, buffered reader over the file ``rel`` (see :func:`sgcore.io.open_input`)."""
        return open_input(self.fs, self.path_of(rel), url=self.url_of(rel), buffer_size=buffer_size)


def open_url(url: str, storage_options: dict[str, Any] | None, *,
             buffer_size: int = 1 << 20) -> io.BufferedReader:
    """A retrying, buffered reader over the object at ``url``."""
    fs, path = url_to_fs(url, storage_options)
    return open_input(fs, path, url=url, buffer_size=buffer_size)


def read_url(url: str, storage_options: dict[str, Any] | None) -> bytes:
    """The whole object at ``url``, transient errors retried."""
    fs, path = url_to_fs(url, storage_options)
    return read_bytes(fs, path, url=url)


def range_id(rel: str, first: int, stop: int | None, count: int) -> str:
    """The id of an error row standing for a range of a split file whose ids are unknown: ``<file>#<first>-<stop>``.

    No image id has this form: a tar's sample ids are ``<tar>/<key>``, a Parquet
    row's ``<file>#<row>``.
    """
    return f"{rel}#{first}-{stop if stop is not None else first + count}"


def shard_file(spec: ShardSpec) -> str:
    """The tar/Parquet file of a one-file shard, relative to its root."""
    return spec.file or spec.members[0]


def hidden(name: str) -> bool:
    """Whether a file is one every Parquet reader skips (``_`` or ``.`` prefix)."""
    return posixpath.basename(name).startswith((".", "_"))


@dataclass(frozen=True, kw_only=True)
class Listing:
    """An input as listed: its root, the files under it and their stamps.

    Attributes:
        root: the longest common folder of the input's files.
        names: every file, relative to ``root``, sorted (of any layout or none); a
            folder's listing is a compact :class:`~sgcore.io.layouts.names.Names`.
        stamps: name -> size and modification stamp, where the store gives one.
        shown: the input as given (URLs joined with ``, ``), for messages.
    """

    root: Root
    names: Sequence[str]
    stamps: Mapping[str, str]
    shown: str


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    """The planning settings of :func:`sgcore.io.plan_shards`, checked there.

    Attributes:
        labels: the labels file as read once by the planner (None without one).
        labels_url: its URL, which tar/Parquet shards carry to their decode task.
    """

    shard_size: int
    limit: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    labels: LabelsFile | None = None
    labels_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Batch:
    """A batch of rows as a Ray Data reader gives them, in one form for every layout.

    Attributes:
        columns: column name -> its values, one per row.
        schema: the batch's Arrow schema, where it came as a ``pyarrow.Table``
            (column types, Hugging Face metadata); None for numpy and pandas
            batches, whose column types are read off their values.
        size: rows in the batch.
    """

    columns: dict[str, Sequence[Any]]
    schema: pa.Schema | None
    size: int

    @classmethod
    def of(cls, batch: Any) -> Batch:
        """A batch in any of Ray Data's formats: a dict of arrays (numpy), a ``pyarrow.Table``, pandas.

        Raises:
            TypeError: any other object.
        """
        if isinstance(batch, Batch):
            return batch
        schema = None
        if isinstance(batch, Mapping):
            columns = dict(batch)
        elif isinstance(batch, pa.Table):
            schema = batch.schema
            columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        elif hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
            columns = {str(c): batch[c].to_numpy() for c in batch.columns}
        else:
            raise TypeError(f"a batch is a dict, pyarrow or pandas batch; got {type(batch).__name__}")
        size = len(next(iter(columns.values()))) if columns else 0
        return cls(columns=columns, schema=schema, size=size)

    def column(self, name: str, setting: str) -> Sequence[Any]:
        """The values of column ``name``, which the setting ``setting`` names.

        Raises:
            ConfigError: no such column, naming the batch's columns.
        """
        if name not in self.columns:
            raise ConfigError(f"{setting} {name!r} is not a column of the batch; columns: "
                              f"{', '.join(self.columns)}")
        return self.columns[name]


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """How a batch's rows become samples (the settings of :class:`sgcore.ray_data.SmoothGradMaps`).

    Attributes:
        root: the job's ``--input``: removed from the front of each row's path or
            id, so that image ids (and so seeds) equal the job's; None keeps them.
        image_column, label_column: as the job's options (None: the layout's rule).
        id_column: the column naming each row (``path``: Ray Data's ``include_paths``).
        storage_options: for images a row only names (a Hugging Face path struct).
    """

    root: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    id_column: str = "path"
    storage_options: dict[str, Any] | None = None


_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def relative_id(value: str, root: str | None) -> tuple[str, str | None]:
    """``value`` relative to ``root``, as the job names an input relative to ``--input``.

    Returns:
        (the relative path, None), or (``value``, why it is not under ``root``).
    """
    if root is None:
        return value, None
    base = _PROTOCOL.sub("", root).rstrip("/")
    path = _PROTOCOL.sub("", value)
    if path.startswith(base + "/") or not base:
        return path[len(base):].lstrip("/"), None
    return value, f"{value} is not under root {root}; set root to the folder the ids are relative to"


def batch_source(root: str | None, rel: str) -> str:
    """The URL of ``rel`` under ``root`` as the job writes it in ``source`` (local files by plain path)."""
    if root is None:
        return rel
    if root.startswith("file://"):
        root = root[len("file://"):]
    return f"{root.rstrip('/')}/{rel}"


def missing(value: Any) -> bool:
    """A value the row lacks: None, or the NaN that pandas fills in for it."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def scalar(value: Any) -> Any:
    """A numpy scalar as the Python value a Parquet reader gives (``np.int64(3)`` -> ``3``)."""
    return value.item() if isinstance(value, np.generic) else value


class Layout(Protocol):
    """One input layout: which files are its inputs, how they become shards and samples.

    Attributes:
        name: the ``--input-format`` value, and the ``kind`` of its shards.
        found: what its inputs are called in "no ... under URL" messages.
        counted: how a count of its inputs reads ("3 image file(s)").
    """

    name: str
    found: str
    counted: str

    def detects(self, name: str) -> bool:
        """Whether a listed file (relative to the root) counts as an input of this layout."""
        ...

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        """Cuts the listed inputs into shards with stable ids; checks the labels file against them.

        Raises:
            InputError: the inputs cannot be planned as asked (a missing column,
                repeated ids, a labels file that matches nothing).
        """
        ...

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        """Yields the shard's samples in order.

        An input that cannot be read or decoded (one of
        :data:`sgcore.io.failures.READ_ERRORS`) becomes a sample with an error;
        :class:`StorageUnavailable` and any other exception propagate.
        """
        ...

    def takes(self, batch: Batch) -> bool:
        """Whether a Ray Data batch looks like this layout's rows (under ``input_format="auto"``)."""
        ...

    def read_batch(self, batch: Batch, options: BatchOptions) -> Iterator[tuple[int, RawSample]]:
        """Yields (row of the batch, its sample): the rows :meth:`read` gives for the same inputs.

        The same rules as :meth:`read` (which rows are images, ids, labels), through
        the same functions; a row that is no input of the layout gives no sample.
        """
        ...

    def holds(self, source: str) -> bool:
        """Whether a result row's ``source`` names a member inside one of this layout's files."""
        ...

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        """The original image bytes behind a ``source`` (see :func:`sgcore.io.read_source`)."""
        ...


__all__ = ["Batch", "BatchOptions", "Layout", "Listing", "PlanOptions", "RawSample", "Root", "ShardSpec",
           "batch_source", "hidden", "missing", "open_url", "range_id", "read_url", "relative_id", "scalar",
           "shard_file"]
