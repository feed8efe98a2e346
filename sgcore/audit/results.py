"""Reading a results directory written by ``jobs.smoothgrad``.

A results directory holds ``part-<shard>.parquet`` files, ``_manifest.json``
and ``_SUCCESS`` (DESIGN.md contract 5). Parts are read one at a time so that
an audit's memory does not grow with the dataset.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from sgcore.audit.localization import GEOMETRY_COLUMNS
from sgcore.errors import InputError
from sgcore.io import MANIFEST_NAME, SUCCESS_NAME, decode_image, join, url_to_fs
from sgcore.io import read_source as _io_read_source
from sgcore.io.decode import resize_and_crop
from sgcore.io.labels import read_table
from sgcore.models.preprocess import Preprocess
from sgcore.results import part_files, table_maps
from sgcore.seeds import image_seed

# Columns every audit needs besides the map.
META_COLUMNS = (
    "image_id",
    "source",
    "status",
    "label",
    "target",
    "target_name",
    "predicted",
    "predicted_name",
    "score",
    "seed",
    # Geometry: where the map sits on the original image; --boxes needs it.
    *GEOMETRY_COLUMNS,
)

BOX_COLUMNS = ("image_id", "x0", "y0", "x1", "y1")
_BOXES_HINT = "pass --boxes a CSV or Parquet file with columns image_id, x0, y0, x1, y1 (original image pixels)"


@dataclass(frozen=True, kw_only=True)
class Results:
    """An opened results directory.

    Attributes:
        url: the directory URL as given.
        manifest: the parsed ``_manifest.json``.
        parts: URLs of the ``part-*.parquet`` files, sorted.
        complete: whether ``_SUCCESS`` is present.
    """

    url: str
    manifest: dict[str, Any]
    parts: list[str]
    complete: bool
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing that produced the maps, from the manifest."""
        data = self.manifest.get("preprocess")
        if not data:
            raise InputError(f"results at {self.url} have no 'preprocess' in {MANIFEST_NAME}")
        return Preprocess.from_dict(data)


def open_results_dir(
    url: str, *, storage_options: dict[str, Any] | None = None, allow_partial: bool = False
) -> Results:
    """Opens a results directory with its manifest, checking that it is complete.

    Unlike :func:`sgcore.results.open_results` (the rows as a pyarrow
    dataset), this reads ``_manifest.json`` too: the audit needs the model,
    the preprocessing and the SmoothGrad settings that made the maps.

    Args:
        url: the job's ``--output`` URL (any fsspec URL or local path).
        storage_options: fsspec options (credentials); never echoed.
        allow_partial: accept a directory without ``_SUCCESS`` (a running or
            failed job); by default that is refused.

    Raises:
        InputError: no manifest, no part files, or no ``_SUCCESS``.
    """
    import json

    fs, root = url_to_fs(url, storage_options)
    root = root.rstrip("/")
    try:
        manifest = json.loads(fs.cat_file(posixpath.join(root, MANIFEST_NAME)))
    except FileNotFoundError as e:
        raise InputError(
            f"no {MANIFEST_NAME} under {url}; is it the --output of jobs.smoothgrad?"
        ) from e
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {join(url, MANIFEST_NAME)}: {e}") from e
    complete = fs.exists(posixpath.join(root, SUCCESS_NAME))
    if not complete and not allow_partial:
        raise InputError(
            f"results at {url} are incomplete (no {SUCCESS_NAME}); wait for the job to finish "
            f"or pass allow_partial=True (--allow-partial)"
        )
    return Results(
        url=url,
        manifest=manifest,
        parts=part_files(url, storage_options),
        complete=complete,
        storage_options=dict(storage_options or {}),
    )


def read_part(results: Results, part: str, *, with_maps: bool = True) -> tuple[pa.Table, np.ndarray | None]:
    """One part's ok rows (metadata columns) and their maps ``(N, H, W)`` float32."""
    fs, path = url_to_fs(part, results.storage_options)
    try:
        with fs.open(path, "rb") as f:
            if with_maps:
                table = pq.read_table(f)
            else:
                names = pq.ParquetFile(f).schema_arrow.names
                f.seek(0)
                table = pq.read_table(f, columns=[c for c in names if c in META_COLUMNS])
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {part}: {e}") from e
    table = table.filter(pc.equal(table.column("status"), "ok"))
    meta = table.select([c for c in META_COLUMNS if c in table.column_names])
    if not with_maps:
        return meta, None
    return meta, table_maps(table, results.url, storage_options=results.storage_options)


def iter_parts(results: Results, *, with_maps: bool = True) -> Iterator[tuple[pa.Table, np.ndarray | None]]:
    """Yields :func:`read_part` for every part, in shard order."""
    for part in results.parts:
        yield read_part(results, part, with_maps=with_maps)


def read_index(results: Results) -> pa.Table:
    """Metadata of every ok row (no maps), with a ``part`` column."""
    tables = []
    for part in results.parts:
        meta, _ = read_part(results, part, with_maps=False)
        tables.append(meta.append_column("part", pa.array([part] * len(meta), pa.string())))
    return pa.concat_tables(tables, promote_options="permissive")


def read_maps(results: Results, index: pa.Table, rows: list[int]) -> np.ndarray:
    """Maps ``(len(rows), H, W)`` float32 of the given rows of :func:`read_index`."""
    parts = index.column("part").to_pylist()
    ids = index.column("image_id").to_pylist()
    wanted: dict[str, list[int]] = {}
    for r in rows:
        wanted.setdefault(parts[r], []).append(r)
    out: dict[int, np.ndarray] = {}
    for part, rs in wanted.items():
        meta, maps = read_part(results, part)
        position = {image_id: i for i, image_id in enumerate(meta.column("image_id").to_pylist())}
        for r in rs:
            out[r] = maps[position[ids[r]]]  # type: ignore[index]
    return np.stack([out[r] for r in rows]) if rows else np.zeros((0, 0, 0), np.float32)


def row_classes(meta: pa.Table) -> list[str]:
    """Class of each row: its label, else the target's name, else the target index."""
    n = len(meta)

    def col(name: str) -> list:
        return meta.column(name).to_pylist() if name in meta.column_names else [None] * n

    return [
        str(lab if lab is not None else name if name is not None else t)
        for lab, name, t in zip(col("label"), col("target_name"), col("target"), strict=True)
    ]


def hash_sample(ids: list[str], k: int, seed: int) -> list[int]:
    """Indices of ``k`` ids chosen by a hash of (seed, id), sorted.

    The choice depends only on the ids, not on their order or sharding, so a
    rerun or a re-sharded result set audits the same images.
    """
    order = sorted(range(len(ids)), key=lambda i: (image_seed(seed, ids[i]), ids[i]))
    return sorted(order[:k])


def read_source(
    source: str, storage_options: dict[str, Any] | None = None, *, image_column: str | None = None
) -> bytes:
    """The bytes of one input image by its ``source`` (a URL, ``tar#member`` or ``parquet#row``).

    Raises:
        InputError: missing or unreadable, naming the source.
    """
    try:
        return _io_read_source(source, storage_options, image_column=image_column)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {source}: {e}") from e


def load_images(
    sources: list[str],
    preprocess: Preprocess,
    storage_options: dict[str, Any] | None = None,
    *,
    image_column: str | None = None,
) -> np.ndarray:
    """Decodes images exactly as the job did: ``(N, H, W, C)`` uint8."""
    arrays = []
    for source in sources:
        arr, _ = decode_image(
            read_source(source, storage_options, image_column=image_column),
            **preprocess.decode_kwargs(),
        )
        arrays.append(arr)
    h, w = preprocess.map_shape
    return np.stack(arrays) if arrays else np.zeros((0, h, w, preprocess.channels), np.uint8)


def load_mask(url: str, preprocess: Preprocess, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """A binary object mask brought into map geometry: ``(H, W)`` bool.

    The mask goes through the same shorter-side resize and centre crop as
    its image (nearest neighbour, so it stays binary); pixels > 127 are in.
    """
    data = read_source(url, storage_options)
    try:
        with Image.open(io.BytesIO(data)) as img:
            grey = img.convert("L").convert("RGB")
    except OSError as e:
        raise InputError(f"cannot decode mask {url}: {e}") from e
    geometry = {**preprocess.decode_kwargs(), "interpolation": "nearest", "channels": 3, "fill": 0}
    arr, _ = resize_and_crop(grey, **geometry)
    return arr[..., 0] > 127


def read_boxes(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Object boxes by image id from a CSV (header row) or Parquet file: ``{image_id: (K, 4) float64}``.

    Columns ``image_id, x0, y0, x1, y1``, in original image pixels (x1/y1
    exclusive); several rows for one image are the union of its boxes. A
    ``.parquet``/``.pq`` name is read as Parquet, anything else as CSV.

    Raises:
        InputError: the file is missing or unreadable, lacks a column, has an
            empty or non-numeric value, or a box with x1 <= x0 or y1 <= y0;
            the message names the file and, for a bad box, its data row (1-based).
    """
    table = read_table(url, storage_options, what="boxes file", string_columns=("image_id",),
                       hint=_BOXES_HINT)
    names = table.column_names
    if any(c not in names for c in BOX_COLUMNS):
        raise InputError(f"boxes file {url} must have columns {', '.join(BOX_COLUMNS)}; got {names}")
    if len(table) == 0:
        raise InputError(f"boxes file {url} has no rows; {_BOXES_HINT}")
    for name in BOX_COLUMNS:
        nulls = table.column(name).null_count
        if nulls:
            raise InputError(f"boxes file {url}: column {name} has {nulls} empty value(s); every row needs all of "
                             f"{', '.join(BOX_COLUMNS)}")
    ids = [str(v) for v in table.column("image_id").to_pylist()]
    try:
        coords = np.stack([table.column(c).cast(pa.float64()).to_numpy() for c in BOX_COLUMNS[1:]], axis=1)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"boxes file {url}: x0, y0, x1, y1 must be numbers (pixels) ({e})") from e
    bad = np.flatnonzero(~np.isfinite(coords).all(axis=1) | (coords[:, 2] <= coords[:, 0])
                         | (coords[:, 3] <= coords[:, 1]))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"boxes file {url}: data row {i + 1} (image_id {ids[i]!r}) has x0, y0, x1, y1 = "
            f"{tuple(float(v) for v in coords[i])}; a box needs x0 < x1 and y0 < y1 (x1/y1 exclusive, "
            f"original image pixels){f' ({bad.size} bad rows in all)' if bad.size > 1 else ''}"
        )
    grouped: dict[str, list[np.ndarray]] = {}
    for image_id, box in zip(ids, coords, strict=True):
        grouped.setdefault(image_id, []).append(box)
    return {k: np.stack(v) for k, v in grouped.items()}
