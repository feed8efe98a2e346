"""Reading a job's results: the one reader of a results directory.

    from sgcore.results import open_results, load_maps

    ds = open_results("s3://bucket/maps")              # pyarrow.dataset.Dataset
    df = ds.to_table(filter=pc.field("status") == "ok").to_pandas()
    maps = load_maps("s3://bucket/maps", image_ids=df.image_id[:10])   # id -> (H, W) float32

The output layout (docs/design.md contract 5, owned by :mod:`sgcore.io.output`):
``part-<shard>.parquet`` files, and with ``--format npz`` the maps in
``maps/part-<shard>.npz`` keyed by ``image_id``; ``_manifest.json`` and
``_SUCCESS`` are not data and are left out.

Two ways in: :func:`open_results` (the rows as a pyarrow dataset, for any
analysis) and :func:`open_results_dir` (a :class:`Results` with the manifest,
read part by part, as the audit and the renderer do).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from sgcore.errors import ConfigError, InputError
from sgcore.io import (
    GEOMETRY_COLUMNS,
    MANIFEST_NAME,
    SUCCESS_NAME,
    Manifest,
    OutputDir,
    npz_url,
    read_bytes,
    url_to_fs,
)
from sgcore.io._fs import is_local
from sgcore.io.output import PART_METADATA_KEY, PART_STATUSES, fence_of, part_name, shard_of

if TYPE_CHECKING:
    from sgcore.models.preprocess import Preprocess

# Columns a per-part reader keeps besides the map.
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
    "reliability",
    "reproducibility",
    "n_samples",
    *GEOMETRY_COLUMNS,
)


def _parts(url: str, storage_options: dict[str, Any] | None) -> OutputDir:
    """The output at ``url``, refused when it holds no parts."""
    out = OutputDir(url, storage_options)
    if not out.has_parts():
        raise InputError(f"no part-*.parquet files under {url}; is it a results directory?")
    return out


def open_results(url: str, storage_options: dict[str, Any] | None = None) -> pads.Dataset:
    """The result rows under ``url`` as a :class:`pyarrow.dataset.Dataset`.

    Only ``part-*.parquet`` files are included, so ``_manifest.json``,
    ``_SUCCESS`` and ``maps/`` never get in the way; rows stream part by part.

    Raises:
        InputError: ``url`` holds no parts.
    """
    out = _parts(url, storage_options)
    # Every page's checksum is verified as it is read: a corrupt part fails, naming its file.
    fmt = pads.ParquetFileFormat(
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))
    if is_local(out.fs):
        return pads.dataset(out.part_paths(), format=fmt)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return pads.dataset(out.part_paths(), format=fmt, filesystem=PyFileSystem(FSSpecHandler(out.fs)))


def load_maps(
    results: str | pads.Dataset | pa.Table,
    image_ids: Iterable[str] | None = None,
    *,
    full: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The maps of ``ok`` rows as float32 numpy arrays, keyed by ``image_id``.

    Args:
        results: a results URL, or a dataset/table from :func:`open_results`
            (npz results need the URL, to find ``maps/``).
        image_ids: only these (default: every ``ok`` row).
        full: the per-channel ``(C, H, W)`` maps of ``--store-full`` instead of
            the ``(H, W)`` ones.
        storage_options: fsspec options for a URL.

    Raises:
        InputError: ``full`` without ``--store-full`` maps, an id that has no map,
            or npz results given as a table.
    """
    url = results if isinstance(results, str) else None
    if isinstance(results, str):
        results = open_results(results, storage_options)
    wanted = None if image_ids is None else list(dict.fromkeys(str(i) for i in image_ids))
    flt = pc.field("status") == "ok"
    if wanted is not None:
        flt = flt & pc.field("image_id").isin(wanted)
    names = results.schema.names
    columns = [c for c in ("image_id", "shard", "saliency_full" if full else "saliency", "map_key") if c in names]
    table = _select(results, columns, flt)
    stack = table_maps(table, url, full=full, storage_options=storage_options)
    out = dict(zip(table.column("image_id").to_pylist(), stack, strict=True))
    if wanted is not None:
        missing = [i for i in wanted if i not in out]
        if missing:
            raise InputError(f"no map for image_id(s) {missing[:5]} (not in the results, or status error)")
        return {i: out[i] for i in wanted}
    return out


def table_maps(
    table: pa.Table,
    url: str | None = None,
    *,
    full: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """The maps of ``table``'s rows, in row order, as one float32 array.

    Args:
        table: result rows that all have a map (select ``status == "ok"``
            first), with ``saliency`` (or ``saliency_full``), or with
            ``shard`` and ``map_key`` for npz results.
        url: the results directory; npz results need it to find ``maps/``.
        full: the per-channel maps of ``--store-full``.
        storage_options: fsspec options for ``url``.

    Returns:
        ``(N, H, W)`` float32, or ``(N, C, H, W)`` with ``full``.

    Raises:
        InputError: no map column (``full`` without ``--store-full``), npz
            results without ``url``, or a row without a map.
    """
    column = "saliency_full" if full else "saliency"
    names = table.column_names
    if column in names:
        arr = table.column(column).combine_chunks()
        # Error rows hold zeros (older outputs: nulls): their status says they have no map.
        errors = arr.null_count
        if "status" in names:
            ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0
            errors = max(errors, len(table) - ok)
        if errors:
            raise InputError(f"{errors} row(s) have no {column!r}; select the status == 'ok' rows")
        return arr.to_numpy_ndarray().astype(np.float32)
    if "map_key" not in names:
        raise InputError(f"results have no {column!r} column; was the job run with --store-full?")
    if url is None:
        raise InputError("npz results: pass the results URL to load_maps, not a table")
    return _npz_maps(url, table, full=full, storage_options=storage_options)


def _select(results: pads.Dataset | pa.Table, columns: list[str], flt: Any) -> pa.Table:
    if isinstance(results, pa.Table):
        return results.filter(flt).select(columns)
    return results.to_table(columns=columns, filter=flt)


def _npz_maps(url: str, table: pa.Table, *, full: bool,
              storage_options: dict[str, Any] | None) -> np.ndarray:
    """The rows' maps from ``maps/part-<shard>.npz``, each file read once."""
    shards = table.column("shard").to_pylist()
    keys = table.column("map_key").to_pylist()
    if None in keys:
        raise InputError(f"{keys.count(None)} row(s) have no map_key; select the status == 'ok' rows")
    fs, _ = url_to_fs(url, storage_options)
    out: list[np.ndarray | None] = [None] * len(keys)
    by_shard: dict[str, list[int]] = {}
    for i, sid in enumerate(shards):
        by_shard.setdefault(sid, []).append(i)
    for sid, rows in sorted(by_shard.items()):
        maps_url = npz_url(url, sid)
        _, path = url_to_fs(maps_url, storage_options)
        with np.load(io.BytesIO(read_bytes(fs, path, url=maps_url))) as z:
            for i in rows:
                name = f"{keys[i]}/full" if full else keys[i]
                if name not in z.files:
                    raise InputError(f"{maps_url} has no map {name!r}; was the job run with --store-full?")
                out[i] = z[name].astype(np.float32)
    if not out:
        return np.zeros((0, 0, 0), np.float32)
    return np.stack(out)  # type: ignore[arg-type]


def part_files(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URLs of the ``part-*.parquet`` files under ``url``, sorted.

    Raises:
        InputError: ``url`` holds no parts.
    """
    return _parts(url, storage_options).part_urls()


# --------------------------------------------------------------------------- a results directory


@dataclass(frozen=True, kw_only=True)
class Results:
    """An opened results directory.

    Attributes:
        url: the directory URL as given.
        manifest: the output's ``_manifest.json`` (schema: :mod:`sgcore.io.output`).
        parts: URLs of the ``part-*.parquet`` files of the manifest's shards, sorted.
        complete: whether ``_SUCCESS`` is present and, for a manifest written
            with lease fences, written by the run that wrote the manifest, which
            says ``complete``.
        missing: the shards whose part the manifest records as written but that
            is gone or not the size it recorded (only with ``allow_partial``:
            otherwise opening fails naming them).
    """

    url: str
    manifest: Manifest
    parts: list[str]
    complete: bool
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    missing: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.config)

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing that produced the maps, from the manifest."""
        from sgcore.models.preprocess import Preprocess

        data = self.manifest.preprocess
        if not data:
            raise InputError(f"results at {self.url} have no 'preprocess' in {MANIFEST_NAME}")
        return Preprocess.from_dict(data)


def open_results_dir(
    url: str, *, storage_options: dict[str, Any] | None = None, allow_partial: bool = False
) -> Results:
    """Opens a results directory with its manifest, checking that it is complete.

    Unlike :func:`open_results` (the rows as a pyarrow dataset), this reads
    ``_manifest.json`` too: the audit needs the model, the preprocessing and
    the SmoothGrad settings that made the maps.

    Args:
        url: the job's ``--output`` URL (any fsspec URL or local path).
        storage_options: fsspec options (credentials); never echoed.
        allow_partial: accept a directory without ``_SUCCESS`` (a running or
            failed job); by default that is refused.

    Raises:
        InputError: no manifest, no part files, or no ``_SUCCESS``.
    """
    out = OutputDir(url, storage_options)
    try:
        manifest = out.read_manifest()
    except (InputError, ConfigError):  # refused credentials or --storage-options: the message says the fix
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {out.url_of(MANIFEST_NAME)}: {e}") from e
    if manifest is None:
        raise InputError(f"no {MANIFEST_NAME} under {url}; is it the --output of jobs.smoothgrad?")
    complete = out.success_matches(manifest)
    if not complete and not allow_partial:
        why = (f"its {SUCCESS_NAME} was written by another run than its {MANIFEST_NAME}'s"
               if out.has_success() else f"no {SUCCESS_NAME}")
        raise InputError(
            f"results at {url} are incomplete ({why}); wait for the job to finish "
            f"or pass allow_partial=True (--allow-partial)"
        )
    listing = _parts(url, storage_options).part_listing()
    missing = []
    for sid, entry in sorted(manifest.shards.items()):
        if entry.status not in PART_STATUSES:
            continue
        found = listing.get(part_name(sid))
        if found is None:
            missing.append(f"{part_name(sid)} (gone)")
        elif entry.size is not None and found[0] is not None and found[0] != entry.size:
            missing.append(f"{part_name(sid)} ({found[0]} bytes, {entry.size} when committed)")
    if missing and not allow_partial:
        raise InputError(
            f"results at {url}: {len(missing)} of the {sum(e.status in PART_STATUSES for e in manifest.shards.values())} "
            f"parts its {MANIFEST_NAME} records are gone or changed: {', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}; rerun the job (the same command) to redo them, "
            "or pass allow_partial=True (--allow-partial)"
        )
    parts = [out.url_of(name) for name in sorted(listing) if shard_of(name) in manifest.shards]
    return Results(url=url, manifest=manifest, parts=parts, complete=complete and not missing,
                   storage_options=dict(storage_options or {}), missing=[m.split(" ", 1)[0] for m in missing])


def _read_part_table(results: Results, part: str, columns: Iterable[str] | None) -> pa.Table:
    """One part's rows, its page checksums verified and its commit checked against the manifest."""
    fs, path = url_to_fs(part, results.storage_options)
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f, page_checksum_verification=True)
            _check_commit(results, part, pf.schema_arrow.metadata)
            if columns is None:
                return pf.read()
            wanted = set(columns)
            return pf.read(columns=[c for c in pf.schema_arrow.names if c in wanted])
    except (OSError, pa.ArrowInvalid) as e:
        if "checksum" in str(e).lower():
            raise InputError(f"{part} is corrupt ({e}); rerun the job (the same command) to redo it") from e
        raise InputError(f"cannot read {part}: {e}") from e


def _check_commit(results: Results, part: str, metadata: Mapping[bytes, bytes] | None) -> None:
    """Refuses a part that the manifest's runs did not commit (a writer that had lost the output).

    Manifests written before lease fences (no token) check nothing here.
    """
    manifest = results.manifest
    if not manifest.fenced:
        return
    sid = shard_of(part)
    entry = manifest.shards.get(sid) if sid is not None else None
    try:
        footer = json.loads((metadata or {}).get(PART_METADATA_KEY) or b"{}")
    except ValueError:
        footer = {}
    fence = fence_of(footer)
    record = entry.commit() if entry is not None else None
    if fence is not None and (fence == fence_of(record) if record else fence in manifest.run_fences()):
        return
    wrote = f"lease epoch {fence[0]}" if fence else "a writer without a lease fence"
    recorded = f"epoch {record['epoch']}" if record else "none"
    raise InputError(
        f"{part} was not committed by this output's runs (written by {wrote}; the manifest records "
        f"{recorded}): a writer that had lost the output wrote it; rerun the job (the same command) to redo it"
    )


def read_part(results: Results, part: str, *, with_maps: bool = True) -> tuple[pa.Table, np.ndarray | None]:
    """One part's ok rows (:data:`META_COLUMNS`) and their maps ``(N, H, W)`` float32."""
    columns = None if with_maps else META_COLUMNS
    table = _read_part_table(results, part, columns)
    table = table.filter(pc.equal(table.column("status"), "ok"))
    meta = table.select([c for c in META_COLUMNS if c in table.column_names])
    if not with_maps:
        return meta, None
    return meta, table_maps(table, results.url, storage_options=results.storage_options)


@dataclass(frozen=True)
class PartRows:
    """Everything the audit takes from one part, from one read of it.

    Attributes:
        part: the part's URL.
        meta: its ok rows (:data:`META_COLUMNS`).
        maps: their maps ``(N, H, W)`` float32.
        errors: its error rows as ``{"image_id", "source", "error"}``.
    """

    part: str
    meta: pa.Table
    maps: np.ndarray
    errors: list[dict[str, Any]]


def read_part_rows(results: Results, part: str) -> PartRows:
    """One part's ok rows with their maps and its error rows, reading the file once."""
    table = _read_part_table(results, part, None)
    ok = pc.equal(table.column("status"), "ok")
    errors = table.filter(pc.invert(ok))
    table = table.filter(ok)
    meta = table.select([c for c in META_COLUMNS if c in table.column_names])
    maps = table_maps(table, results.url, storage_options=results.storage_options)
    return PartRows(part=part, meta=meta, maps=maps, errors=_error_dicts(errors))


def _error_dicts(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.select([c for c in ("image_id", "source", "error") if c in table.column_names]).to_pylist()
    return [{"image_id": r.get("image_id"), "source": r.get("source"), "error": r.get("error")} for r in rows]


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


def read_errors(results: Results) -> list[dict[str, Any]]:
    """The error rows (``image_id``, ``source``, ``error``) of every part, in shard order."""
    out: list[dict[str, Any]] = []
    for part in results.parts:
        table = _read_part_table(results, part, ("image_id", "source", "status", "error"))
        out.extend(_error_dicts(table.filter(pc.not_equal(table.column("status"), "ok"))))
    return out


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


__all__ = [
    "META_COLUMNS",
    "PartRows",
    "Results",
    "iter_parts",
    "load_maps",
    "open_results",
    "open_results_dir",
    "part_files",
    "read_errors",
    "read_index",
    "read_maps",
    "read_part",
    "read_part_rows",
    "row_classes",
    "table_maps",
]
