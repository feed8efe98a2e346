"""Encoding result rows (Parquet, npz): the output schema and its typed geometry columns.

Encoding is separate from writing: ``encode_part(rows) -> bytes``, then one
atomic write into the output (:func:`sgcore.io.output.write_bytes`, which also
owns the parts' names and footers).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sgcore.io.output import PART_METADATA_KEY

_SCALARS: list[tuple[str, pa.DataType]] = [
    ("image_id", pa.string()),
    ("source", pa.string()),
    ("shard", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("label", pa.string()),
    ("label_index", pa.int64()),
    ("target", pa.int64()),
    ("target_name", pa.string()),
    ("predicted", pa.int64()),
    ("predicted_name", pa.string()),
    ("score", pa.float32()),
    # The quantity whose gradient the map explains (--score): logit, softmax, log_softmax.
    ("score_type", pa.string()),
    ("method", pa.string()),
    ("base", pa.string()),
    ("noise_level", pa.float32()),
    ("n_samples", pa.int32()),
    ("seed", pa.int64()),
    # Estimated Spearman correlation of the stored map with its converged map
    # (sgcore.attribution.reliability); null on error rows.
    ("reliability", pa.float32()),
    # Estimated Spearman correlation of the stored map with a twin (same image
    # and settings, independent noise); with ``reliability`` the noise floor of
    # a comparison (sgcore.attribution.reliability.expected_agreement).
    ("reproducibility", pa.float32()),
]
_GEOMETRY: list[tuple[str, pa.DataType]] = [
    ("map_height", pa.int32()),
    ("map_width", pa.int32()),
    ("orig_height", pa.int32()),
    ("orig_width", pa.int32()),
    ("resized_height", pa.int32()),
    ("resized_width", pa.int32()),
    ("crop_top", pa.int32()),
    ("crop_left", pa.int32()),
]
# The columns that place a row's map on its original image (see sgcore.io.decode.Geometry);
# every reader takes them from here.
GEOMETRY_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _GEOMETRY)


def result_schema(map_shape: tuple[int, int], *, fmt: str = "parquet", channels: int | None = None) -> pa.Schema:
    """The output schema (DESIGN.md contract 5) for maps of ``map_shape``."""
    fields = [pa.field(n, t) for n, t in _SCALARS]
    if fmt == "npz":
        fields.append(pa.field("map_key", pa.string()))
    else:
        fields.append(pa.field("saliency", pa.fixed_shape_tensor(pa.float16(), list(map_shape))))
        if channels:
            fields.append(
                pa.field("saliency_full", pa.fixed_shape_tensor(pa.float16(), [channels, *map_shape]))
            )
    fields.extend(pa.field(n, t) for n, t in _GEOMETRY)
    return pa.schema(fields)


def encode_part(
    rows: list[dict[str, Any]],
    *,
    map_shape: tuple[int, int],
    metadata: dict[str, Any],
    fmt: str = "parquet",
    channels: int | None = None,
) -> tuple[bytes, bytes | None]:
    """Encodes one shard's rows.

    Each row holds the scalar columns plus ``saliency`` (an ``(H, W)`` array
    or None on error rows, stored as zeros: the column never holds a null) and,
    with ``channels``, ``saliency_full`` ``(C, H, W)``.

    Returns:
        (Parquet bytes, npz bytes or None). With ``fmt="npz"`` the maps go to
        the npz keyed by ``image_id`` and the rows carry ``map_key``.
    """
    npz_bytes = None
    if fmt == "npz":
        maps = {r["image_id"]: r["saliency"] for r in rows if r.get("saliency") is not None}
        if channels:
            maps.update(
                {f"{r['image_id']}/full": r["saliency_full"] for r in rows if r.get("saliency_full") is not None}
            )
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v, dtype=np.float16) for k, v in maps.items()})
        npz_bytes = buf.getvalue()
    meta = {PART_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    table = rows_to_table(rows, map_shape=map_shape, fmt=fmt, channels=channels)
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue(), npz_bytes


def rows_to_table(
    rows: list[dict[str, Any]],
    *,
    map_shape: tuple[int, int],
    fmt: str = "parquet",
    channels: int | None = None,
) -> pa.Table:
    """Result rows as an Arrow table of :func:`result_schema` (no footer metadata).

    The job encodes it into a part; :mod:`sgcore.ray_data` hands it to Ray Data.
    With ``fmt="npz"`` the rows carry ``map_key`` instead of the maps.
    """
    schema = result_schema(map_shape, fmt=fmt, channels=channels)
    columns: dict[str, pa.Array] = {}
    for name, typ in _SCALARS + _GEOMETRY:
        columns[name] = pa.array([r.get(name) for r in rows], type=typ)
    if fmt == "npz":
        columns["map_key"] = pa.array(
            [r["image_id"] if r.get("saliency") is not None else None for r in rows], type=pa.string()
        )
    else:
        columns["saliency"] = _tensor_column([r.get("saliency") for r in rows], tuple(map_shape))
        if channels:
            columns["saliency_full"] = _tensor_column(
                [r.get("saliency_full") for r in rows], (channels, *map_shape)
            )
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def _tensor_column(maps: list[np.ndarray | None], shape: tuple[int, ...]) -> pa.ExtensionArray:
    """The maps as one tensor column that never holds a null.

    An error row (``None``) holds zeros of the map's shape; ``status`` says it has
    no map. A null in a tensor column breaks Ray Data (``take_batch``, ``take``,
    ``map_batches`` and row-wise ``filter`` all convert it to numpy, which refuses
    nulls) and every ``df.saliency[i].reshape(...)``; zeros read everywhere.
    """
    size = int(np.prod(shape))
    flat = np.zeros((len(maps), size), dtype=np.float16)
    for i, m in enumerate(maps):
        if m is not None:
            if tuple(np.shape(m)) != shape:
                raise ValueError(f"map {i} must have shape {shape}; got {np.shape(m)}")
            flat[i] = np.asarray(m, dtype=np.float16).reshape(-1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float16(), list(shape)), storage)
