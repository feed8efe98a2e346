"""Encoding result rows (Parquet, npz): the typed row, the output schema derived from it.

Encoding is separate from writing: ``encode_part(rows) -> bytes``, then one
atomic write into the output (:func:`sgcore.io.output.write_bytes`, which also
owns the parts' names and footers).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sgcore.io.output import PART_METADATA_KEY


def _column(arrow: pa.DataType, default: Any = None, *, geometry: bool = False, required: bool = False) -> Any:
    """A column field: its Arrow type, and whether it places the map (geometry)."""
    metadata = {"arrow": arrow, "geometry": geometry}
    return field(metadata=metadata) if required else field(default=default, metadata=metadata)


@dataclass(slots=True, kw_only=True)
class ResultRow:
    """One result row: its fields are the output's columns, in order (docs/design.md contract 5).

    Each field carries its Arrow type; :func:`result_schema` and
    :func:`rows_to_table` are derived from this class, so a column is declared
    here once. ``saliency`` (``(H, W)``) and ``saliency_full`` (``(C, H, W)``)
    are float16 arrays, or None on error rows (stored as zeros: the tensor
    column never holds a null; ``status`` says there is no map).
    """

    image_id: str = _column(pa.string(), required=True)
    source: str = _column(pa.string(), required=True)
    shard: str | None = _column(pa.string())
    status: str = _column(pa.string(), "ok")  # "ok" or "error"
    error: str | None = _column(pa.string())
    label: str | None = _column(pa.string())
    label_index: int | None = _column(pa.int64())
    target: int | None = _column(pa.int64())
    target_name: str | None = _column(pa.string())
    predicted: int | None = _column(pa.int64())
    predicted_name: str | None = _column(pa.string())
    score: float | None = _column(pa.float32())
    # The quantity whose gradient the map explains (--score): logit, softmax, log_softmax.
    score_type: str | None = _column(pa.string())
    method: str | None = _column(pa.string())
    base: str | None = _column(pa.string())
    noise_level: float | None = _column(pa.float32())
    n_samples: int | None = _column(pa.int32())
    seed: int | None = _column(pa.int64())
    # Estimated Spearman correlation of the stored map with its converged map
    # (sgcore.attribution.reliability); null on error rows.
    reliability: float | None = _column(pa.float32())
    # Estimated Spearman correlation of the stored map with a twin (same image
    # and settings, independent noise); with ``reliability`` the noise floor of
    # a comparison (sgcore.attribution.reliability.expected_agreement).
    reproducibility: float | None = _column(pa.float32())
    # --n-samples auto: True where the map stopped at max_samples with its reliability still below
    # the target (False where it reached it); null for a fixed n and on error rows.
    capped: bool | None = _column(pa.bool_())
    # Where the map sits on its original image (see sgcore.io.decode.Geometry).
    map_height: int | None = _column(pa.int32(), geometry=True)
    map_width: int | None = _column(pa.int32(), geometry=True)
    orig_height: int | None = _column(pa.int32(), geometry=True)
    orig_width: int | None = _column(pa.int32(), geometry=True)
    resized_height: int | None = _column(pa.int32(), geometry=True)
    resized_width: int | None = _column(pa.int32(), geometry=True)
    crop_top: int | None = _column(pa.int32(), geometry=True)
    crop_left: int | None = _column(pa.int32(), geometry=True)
    saliency: np.ndarray | None = None
    saliency_full: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, message: str) -> None:
        """Makes this an error row (its map, if any, is dropped)."""
        self.status, self.error = "error", message
        self.saliency = self.saliency_full = None


_COLUMNS = [f for f in fields(ResultRow) if "arrow" in f.metadata]
_SCALARS: list[tuple[str, pa.DataType]] = [(f.name, f.metadata["arrow"]) for f in _COLUMNS
                                           if not f.metadata["geometry"]]
_GEOMETRY: list[tuple[str, pa.DataType]] = [(f.name, f.metadata["arrow"]) for f in _COLUMNS
                                            if f.metadata["geometry"]]
# The columns that place a row's map on its original image (see sgcore.io.decode.Geometry);
# every reader takes them from here.
GEOMETRY_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _GEOMETRY)


def result_schema(map_shape: tuple[int, int], *, fmt: str = "parquet", channels: int | None = None) -> pa.Schema:
    """The output schema (docs/design.md contract 5) for maps of ``map_shape``."""
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
    rows: Sequence[ResultRow],
    *,
    map_shape: tuple[int, int],
    metadata: dict[str, Any],
    fmt: str = "parquet",
    channels: int | None = None,
) -> tuple[bytes, bytes | None]:
    """Encodes one shard's rows.

    With ``channels`` the part also stores each row's ``saliency_full``.

    Returns:
        (Parquet bytes, npz bytes or None). With ``fmt="npz"`` the maps go to
        the npz keyed by ``image_id`` and the rows carry ``map_key``.
    """
    npz_bytes = None
    if fmt == "npz":
        maps = {r.image_id: r.saliency for r in rows if r.saliency is not None}
        if channels:
            maps.update({f"{r.image_id}/full": r.saliency_full for r in rows if r.saliency_full is not None})
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v, dtype=np.float16) for k, v in maps.items()})
        npz_bytes = buf.getvalue()
    meta = {PART_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    table = rows_to_table(rows, map_shape=map_shape, fmt=fmt, channels=channels)
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    # Page checksums (CRC32): a flipped byte is refused where the part is read back.
    pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
    return buf.getvalue(), npz_bytes


def rows_to_table(
    rows: Sequence[ResultRow],
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
        columns[name] = pa.array([getattr(r, name) for r in rows], type=typ)
    if fmt == "npz":
        columns["map_key"] = pa.array(
            [r.image_id if r.saliency is not None else None for r in rows], type=pa.string()
        )
    else:
        columns["saliency"] = _tensor_column([r.saliency for r in rows], tuple(map_shape))
        if channels:
            columns["saliency_full"] = _tensor_column(
                [r.saliency_full for r in rows], (channels, *map_shape)
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
