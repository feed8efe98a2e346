"""What the audit reads beside the results: the input images, object masks and boxes.

The results directory itself is read by :mod:`sgcore.results`, the one reader.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image

from sgcore.errors import ConfigError, InputError
from sgcore.io import decode_image
from sgcore.io import read_source as _io_read_source
from sgcore.io.decode import resize_and_crop
from sgcore.io.labels import read_table
from sgcore.models.preprocess import Preprocess
from sgcore.seeds import image_seed

if TYPE_CHECKING:
    from sgcore.results import Results

BOX_COLUMNS = ("image_id", "x0", "y0", "x1", "y1")
_BOXES_HINT = "pass --boxes a CSV or Parquet file with columns image_id, x0, y0, x1, y1 (original image pixels)"


def hash_sample(ids: list[str], k: int, seed: int) -> list[int]:
    """Indices of ``k`` ids chosen by a hash of (seed, id), sorted.

    The choice depends only on the ids, not on their order or sharding, so a
    rerun or a re-sharded result set audits the same images.
    """
    order = sorted(range(len(ids)), key=lambda i: (image_seed(seed, ids[i]), ids[i]))
    return sorted(order[:k])


def check_model_files(results: Results, model: str, weights: str, storage_options: dict[str, Any] | None,
                      *, what: str) -> None:
    """Refuses to recompute a run's maps with its model when a file of that model changed since.

    The manifest records the sha256 of every weights file, archive or directory
    the run loaded; the same spec at the same path with other bytes is another
    model, whose maps would be set beside the run's as if they were its own.
    Another ``--model``/``--weights`` than the run's is the user's choice and
    is not checked.

    Raises:
        ConfigError: one line naming the file, both hashes and the way out.
    """
    job = results.config
    if model != job.get("model") or weights != (job.get("weights") or "default"):
        return
    recorded = results.manifest.model.get("files") or {}
    if not recorded:
        return
    from sgcore.models import model_identity

    now = model_identity(model, weights, storage_options=storage_options).get("files") or {}
    for name, sha in now.items():
        if name in recorded and recorded[name] != sha:
            raise ConfigError(
                f"the model file {name} changed since {results.url} was written (sha256 {recorded[name][:12]}... "
                f"-> {sha[:12]}...); {what} would explain another model than the one its maps are of: restore "
                "that file, or pass --model/--weights to name another model on purpose"
            )


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
