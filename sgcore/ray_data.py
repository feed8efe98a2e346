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
rows :func:`sgcore.pipeline.run_job` writes (docs/design.md contract 5): the same
columns, types and geometry, and the same maps for the same images and
settings, because it runs the job's own code: the input layout's batch reader
(:func:`sgcore.io.decode_batch`: which rows are images, which column holds
them, ids, labels, by the rules and functions of the layout the job reads),
the decoder of :mod:`sgcore.io.decode`, the model's
:class:`~sgcore.models.Preprocess`, and the job's
:class:`~sgcore.pipeline.worker.ShardProcessor` (its model a
:class:`~sgcore.pipeline.replica.Replica` prepared once per actor: BatchNorm
folded, channels_last, precision, compile). Ids are formed as
the job forms them relative to its ``--input`` (``root``), so the per-image
seeds match too. What the job adds on top (exactly-once parts, resume, the
manifest, the audit) stays with the job.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import UserCodeException

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import Batch, BatchOptions, decode_batch, rows_to_table

# The job's settings this stage takes, under the job's config field names.
JOB_SETTINGS = (
    "model", "weights", "image_size", "target", "n_samples", "noise_level", "noise",
    "aggregate", "base", "ig_steps", "precision", "reduction", "seed", "store_full",
    "batch_size", "max_batch", "fold_bn", "compile", "labels", "storage_options",
    "input_format", "image_column", "label_column", "id_column",
)
# Where the batch comes from: ids relative to ``root``; input columns kept in the output.
STAGE_SETTINGS = ("root", "keep_columns")


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
        input_format: the layout of the batches, as the job's
            ``--input-format``; ``auto`` (default): image files for the columns
            of ``read_binary_files`` / ``read_images`` (``path`` with ``bytes``
            or ``image``), WebDataset samples for ``read_webdataset``'s
            (``__key__``), else a table's rows (Parquet). Each batch is read by
            that layout's code (:mod:`sgcore.io.layouts`), the job's, for the
            image column, ids, labels and which rows are images at all.
        image_column: the column holding the images: decoded ``uint8`` arrays
            of any size (``read_images``) or encoded bytes (``read_binary_files``,
            Parquet, WebDataset; a Hugging Face ``{"bytes": ...}`` struct too).
            None: files: ``bytes`` or ``image``; a table: the job's rule (the
            only binary column, else the first of ``image``, ``img``, ``jpg``,
            ..., ``bytes``, ``content``); WebDataset: each row's own image field
            (``png`` in one sample, ``jpg`` in the next, ``left.jpg``...), and a
            sample without one gives no row, as in the job. Read tars with
            ``ray.data.read_webdataset(url, decoder=None)``: Ray's default
            decoder turns images into arrays and fails on images of different
            sizes before this stage runs (and ignores EXIF orientation). Files
            that are no images (``notes.txt`` beside the photos, which
            ``read_binary_files`` reads too) give no row, as the job skips them.
        id_column: the column naming each image (default ``path``, from
            ``include_paths=True``). For WebDataset batches the id is
            ``<tar path>/<key>`` as in the job, the tar path from this column
            or ``__url__``, the key from ``__key__``.
        label_column: labels; None: files: the parent folder; a table: a
            column named ``label``, ``labels``, ``cls`` or ``class``;
            WebDataset: a sample's ``cls`` field, else the
            ``label``/``cls``/``class``/``category`` entry of its ``json``
            (all as the job reads them).
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
        from sgcore.pipeline.actors import actor_threads
        from sgcore.pipeline.worker import ShardProcessor, pick_device

        try:  # the driver checked already (see check_stage); this is for another Ray
            self.config = _config(settings)
        except ConfigError as e:
            raise ConfigError(_stage_message(e)) from None
        self.root = settings.get("root")
        self.keep_columns = tuple(settings.get("keep_columns", ()))
        in_worker = _in_ray_worker()
        use_gpu = in_worker and len(ray.get_gpu_ids()) > 0
        # A replica's threads as the job sets them; a direct call keeps torch's.
        threads = actor_threads(use_gpu) if in_worker else None
        self.processor = ShardProcessor(self.config, device=pick_device(use_gpu), threads=threads)
        self.preprocess = self.processor.loaded.preprocess
        cfg = self.config
        self.options = BatchOptions(root=self.root, image_column=cfg.image_column,
                                    label_column=cfg.label_column, id_column=cfg.id_column or "path",
                                    storage_options=cfg.storage_options)

    @staticmethod
    def settings(**settings: Any) -> dict[str, Any]:
        """The constructor keywords, checked here on the driver (see :func:`check_settings`)."""
        return check_settings(**settings)

    # ---------------------------------------------------------------- batches
    def __call__(self, batch: Any) -> pa.Table:
        """One result row per input image, in order (errors as ``status="error"`` rows).

        The batch is read and decoded by :func:`sgcore.io.decode_batch`, the job's
        layouts and decoder: rows that the job would not read (a file that is no
        image, a WebDataset sample without one) give no row.
        """
        data = Batch.of(batch)
        pre = self.preprocess
        shape = pre.map_shape
        decoded, kept = decode_batch(data, self.options, input_format=self.config.input_format,
                                     labels=self.config.labels, **pre.decode_kwargs())
        try:
            rows = self.processor.compute_rows(decoded)
        except Exception as e:  # the batch is never lost: one error row per image
            from sgcore.pipeline.worker import make_row

            message = f"batch failed: {type(e).__name__}: {e}"[:1000]
            rows = [make_row(self.config, None, rec, crop=shape, error=message)  # type: ignore[arg-type]
                    for rec in decoded.records]
        table = rows_to_table(rows, map_shape=shape,
                              channels=pre.channels if self.config.store_full else None)
        for name in self.keep_columns:
            values = data.column(name, "keep_columns:")
            table = table.append_column(name, pa.array([values[i] for i in kept]))
        return table


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


__all__ = ["JOB_SETTINGS", "SettingsError", "SmoothGradMaps", "check_settings",
           "check_stage", "read_results"]
