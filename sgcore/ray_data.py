"""SmoothGrad as one stage of a Ray Data pipeline, with the job's rows.

    import ray
    from sgcore.ray_data import SmoothGradMaps

    root = "s3://bucket/images/"
    ds = ray.data.read_images(root, include_paths=True)          # or read_binary_files,
    # read_parquet, read_webdataset(root, decoder=None)
    maps = ds.map_batches(
        SmoothGradMaps,
        fn_constructor_kwargs=SmoothGradMaps.settings(model="resnet50", n_samples=50,
                                                      seed=0, root=root),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8),
        num_gpus=1, batch_size=32,
    )   # keep DataContext.max_errored_blocks at its default 0 (see the README)
    maps.write_parquet("s3://bucket/maps/")

:class:`SmoothGradMaps` turns the batches Ray Data's readers produce into the
rows :func:`sgcore.pipeline.run_job` writes (DESIGN.md contract 5): the same
columns, types and geometry, and the same maps for the same images and
settings, because it runs the job's own code: the decoder of
:mod:`sgcore.io.decode`, the model's :class:`~sgcore.models.Preprocess`, and
the job's :class:`~sgcore.pipeline.worker.ShardProcessor` (a replica prepared
once per actor: BatchNorm folded, channels_last, precision, compile). Ids are
formed as the job forms them relative to its ``--input`` (``root``), so the
per-image seeds match too. What the job adds on top (exactly-once parts,
resume, the manifest, the audit) stays with the job.
"""

from __future__ import annotations

import difflib
import json
import math
import posixpath
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import UserCodeException

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import (
    IMAGE_EXTENSIONS,
    DecodedShard,
    DecodeError,
    decode_array,
    decode_image,
    rows_to_table,
)
from sgcore.io.labels import cached_labels, lookup
from sgcore.io.parquet_input import LABEL_COLUMN_NAMES
from sgcore.io.webdataset import escape_key

# The job's settings this stage takes, under the job's config field names.
JOB_SETTINGS = (
    "model", "weights", "image_size", "target", "n_samples", "noise_level", "noise",
    "aggregate", "base", "ig_steps", "precision", "reduction", "seed", "store_full",
    "batch_size", "max_batch", "fold_bn", "compile", "labels", "storage_options",
    "image_column", "label_column", "id_column",
)
# Where the batch comes from: ids relative to ``root``; input columns kept in the output.
STAGE_SETTINGS = ("root", "keep_columns")
# Image columns of Ray Data's readers: read_images, read_binary_files, WebDataset fields.
IMAGE_COLUMNS = ("image", "bytes", "jpg", "jpeg", "png", "webp", "bmp", "img")
_WDS_KEY, _WDS_URL = "__key__", "__url__"
_WDS_IMAGE_FIELDS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_JSON_LABEL_KEYS = ("label", "cls", "class", "category")  # as sgcore.io.webdataset reads them
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _unknown(name: str) -> ConfigError:
    known = (*JOB_SETTINGS, *STAGE_SETTINGS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"SmoothGradMaps has no setting {name!r}; {hint}settings: {', '.join(known)}")


class SettingsError(ConfigError, UserCodeException):
    """A bad :class:`SmoothGradMaps` setting, found on the driver when the pipeline starts.

    A :class:`~sgcore.errors.ConfigError`; also Ray's ``UserCodeException``, so that
    Ray Data reports it as the caller's error (one line, no internal stack) and not
    as a failure of Ray itself.
    """


def check_settings(**settings: Any) -> dict[str, Any]:
    """Checks :class:`SmoothGradMaps` settings on the driver; returns them unchanged.

    Runs every check the job runs on its config (names, choices, ranges, the
    model name and weights, without loading weights), so a bad value fails in
    the driver with one line instead of in every actor.

    Raises:
        ConfigError: an unknown or invalid setting; the message names it and the fix.
    """
    _config(settings)
    from sgcore.models import resolve_preprocess

    resolve_preprocess(settings.get("model", "demo"), settings.get("weights", "default"),
                       image_size=settings.get("image_size"),
                       storage_options=settings.get("storage_options"))
    return dict(settings)


def _config(settings: Mapping[str, Any]) -> JobConfig:
    for name in settings:
        if name not in JOB_SETTINGS and name not in STAGE_SETTINGS:
            raise _unknown(name)
    for name in ("root", "image_column", "label_column", "id_column", "labels"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{name} must be a non-empty string or None; got {value!r}")
    keep = settings.get("keep_columns", ())
    if isinstance(keep, str) or not all(isinstance(c, str) and c for c in keep):
        raise ConfigError(f"keep_columns must be a list of column names; got {keep!r}")
    job = {k: v for k, v in settings.items() if k in JOB_SETTINGS}
    job.setdefault("id_column", "path")
    # input/output only feed the job's hash and writers, which this stage does not use.
    return JobConfig(input=settings.get("root") or "ray-data", output="ray-data", progress=False,
                     **job)


class SmoothGradMaps:
    """A callable class for ``Dataset.map_batches``: image batches in, the job's rows out.

    Args (keywords, the job's config field names; see ``python -m jobs.smoothgrad --help``):
        model, weights, image_size, target, n_samples, noise_level, noise,
            aggregate, base, ig_steps, precision, reduction, seed, store_full,
            max_batch, fold_bn, compile, labels, storage_options: as for the job.
        batch_size: images per model batch (the job's ``--batch-size``); each
            Ray Data batch (``map_batches(batch_size=...)``) is cut into these.
        image_column: the column holding the images: decoded ``uint8`` arrays
            of any size (``read_images``) or encoded bytes (``read_binary_files``,
            Parquet, WebDataset; a Hugging Face ``{"bytes": ...}`` struct too).
            None: the first of ``image``, ``bytes``, ``jpg``, ``jpeg``, ``png``,
            ``webp``, ``bmp``, ``img`` in the batch; for WebDataset batches
            (``__key__``) each row's own image field (``png`` in one sample,
            ``jpg`` in the next, ``left.jpg``...), and a sample without one
            gives no row, as in the job. Read tars with
            ``ray.data.read_webdataset(url, decoder=None)``: Ray's default
            decoder turns images into arrays and fails on images of different
            sizes before this stage runs (and ignores EXIF orientation).
        id_column: the column naming each image (default ``path``, from
            ``include_paths=True``). For WebDataset batches the id is
            ``<tar path>/<key>`` as in the job, the tar path from this column
            or ``__url__``, the key from ``__key__``.
        label_column: labels; None: a WebDataset sample's ``cls`` field, else
            the ``label``/``cls``/``class``/``category`` entry of its ``json``
            (as the job reads them); else a column named ``label``, ``labels``,
            ``cls`` or ``class``, else the parent folder of a file id (as the
            job does).
        root: the job's ``--input``: removed from the front of each id, so ids
            (and so seeds and maps) equal the job's; ``source`` is ``root`` + id.
        keep_columns: input columns copied to the output (e.g. the id column
            for Ray Data checkpointing).

    Raises:
        SettingsError: a bad setting, on the driver when the pipeline starts
            executing, before any actor starts: a logical-plan rule of Ray Data
            checks every ``SmoothGradMaps`` stage's ``fn_constructor_kwargs``
            (plain dicts too). :meth:`settings` checks them earlier, where the
            dict is built. Where Ray Data lacks that rule, each actor raises
            the same one-line ``ConfigError`` as it starts.
    """

    def __init__(self, **settings: Any):
        from sgcore.pipeline.actors import set_cpu_threads
        from sgcore.pipeline.worker import ShardProcessor, pick_device

        try:  # the driver checked already (see check_stage); this is for another Ray
            self.config = _config(settings)
        except ConfigError as e:
            raise ConfigError(_stage_message(e)) from None
        self.root = settings.get("root")
        self.keep_columns = tuple(settings.get("keep_columns", ()))
        in_worker = _in_ray_worker()
        use_gpu = in_worker and len(ray.get_gpu_ids()) > 0
        if in_worker:  # a replica's threads as the job sets them; a direct call keeps torch's
            set_cpu_threads(use_gpu)
        self.processor = ShardProcessor(self.config, device=pick_device(use_gpu))
        self.preprocess = self.processor.loaded.preprocess
        self._labels = (cached_labels(self.config.labels, self.config.storage_options)
                        if self.config.labels else None)

    @staticmethod
    def settings(**settings: Any) -> dict[str, Any]:
        """The constructor keywords, checked here on the driver (see :func:`check_settings`)."""
        return check_settings(**settings)

    # ---------------------------------------------------------------- batches
    def __call__(self, batch: Any) -> pa.Table:
        """One result row per input row, in order (errors as ``status="error"`` rows)."""
        columns = _as_columns(batch)
        n = len(next(iter(columns.values()))) if columns else 0
        records, arrays, kept = self._decode(columns, n)
        pre = self.preprocess
        shape = pre.map_shape
        decoded = DecodedShard(shard_id=None,  # type: ignore[arg-type]  # no shard here
                               images=np.stack(arrays) if arrays else
                               np.zeros((0, *shape, pre.channels), dtype=np.uint8),
                               records=records)
        try:
            rows = self.processor.compute_rows(decoded)
        except Exception as e:  # the batch is never lost: one error row per image
            from sgcore.pipeline.worker import make_row

            message = f"batch failed: {type(e).__name__}: {e}"[:1000]
            rows = [make_row(self.config, None, rec, crop=shape, error=message)  # type: ignore[arg-type]
                    for rec in records]
        table = rows_to_table(rows, map_shape=shape,
                              channels=pre.channels if self.config.store_full else None)
        for name in self.keep_columns:
            if name not in columns:
                raise ConfigError(f"keep_columns: {name!r} is not a column of the batch; "
                                  f"columns: {', '.join(columns)}")
            table = table.append_column(name, pa.array([columns[name][i] for i in kept]))
        return table

    def _decode(self, columns: dict[str, Any], n: int
                ) -> tuple[list[dict[str, Any]], list[np.ndarray], list[int]]:
        """Records and decoded images of the batch, and the input rows they come from."""
        cfg, pre = self.config, self.preprocess
        wds = _WDS_KEY in columns
        # WebDataset rows carry their image under its extension, which may differ per row.
        fields = _wds_image_fields(columns) if wds and cfg.image_column is None else None
        image_col = None if fields is not None else _image_column(columns, cfg.image_column)
        id_col = cfg.id_column if cfg.id_column in columns else (_WDS_URL if wds else None)
        if id_col is None:
            raise ConfigError(
                f"id_column {cfg.id_column!r} is not a column of the batch (columns: "
                f"{', '.join(columns)}); read with include_paths=True or pass id_column"
            )
        label_col = cfg.label_column or (None if wds else _label_column(columns))
        records: list[dict[str, Any]] = []
        arrays: list[np.ndarray] = []
        kept: list[int] = []
        for i in range(n):
            field: str | None = image_col
            if fields is not None:
                field = next((f for f in fields if not _missing(columns[f][i])), None)
            if field is None:  # the job yields no row for a WebDataset sample without an image
                continue
            image_id, source, error = self._identify(columns, id_col, field, wds, i)
            rec: dict[str, Any] = {"image_id": image_id, "source": source, "index": -1,
                                   "error": error, "geometry": None,
                                   "label": self._label(columns, label_col, image_id, source, wds, i)}
            if error is None:
                try:
                    arr, geo = _decode_one(columns[field][i], pre)
                except DecodeError as e:
                    rec["error"] = f"{e} ({source})"
                else:
                    rec["index"], rec["geometry"] = len(arrays), geo
                    arrays.append(arr)
            records.append(rec)
            kept.append(i)
        return records, arrays, kept

    def _identify(self, columns: dict[str, Any], id_col: str, image_col: str, wds: bool,
                  i: int) -> tuple[str, str, str | None]:
        """(image id, source, error) of row ``i``, formed as the job forms them."""
        raw = columns[id_col][i]
        value = "" if raw is None else str(raw)
        rel, error = _relative(value, self.root)
        if wds:  # the job: <tar path>/<sample key>, source <tar URL>#<member>
            key = str(columns[_WDS_KEY][i])
            tar_url = _source(self.root, rel) if error is None else value
            # The job's escaping ("%" -> %25, "#" -> %23): ids stay unique and sources readable.
            return f"{rel}/{escape_key(key)}", f"{tar_url}#{escape_key(f'{key}.{image_col}')}", error
        return rel, (_source(self.root, rel) if error is None else value), error

    def _label(self, columns: dict[str, Any], label_col: str | None, image_id: str, source: str,
               wds: bool, i: int) -> str | None:
        if self._labels is not None:
            return lookup(self._labels, image_id, source)
        if label_col is not None:
            value = columns[label_col][i]
            if label_col == "json":
                return _json_label(value)
            return None if _missing(value) else _text(value)
        if wds:
            return _wds_label(columns, i)
        if not wds and self.config.id_column == "path" and "/" in image_id:
            return posixpath.basename(posixpath.dirname(image_id))  # the job's folder labels
        return None


# ------------------------------------------------------- the driver-side check
# Ray Data (2.60) calls nothing of the class with its fn_constructor_kwargs on the
# driver, so a plain dict would only be checked in each actor, where the failure
# reaches the driver as ActorDiedError and is logged as an internal Ray error. A
# logical-plan rule runs on the driver when the pipeline executes, before Ray Data
# plans any operator or starts any actor: it checks every SmoothGradMaps stage
# there and changes nothing. The rule API is Ray Data's (a DeveloperAPI); where it
# is missing, the actor's own check (the same one) still fails the pipeline.
try:
    from ray.data._internal.logical.interfaces import Rule as _Rule
    from ray.data._internal.logical.operators.map_operator import AbstractUDFMap as _UDFMap
    from ray.data._internal.logical.optimizers import get_logical_ruleset as _logical_ruleset
except ImportError:  # another Ray: the actors check
    _Rule, _UDFMap, _logical_ruleset = object, None, None  # type: ignore[assignment,misc]

_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()  # stages already checked (plans re-optimize)


def check_stage(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
    """Checks one ``map_batches(SmoothGradMaps, ...)`` stage's constructor arguments.

    Raises:
        SettingsError: positional arguments, or a setting :func:`check_settings` refuses.
    """
    if args:
        raise SettingsError("SmoothGradMaps takes its settings as keywords "
                            "(fn_constructor_kwargs=...); got fn_constructor_args")
    try:
        check_settings(**(kwargs or {}))
    except ConfigError as e:
        raise SettingsError(_stage_message(e)) from None


def _stage_message(error: ConfigError) -> str:
    message = str(error)
    return message if message.startswith("SmoothGradMaps") else f"SmoothGradMaps: {message}"


class _CheckSmoothGradMaps(_Rule):  # type: ignore[misc,valid-type]
    """Checks every SmoothGradMaps stage of a logical plan on the driver; returns it unchanged."""

    def apply(self, plan: Any) -> Any:
        for op in plan.dag.post_order_iter():
            if (isinstance(op, _UDFMap) and isinstance(op.fn, type)  # type: ignore[arg-type]
                    and issubclass(op.fn, SmoothGradMaps) and op not in _CHECKED):
                check_stage(op.fn_constructor_args, op.fn_constructor_kwargs)
                _CHECKED.add(op)
        return plan


def _register_driver_check() -> bool:
    """Adds the check to Ray Data's logical rules (once per process); False if it cannot."""
    if _logical_ruleset is None:
        return False
    ruleset = _logical_ruleset()
    if _CheckSmoothGradMaps not in list(ruleset):
        ruleset.add(_CheckSmoothGradMaps)
    return True


DRIVER_CHECK = _register_driver_check()


def read_results(url: str | Sequence[str], *, ok_only: bool = False, **read_parquet_args: Any) -> Any:
    """The rows of a job's output (or of ``write_parquet`` after :class:`SmoothGradMaps`).

    ``saliency`` comes back as a tensor column: ``iter_batches(batch_format="numpy")``
    gives it as one ``(B, H, W)`` float16 array per batch, without a copy
    per row, and ``iter_torch_batches()`` as a float16 tensor.

    Args:
        url: the output folder(s); ``_manifest.json``, ``_SUCCESS`` and ``maps/`` are skipped.
        ok_only: keep only ``status == "ok"`` rows (error rows have no map).
        read_parquet_args: passed to ``ray.data.read_parquet`` (``columns=...``, ...).

    Returns:
        A ``ray.data.Dataset``.
    """
    read_parquet_args.setdefault("file_extensions", ["parquet"])
    ds = ray.data.read_parquet(url, **read_parquet_args)
    if ok_only:
        ds = ds.filter(expr="status == 'ok'")
    return ds


# --------------------------------------------------------------------------- helpers


def _in_ray_worker() -> bool:
    """Whether this runs in a Ray worker (never connects to a cluster to find out)."""
    if not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _as_columns(batch: Any) -> dict[str, Any]:
    """A batch in any of Ray Data's formats as {column: sequence}."""
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, pa.Table):
        return {name: batch.column(name).to_pylist() for name in batch.column_names}
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return {str(c): batch[c].to_numpy() for c in batch.columns}
    raise TypeError(f"SmoothGradMaps takes dict, pyarrow or pandas batches; got {type(batch).__name__}")


def _image_column(columns: dict[str, Any], given: str | None) -> str:
    if given is not None:
        if given not in columns:
            raise ConfigError(f"image_column {given!r} is not a column of the batch; "
                              f"columns: {', '.join(columns)}")
        return given
    for name in IMAGE_COLUMNS:
        if name in columns:
            return name
    raise ConfigError(f"no image column in the batch (looked for {', '.join(IMAGE_COLUMNS)}); "
                      f"columns: {', '.join(columns)}; pass image_column")


def _label_column(columns: dict[str, Any]) -> str | None:
    return next((c for c in LABEL_COLUMN_NAMES if c in columns), None)


def _wds_image_fields(columns: dict[str, Any]) -> list[str]:
    """The image fields of WebDataset batch columns (``png``, ``jpg``, ``left.jpg``, ...)."""
    return [c for c in columns if not c.startswith("__")
            and c.rsplit(".", 1)[-1].lower() in _WDS_IMAGE_FIELDS]


def _wds_label(columns: dict[str, Any], i: int) -> str | None:
    """The label the job reads from a sample: its ``cls`` field, else its ``json``'s entry."""
    cls = columns["cls"][i] if "cls" in columns else None
    if not _missing(cls):
        return _text(cls) or None
    return _json_label(columns["json"][i]) if "json" in columns else None


def _json_label(meta: Any) -> str | None:
    """The ``label``/``cls``/``class``/``category`` entry of a JSON field, as the job reads it."""
    if isinstance(meta, bytes | str):  # read with decoder=None: the encoded JSON
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    if isinstance(meta, Mapping):
        value = next((meta[k] for k in _JSON_LABEL_KEYS if meta.get(k) is not None), None)
        return None if value is None else str(value)
    return None


def _missing(value: Any) -> bool:
    """A field the row lacks: None, or the NaN pandas fills in for it."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _decode_one(value: Any, pre: Any) -> tuple[np.ndarray, Any]:
    geometry = pre.decode_kwargs()
    if isinstance(value, Mapping):  # a Hugging Face Image struct
        value = value.get("bytes")
    if isinstance(value, np.ndarray) and value.dtype != object and value.ndim >= 2:
        return decode_array(value, **geometry)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        value = value.tobytes()
    if isinstance(value, bytes | bytearray | memoryview):
        return decode_image(bytes(value), **geometry)
    if value is None:
        raise DecodeError("no image in this row (null)")
    raise DecodeError(f"cannot use a {type(value).__name__} as an image (decoded uint8 array or bytes)")


def _strip_protocol(path: str) -> str:
    return _PROTOCOL.sub("", path)


def _relative(value: str, root: str | None) -> tuple[str, str | None]:
    """``value`` relative to ``root`` the way the job makes ids relative to its input."""
    if root is None:
        return value, None
    base = _strip_protocol(root).rstrip("/")
    path = _strip_protocol(value)
    if path.startswith(base + "/") or not base:
        return path[len(base):].lstrip("/"), None
    return value, f"{value} is not under root {root}; set root to the folder the ids are relative to"


def _source(root: str | None, rel: str) -> str:
    if root is None:
        return rel
    if root.startswith("file://"):  # the job names local files by their plain path
        root = root[len("file://"):]
    return f"{root.rstrip('/')}/{rel}"


__all__ = ["IMAGE_COLUMNS", "JOB_SETTINGS", "SettingsError", "SmoothGradMaps", "check_settings",
           "check_stage", "read_results"]
