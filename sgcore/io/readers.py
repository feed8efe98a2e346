"""Listing an input into shards, and reading a shard's samples: the dispatch over the layouts.

Layouts (chosen with ``input_format`` or detected from the listing), one module
each under :mod:`sgcore.io.layouts`:

- ``images``: a prefix of image files; a shard is a fixed-size group of files
  in sorted order; image id = the path relative to the input root; label =
  the parent folder, or the ``labels`` file.
- ``webdataset``: ``.tar`` shards (see :mod:`sgcore.io.layouts.webdataset`); one shard
  per tar, or per range of ``shard_size`` samples of a larger tar (planned from
  one scan of its headers); image id = ``<tar path>/<sample key>`` (``%`` and
  ``#`` of a key escaped).
- ``parquet``: tables with an image-bytes column (see
  :mod:`sgcore.io.layouts.parquet`); one shard per file, or per row range of a
  larger file (runs of row groups, or ranges of a large row group), planned
  from the footers; image id = ``<file path>#<row index>`` or the ``id_column``.

Inputs may be a prefix, a single file, a glob pattern, or a comma-separated
list of those (:mod:`sgcore.io.listing`); paths are relative to the longest
common folder. Shard ids and image ids depend only on the input listing and
settings, so the same input gives the same ids on every run. Each object read
is retried on transient errors (:mod:`sgcore.io._retry`); an object that cannot
be read or decoded (:data:`sgcore.io.failures.READ_ERRORS`: missing, refused,
damaged) becomes an error row, never a crashed job; a store that keeps failing
transiently past the retry budget raises :class:`StorageUnavailable`, which
fails the shard (it is retried, not committed as error rows), and so does any
other exception (a bug is not an error row).

A Ray Data batch (:func:`decode_batch`, for :class:`sgcore.ray_data.SmoothGradMaps`)
goes through its layout's ``read_batch``, the labels file and the decoding of
:func:`decode_shard`: the same code, so the same rows as the job's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgcore.errors import InputError
from sgcore.input_formats import LAYOUT_CLASSES, layout_class
from sgcore.io._fs import url_to_fs
from sgcore.io._retry import retry_call
from sgcore.io.decode import DEFAULT_MAX_PIXELS, Geometry, decode_array, decode_image
from sgcore.io.failures import STORAGE_ERRORS, DecodeError
from sgcore.io.labels import LabelsFile, cached_labels, load_labels, lookup
from sgcore.io.layouts import (
    Batch,
    BatchOptions,
    Layout,
    Listing,
    PlanOptions,
    RawSample,
    ShardSpec,
)
from sgcore.io.listing import content_identity, list_input

# The registry: --input-format name -> layout, in the order messages list them (the
# table of sgcore.input_formats, which the job's config takes its choices from).
LAYOUTS: dict[str, Layout] = {name: layout_class(name)() for name in LAYOUT_CLASSES}
INPUT_FORMATS = ("auto", *LAYOUTS)


@dataclass(slots=True, kw_only=True)
class Record:
    """One input image as the model's worker takes it: who it is, and where its pixels are.

    Attributes:
        image_id, source, label: as the result row will hold them.
        index: the row of :attr:`DecodedShard.images` holding its pixels; -1
            when it has none (then ``error`` says why).
        error: why the image cannot be explained (unreadable, not decodable).
        geometry: how the decoded image maps back onto the original (None without pixels).
    """

    image_id: str
    source: str
    label: str | None = None
    index: int = -1
    error: str | None = None
    geometry: Geometry | None = None


@dataclass(kw_only=True)
class DecodedShard:
    """A shard (or a Ray Data batch) ready for the model: the decoded pixels plus one record per sample."""

    shard_id: str
    images: np.ndarray  # (N_ok, H, W, 3) uint8
    records: list[Record] = field(default_factory=list)
    content: str | None = None  # the spec's input identity, recorded in the part

    @property
    def num_ok(self) -> int:
        return int(self.images.shape[0])


def plan_shards(
    url: str | Sequence[str],
    *,
    shard_size: int,
    limit: int | None = None,
    input_format: str = "auto",
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    labels: str | LabelsFile | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ShardSpec]:
    """Lists the input and cuts it into shards.

    Args:
        url: a prefix, a file, a glob pattern, or several of those (a sequence,
            or one string separated by commas).
        shard_size: images per shard: image files per group; a tar with more
            samples, or a Parquet file with more rows, is cut into several
            shards (ranges of samples; runs of row groups or row ranges), each
            read on its own, with the same image ids as the whole file.
        limit: only the first ``limit`` images, in listing order.
        input_format: ``auto``, ``images``, ``webdataset`` or ``parquet``.
        image_column, label_column, id_column: Parquet columns.
        labels: CSV/Parquet file mapping image path -> label, or that file as
            already read (:func:`~sgcore.io.labels.load_labels`).
        storage_options: fsspec options (credentials, endpoint).

    Files of other types are skipped, not failed.

    A labels file is read here, once: one that labels none of the planned images
    is refused, one that labels only some of them logs a warning with the count
    (tar samples are only checked for a matching ``<tar path>/`` prefix, and ids
    from an ``id_column`` not at all, as neither is known before reading).

    Raises:
        InputError: the input (or one URL of a list) does not exist, holds nothing
            usable, or mixes layouts under ``auto``; a named Parquet column is
            missing; the labels file is unusable or matches no image; storage
            credentials are missing or refused (:class:`StorageAuthError`).
        ValueError: a bad ``input_format``, ``shard_size`` or ``limit``.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}; got {input_format!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer; got {shard_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer; got {limit!r}")
    listing = list_input(url, storage_options)
    layout = _choose_layout(listing, input_format)
    # Read (and so check) the labels file here, before any work is scheduled.
    table = (load_labels(labels, storage_options) if labels else None) if isinstance(labels, str) else labels
    options = PlanOptions(shard_size=shard_size, limit=limit, image_column=image_column,
                          label_column=label_column, id_column=id_column, labels=table,
                          labels_url=table.url if table is not None else None)
    shards = layout.plan(listing, options)
    sha = table.sha256 if table is not None else None
    return [dataclasses.replace(s, content=content_identity(s, listing.stamps),
                                labels_sha256=sha if s.labels_url else None) for s in shards]


def _choose_layout(listing: Listing, input_format: str) -> Layout:
    names, url = listing.names, listing.shown
    found = {name: sum(1 for n in names if layout.detects(n)) for name, layout in LAYOUTS.items()}
    if input_format != "auto":
        if not found[input_format]:
            raise InputError(f"no {LAYOUTS[input_format].found} under {url}; found {len(names)} other file(s)")
        return LAYOUTS[input_format]
    present = [k for k, v in found.items() if v]
    if not present:
        *first, last = (layout.found for layout in LAYOUTS.values())
        raise InputError(f"no {', '.join(first)} or {last} under {url}; found {len(names)} other file(s)")
    if len(present) > 1:
        counts = ", ".join(f"{found[k]} {layout.counted}" for k, layout in LAYOUTS.items())
        raise InputError(
            f"input {url} mixes layouts: {counts}; choose one with --input-format {'|'.join(LAYOUTS)} "
            "(files of the other layouts are then skipped)"
        )
    return LAYOUTS[present[0]]


def read_shard(spec: ShardSpec, storage_options: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """Yields the shard's samples in order; unreadable ones carry an error."""
    samples = LAYOUTS[spec.kind].read(spec, storage_options)
    if spec.labels_url:  # tar/Parquet shards: sample ids are known only now
        yield from _labelled(samples, spec.labels_url, storage_options, sha256=spec.labels_sha256)
    else:
        yield from samples


def _labelled(samples: Iterable[RawSample], labels: str, storage_options: dict[str, Any] | None,
              *, sha256: str | None = None) -> Iterator[RawSample]:
    """The samples with their label from the labels file (by image id, else source).

    With ``sha256`` (what the planner read), another content of the table is refused.
    """
    mapping = cached_labels(labels, storage_options, sha256=sha256)
    for s in samples:
        yield RawSample(image_id=s.image_id, source=s.source, data=s.data, error=s.error,
                        label=lookup(mapping, s.image_id, s.source))


def batch_layout(batch: Batch, input_format: str = "auto") -> Layout:
    """The layout of a Ray Data batch: ``input_format``, else the first that takes its columns.

    ``{path, bytes}`` or ``{path, image}`` (``read_binary_files``, ``read_images``
    with ``include_paths=True``) are image files, ``__key__`` (``read_webdataset``)
    WebDataset samples, any other batch a table's rows.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}; got {input_format!r}")
    if input_format != "auto":
        return LAYOUTS[input_format]
    return next(layout for layout in LAYOUTS.values() if layout.takes(batch))


def read_batch(batch: Any, options: BatchOptions, *, input_format: str = "auto",
               labels: str | None = None) -> Iterator[tuple[int, RawSample]]:
    """Yields (row of the batch, its sample) for the rows that are inputs of the batch's layout.

    Args:
        batch: a Ray Data batch (dict of arrays, ``pyarrow.Table`` or pandas).
        labels: a labels file, looked up as :func:`read_shard` looks it up.

    Raises:
        ConfigError, InputError: a named column is not in the batch, or no image column.
    """
    batch = Batch.of(batch)
    rows = list(batch_layout(batch, input_format).read_batch(batch, options))
    if labels:
        samples = _labelled((s for _, s in rows), labels, options.storage_options)
        rows = [(i, s) for (i, _), s in zip(rows, samples, strict=True)]
    yield from rows


def read_source(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    image_column: str | None = None,
) -> bytes:
    """The original image bytes behind a result row's ``source``, for every layout.

    ``source`` is an image URL, ``<tar URL>#<member>`` or ``<parquet URL>#<row>``.

    Raises:
        InputError: the tar member or Parquet row is not there.
        OSError: the object cannot be read (after retries), naming the URL.
    """
    layout = next((layout for layout in LAYOUTS.values() if layout.holds(source)), None)
    if layout is None or _is_file(source, storage_options):
        layout = LAYOUTS["images"]  # an image file named like a member (x.tar#0.png): a file is a file
    return layout.read_source(source, storage_options, image_column=image_column)


def _is_file(url: str, storage_options: dict[str, Any] | None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    try:
        return bool(retry_call(lambda: fs.isfile(path), what=f"stat {url}"))
    except STORAGE_ERRORS:  # cannot tell: read it as the member it looks like
        return False


def decode_shard(
    spec: ShardSpec,
    *,
    resize_size: int | tuple[int, int],
    crop_size: int | tuple[int, int],
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict[str, Any] | None = None,
    **geometry: Any,
) -> DecodedShard:
    """Reads and decodes a whole shard; a bad sample becomes an error record.

    ``geometry``: the other keywords of :func:`decode_image` (resize mode,
    fill, channels, crop offset).
    """
    images, records = decode_samples(read_shard(spec, storage_options), resize_size=resize_size,
                                     crop_size=crop_size, interpolation=interpolation,
                                     max_pixels=max_pixels, **geometry)
    return DecodedShard(shard_id=spec.shard_id, images=images, records=records, content=spec.content)


def decode_batch(batch: Any, options: BatchOptions, *, input_format: str = "auto", labels: str | None = None,
                 **decode: Any) -> tuple[DecodedShard, list[int]]:
    """A Ray Data batch read (:func:`read_batch`) and decoded as :func:`decode_shard` decodes a shard.

    Returns:
        The records and pixels (``shard_id`` None: a batch is no shard), and the
        row of the batch each record comes from.
    """
    rows = list(read_batch(batch, options, input_format=input_format, labels=labels))
    images, records = decode_samples((s for _, s in rows), **decode)
    return DecodedShard(shard_id=None, images=images, records=records), [i for i, _ in rows]  # type: ignore[arg-type]


def decode_samples(
    samples: Iterable[RawSample],
    *,
    resize_size: int | tuple[int, int],
    crop_size: int | tuple[int, int],
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **geometry: Any,
) -> tuple[np.ndarray, list[Record]]:
    """The pixels ``(N_ok, H, W, C)`` of the samples that decode, and one record per sample."""
    arrays: list[np.ndarray] = []
    records: list[Record] = []
    kwargs = dict(resize_size=resize_size, crop_size=crop_size, interpolation=interpolation,
                  max_pixels=max_pixels, **geometry)
    for sample in samples:
        rec = Record(image_id=sample.image_id, source=sample.source, label=sample.label, error=sample.error)
        if sample.error is None:
            try:
                arr, geo = _decode(sample.data, kwargs)
            except DecodeError as e:
                rec.error = f"{e} ({sample.source})"
            else:
                rec.index = len(arrays)
                rec.geometry = geo
                arrays.append(arr)
        records.append(rec)
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    images = (
        np.stack(arrays) if arrays else np.zeros((0, ch, cw, geometry.get("channels", 3)), dtype=np.uint8)
    )
    return images, records


def _decode(data: bytes | np.ndarray | None, kwargs: dict[str, Any]) -> tuple[np.ndarray, Geometry]:
    """Encoded bytes, or pixels decoded already (``read_images``), at the model's size."""
    if isinstance(data, np.ndarray) and data.dtype != object and data.ndim >= 2:
        return decode_array(data, **kwargs)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        data = data.tobytes()
    if isinstance(data, bytes | bytearray | memoryview):
        return decode_image(bytes(data), **kwargs)
    if data is None:
        raise DecodeError("no image in this row (null)")
    raise DecodeError(f"cannot use a {type(data).__name__} as an image (decoded uint8 array or bytes)")


__all__ = [
    "INPUT_FORMATS",
    "LAYOUTS",
    "Batch",
    "BatchOptions",
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "Record",
    "ShardSpec",
    "batch_layout",
    "decode_batch",
    "decode_samples",
    "decode_shard",
    "plan_shards",
    "read_batch",
    "read_shard",
    "read_source",
]
