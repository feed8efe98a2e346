"""Listing an input into shards, and reading a shard's samples: the dispatch over the layouts.

Layouts (chosen with ``input_format`` or detected from the listing), one module
each under :mod:`sgcore.io.layouts`:

- ``images``: a prefix of image files; a shard is a fixed-size group of files
  in sorted order; image id = the path relative to the input root; label =
  the parent folder, or the ``labels`` file.
- ``webdataset``: ``.tar`` shards (see :mod:`sgcore.io.webdataset`); one shard
  per tar, or per range of ``shard_size`` samples of a larger tar (planned from
  one scan of its headers); image id = ``<tar path>/<sample key>`` (``%`` and
  ``#`` of a key escaped).
- ``parquet``: tables with an image-bytes column (see
  :mod:`sgcore.io.parquet_input`); one shard per file, or per row range of a
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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgcore.errors import InputError
from sgcore.io._fs import url_to_fs
from sgcore.io._retry import retry_call
from sgcore.io.decode import DEFAULT_MAX_PIXELS, Geometry, decode_image
from sgcore.io.failures import STORAGE_ERRORS, DecodeError
from sgcore.io.labels import LabelsFile, cached_labels, load_labels, lookup
from sgcore.io.layouts import (
    ImageFiles,
    Layout,
    Listing,
    ParquetTables,
    PlanOptions,
    RawSample,
    ShardSpec,
    WebDataset,
)
from sgcore.io.listing import content_identity, list_input

# The registry: --input-format name -> layout, in the order messages list them.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (ImageFiles(), WebDataset(), ParquetTables())}
INPUT_FORMATS = ("auto", *LAYOUTS)


@dataclass(kw_only=True)
class DecodedShard:
    """A shard ready for the model: the decoded pixels plus one record per sample.

    ``records[i]["index"]`` is the row of ``images`` holding sample i, or -1
    when it failed (then ``records[i]["error"]`` says why).
    """

    shard_id: str
    images: np.ndarray  # (N_ok, H, W, 3) uint8
    records: list[dict[str, Any]] = field(default_factory=list)
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
        mapping = cached_labels(spec.labels_url, storage_options, sha256=spec.labels_sha256)
        for s in samples:
            yield RawSample(image_id=s.image_id, source=s.source, data=s.data, error=s.error,
                            label=lookup(mapping, s.image_id, s.source))
    else:
        yield from samples


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
    arrays: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    for sample in read_shard(spec, storage_options):
        rec: dict[str, Any] = {
            "image_id": sample.image_id,
            "source": sample.source,
            "label": sample.label,
            "index": -1,
            "error": sample.error,
            "geometry": None,
        }
        if sample.error is None:
            try:
                arr, geo = decode_image(
                    sample.data or b"",
                    resize_size=resize_size,
                    crop_size=crop_size,
                    interpolation=interpolation,
                    max_pixels=max_pixels,
                    **geometry,
                )
            except DecodeError as e:
                rec["error"] = f"{e} ({sample.source})"
            else:
                rec["index"] = len(arrays)
                rec["geometry"] = geo
                arrays.append(arr)
        records.append(rec)
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    images = (
        np.stack(arrays) if arrays else np.zeros((0, ch, cw, geometry.get("channels", 3)), dtype=np.uint8)
    )
    return DecodedShard(shard_id=spec.shard_id, images=images, records=records, content=spec.content)


__all__ = [
    "INPUT_FORMATS",
    "LAYOUTS",
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "ShardSpec",
    "decode_shard",
    "plan_shards",
    "read_shard",
    "read_source",
]
