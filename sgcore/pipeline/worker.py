"""What one model replica does with one decoded shard (no Ray in here).

The Ray actor in :mod:`sgcore.pipeline.actors` and the Ray Data stage
(:mod:`sgcore.ray_data`) wrap :class:`ShardProcessor`, which holds the model as a
:class:`~sgcore.pipeline.replica.Replica`; tests use it directly.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgcore.attribution import reduce_channels
from sgcore.attribution.prepare import try_fold_batchnorm
from sgcore.config import JobConfig
from sgcore.errors import ConfigError, ModelError
from sgcore.io import (
    DecodedShard,
    Record,
    ResultRow,
    encode_part,
    npz_url,
    part_url,
    write_bytes,
)
from sgcore.io.output import commit_record, part_footer
from sgcore.models import LoadedModel, Preprocess, check_base, load_model
from sgcore.pipeline.replica import Replica, example_batch, pick_device, prepare_network  # noqa: F401 - re-exported
from sgcore.redact import redact_text, redact_url
from sgcore.seeds import image_seed

METHOD_NAMES = {"mean": "smoothgrad", "square": "smoothgrad_sq", "var": "vargrad"}


class ShardProcessor:
    """Holds one model :class:`~sgcore.pipeline.replica.Replica`; turns a decoded shard into result rows.

    Args:
        device: where the replica runs (default: the CPU).
        threads: torch's intra-op threads for a CPU replica (None: as they are).
        loaded: a model already loaded, used instead of loading it again.
    """

    # Live progress: images finished within a batch are reported at least this often (seconds).
    progress_interval: float | None = 1.0

    def __init__(self, config: JobConfig, *, device: torch.device | None = None,
                 loaded: LoadedModel | None = None, threads: int | None = None):
        self.config = config
        self.replica = Replica.for_job(config, device=device, threads=threads, loaded=loaded)
        check_base(config.model, config.base)
        self.device = self.replica.device
        self.loaded = self.replica.loaded
        self.model = self.replica.model  # the prepared network's logits: predictions
        # What the kernel differentiates: the logits, or their (log-)softmax (--score).
        self.explained = self.replica.explained
        self.categories = self.loaded.categories
        self._index = {name: i for i, name in enumerate(self.categories or [])}
        self.fixed_target = class_target(config.target, self.categories, self.loaded.num_classes)

    # ------------------------------------------------------------------ rows
    def compute_rows(self, decoded: DecodedShard,
                     on_batch: Callable[[int], None] | None = None) -> list[ResultRow]:
        """One row per record of ``decoded``, in order: ok with a map, or error.

        With a fixed ``n`` the kernel runs batch by batch. With ``--n-samples
        auto`` one adaptive call takes every image of the shard: an image that
        converges leaves the expanded batch and the next image *of the shard*
        takes its place, so the forward passes stay full up to the shard's last
        images (per batch, each batch's slowest images ran in ever emptier
        passes). An image's map depends only on its own seed and the settings,
        so the rows are the same either way.

        Args:
            on_batch: called with a number of images as they finish, about a
                batch at a time (live progress).
        """
        cfg = self.config
        rows = [self._base_row(decoded.shard_id, rec) for rec in decoded.records]
        todo = [i for i, rec in enumerate(decoded.records) if rec.index >= 0]
        chunks = [todo[start : start + cfg.batch_size] for start in range(0, len(todo), cfg.batch_size)]
        if cfg.target_reliability is None:
            for chunk in chunks:
                x, kept, targets = self._targets(decoded, chunk, rows)
                done = _Batches(cfg.batch_size, on_batch, interval=self.progress_interval)
                self._explain(x, kept, targets, rows, on_batch=done.add)  # each image as its samples are in
                done.flush(rest=len(chunk))  # and those that became errors before the kernel
            return rows
        picked = [self._targets(decoded, chunk, rows) for chunk in chunks]
        kept = [i for _, k, _ in picked for i in k]
        if on_batch is not None and len(todo) > len(kept):
            on_batch(len(todo) - len(kept))  # rows that became errors before the kernel are done
        if kept:
            x = torch.cat([p[0] for p in picked if p[1]])
            self._explain(x, kept, [t for _, _, ts in picked for t in ts], rows, on_batch=on_batch)
        return rows

    def _base_row(self, shard_id: str, rec: Record) -> ResultRow:
        return make_row(self.config, shard_id, rec, crop=self.loaded.preprocess.map_shape,
                        label_index=self._index.get(rec.label) if rec.label is not None else None)

    def _targets(self, decoded: DecodedShard, chunk: list[int],
                 rows: list[ResultRow]) -> tuple[torch.Tensor, list[int], list[int]]:
        """The model's prediction for each image of ``chunk`` and the class to explain.

        Fills ``predicted``, ``target`` and ``score`` of their rows (or an error
        row for a label the model does not know); returns the model inputs of
        the images to explain, their row numbers and their targets.
        """
        cfg = self.config
        idx = [decoded.records[i].index for i in chunk]
        pixels = torch.from_numpy(np.ascontiguousarray(decoded.images[idx]))
        x = self.replica.inputs(pixels)
        with torch.no_grad(), _model_errors(self.config, x):
            probs = torch.softmax(self.model(x).float(), dim=1)
        predicted = probs.argmax(dim=1)
        keep: list[int] = []
        targets: list[int] = []
        for j, i in enumerate(chunk):
            row = rows[i]
            row.predicted = int(predicted[j])
            row.predicted_name = self._name(int(predicted[j]))
            if self.fixed_target is not None:
                target = self.fixed_target
            elif cfg.target == "label":
                if row.label_index is None:
                    row.fail(f"--target label: label {row.label!r} is not among the model's categories")
                    continue
                target = int(row.label_index)
            else:
                target = int(predicted[j])
            row.target = target
            row.target_name = self._name(target)
            row.score = float(probs[j, target])
            keep.append(j)
            targets.append(target)
        return x[keep], [chunk[j] for j in keep], targets

    def _explain(self, x: torch.Tensor, kept: list[int], targets: list[int], rows: list[ResultRow], *,
                 on_batch: Callable[[int], None] | None = None) -> None:
        """The maps of model inputs ``x`` (rows ``kept``, classes ``targets``) into their rows."""
        if not kept:
            return
        cfg = self.config
        seeds = torch.tensor([rows[i].seed for i in kept], dtype=torch.int64)
        target_t = torch.tensor(targets, dtype=torch.int64, device=self.device)
        with _model_errors(self.config, x):
            if cfg.target_reliability is None:
                result = self.replica.explain(x, target_t, seeds=seeds, **cfg.kernel_arguments(),
                                              return_reliability=True, reliability_reduction=cfg.reduction,
                                              on_done=on_batch)
            else:
                kw = {k: v for k, v in cfg.kernel_arguments().items() if k not in ("n_samples", "ig_steps")}
                done = _Batches(cfg.batch_size, on_batch)
                result = self.replica.explain_adaptive(
                    x, target_t, seeds=seeds, target_reliability=cfg.target_reliability,
                    min_samples=cfg.min_samples, max_samples=cfg.max_samples,
                    reliability_reduction=cfg.reduction, on_done=done.add, **kw)
                done.flush()
        maps = result.maps
        reliability = result.reliability.cpu().tolist()
        reproducibility = result.reproducibility.cpu().tolist()
        used = result.n_samples.tolist()
        reduced = reduce_channels(maps, cfg.reduction).cpu().numpy()
        full = maps.cpu().numpy() if cfg.store_full else None
        for k, i in enumerate(kept):
            row = rows[i]
            m = reduced[k]
            if not np.isfinite(m).all():
                row.fail("saliency map has NaN/Inf values (non-finite gradient)")
                continue
            if np.abs(m).max(initial=0.0) > 65504.0:
                row.fail("saliency map exceeds the float16 range (|value| > 65504)")
                continue
            row.saliency = m.astype(np.float16)
            row.reliability = reliability[k]
            row.reproducibility = reproducibility[k]
            row.n_samples = int(used[k])
            if cfg.target_reliability is not None:  # a NaN estimate never reached the target
                row.capped = row.n_samples >= cfg.max_samples and not reliability[k] >= cfg.target_reliability
            if full is not None:
                row.saliency_full = full[k].astype(np.float16)

    def _name(self, index: int) -> str | None:
        cats = self.categories
        return cats[index] if cats is not None and 0 <= index < len(cats) else None

    # ----------------------------------------------------------------- write
    def process(self, decoded: DecodedShard, *, config_hash: str, attempt: int = 0,
                before_commit: Callable[[], None] | None = None,
                on_batch: Callable[[int], None] | None = None, fence: Any = None) -> ShardSummary:
        """Computes a shard's rows and commits its part; returns its summary.

        Args:
            before_commit: called just before the part is written; raising there
                commits nothing (the actor checks that its driver still runs).
            on_batch: see :meth:`compute_rows`.
            fence: the run's lease fence (:func:`write_part`); None writes unfenced.
        """
        t0 = time.perf_counter()
        rows = self.compute_rows(decoded, on_batch)
        seconds_compute = time.perf_counter() - t0
        if before_commit is not None:
            before_commit()
        commit = write_part(self.config, self.loaded.preprocess, decoded.shard_id, rows, config_hash=config_hash,
                            content=decoded.content, fence=fence)
        return ShardSummary.of(decoded.shard_id, rows, seconds=time.perf_counter() - t0,
                               seconds_compute=seconds_compute, attempt=attempt, finished=time.time(),
                               commit=commit)


def class_target(target: str, categories: list[str] | None, num_classes: int) -> int | None:
    """The class index of ``--target class:NAME_OR_INDEX`` (None for predicted/label).

    Raises:
        ConfigError: a name the model's categories do not hold, or an index out of range.
    """
    if not target.startswith("class:"):
        return None
    value = target[len("class:"):].strip()
    if categories is not None and value in categories:
        return categories.index(value)
    if value.lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < num_classes:
            raise ConfigError(f"--target {target}: class index must be in [0, {num_classes - 1}]; got {index}")
        return index
    if categories is None:
        raise ConfigError(f"--target {target}: the model has no category names; give a class index "
                          f"(class:0 .. class:{num_classes - 1})")
    import difflib

    close = difflib.get_close_matches(value, categories, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"--target {target}: no category {value!r} among the model's {len(categories)}{hint}")


class _Batches:
    """Counts images as the kernel finishes them; reports a batch at a time, or what finished in the
    last ``interval`` seconds (None: batches only), so that a slow batch is not ``0/N`` until its end
    and a fast one is not a report per image."""

    def __init__(self, size: int, report: Callable[[int], None] | None, *, interval: float | None = None) -> None:
        self.size, self.report, self.interval = size, report, interval
        self.pending = self.reported = 0
        self.last = time.monotonic()

    def add(self, _image: int) -> None:
        self.pending += 1
        if self.pending >= self.size or (self.interval is not None
                                         and time.monotonic() - self.last >= self.interval):
            self.flush()

    def flush(self, rest: int | None = None) -> None:
        """Reports what is pending (``rest``: the images of the batch in all, the ones not seen counted too)."""
        if rest is not None:
            self.pending = max(self.pending, rest - self.reported)
        if self.pending and self.report is not None:
            self.report(self.pending)
        self.reported += self.pending
        self.pending = 0
        self.last = time.monotonic()


@contextlib.contextmanager
def _model_errors(config: JobConfig, x: torch.Tensor) -> Iterator[None]:
    """Turns an error the model raises on every input of this shape into a :class:`ModelError`.

    Shape and dtype errors (``RuntimeError``, ``TypeError``, ``ValueError``,
    ``IndexError``) repeat on every retry and every image; out-of-memory and CUDA
    errors may not, so they pass unchanged (the shard is retried).
    """
    try:
        yield
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, torch.OutOfMemoryError) or "CUDA" in text or "out of memory" in text:
            raise
        if len(text) > 500:
            text = text[:500] + "..."
        size = f", --image-size {config.image_size}" if config.image_size else ""
        raise ModelError(
            f"model {config.model!r} fails on its input (a batch of shape {tuple(x.shape)}, "
            f"{str(x.dtype).removeprefix('torch.')}{size}): {type(e).__name__}: {text}"
        ) from None


def probe_model(config: JobConfig) -> LoadedModel:
    """Loads the model on the CPU and runs it on one blank input, in the driver.

    Bad weights, a bad architecture name or a crop the model cannot take
    (``--image-size 1``) then fail in seconds, before Ray starts.

    Raises:
        ConfigError: the model or its weights cannot be loaded.
        ModelError: the model fails on an input of the configured size.
    """
    loaded = load_model(config.model, config.weights, image_size=config.image_size,
                        storage_options=config.storage_options, preprocess=config.preprocess)
    pre = loaded.preprocess
    pixels = torch.zeros((1, pre.height, pre.width, pre.channels), dtype=torch.uint8)
    x = loaded.preprocess.normalize(pixels)
    model = loaded.model.eval()
    with torch.no_grad(), _model_errors(config, x):
        model(x)
    note = unfolded_note(config, loaded)
    if note is not None:
        print(note, file=sys.stderr, flush=True)
    return loaded


def make_row(config: JobConfig, shard_id: str, rec: Record, *, crop: int | tuple[int, int],
             label_index: int | None = None, error: str | None = None) -> ResultRow:
    """The row of one input record before the model runs (status from the record).

    ``crop``: the map's size, an int (square) or ``(H, W)``. The ``source`` and
    ``error`` columns hold URLs with their credentials redacted (:mod:`sgcore.redact`).
    """
    err = redact_text(rec.error or error)
    map_h, map_w = (crop, crop) if isinstance(crop, int) else crop
    geo = rec.geometry
    placement = {} if geo is None else dict(
        orig_height=geo.orig_height, orig_width=geo.orig_width,
        resized_height=geo.resized_height, resized_width=geo.resized_width,
        crop_top=geo.crop_top, crop_left=geo.crop_left,
    )
    return ResultRow(
        image_id=rec.image_id,
        source=redact_url(rec.source),
        shard=shard_id,
        status="error" if err else "ok",
        error=err,
        label=rec.label,
        label_index=label_index,
        method=METHOD_NAMES[config.aggregate],
        base=config.base,
        score_type=config.score,
        noise_level=float(config.noise_level),
        n_samples=int(config.n_samples),
        seed=image_seed(config.seed, rec.image_id),
        map_height=map_h,
        map_width=map_w,
        **placement,
    )


@dataclass(kw_only=True)
class ShardSummary:
    """What processing one shard came to: its counts, and where and how long it ran.

    The part's footer holds ``shard``, ``rows``, ``ok`` and ``errors``; the
    driver's recorder (:mod:`sgcore.pipeline.recorder`) takes the rest into the
    manifest. ``pid``, ``node``, ``device`` and ``max_rss_mb`` are filled by the
    actor that ran it (None for a shard that failed every attempt).
    """

    shard: str
    rows: int
    ok: int
    errors: int
    attempt: int = 0
    seconds: float = 0.0
    seconds_compute: float = 0.0
    finished: float | None = None
    pid: int | None = None
    node: str | None = None
    device: str | None = None
    max_rss_mb: float | None = None
    commit: dict[str, Any] | None = None  # the part as committed: fence, size, sha256, stamp
    capped: int = 0  # --n-samples auto: maps that stopped at max_samples below the target

    @classmethod
    def of(cls, shard_id: str, rows: Sequence[ResultRow], **extra: Any) -> ShardSummary:
        ok = sum(1 for r in rows if r.ok)
        capped = sum(1 for r in rows if r.ok and r.capped)
        return cls(shard=shard_id, rows=len(rows), ok=ok, errors=len(rows) - ok, capped=capped, **extra)

    def counts(self) -> dict[str, Any]:
        """The part footer's share: shard, rows, ok, errors."""
        return {"shard": self.shard, "rows": self.rows, "ok": self.ok, "errors": self.errors}


def write_part(
    config: JobConfig,
    preprocess: Preprocess,
    shard_id: str,
    rows: Sequence[ResultRow],
    *,
    config_hash: str,
    status: str = "committed",
    content: str | None = None,
    fence: Any = None,
) -> dict[str, Any]:
    """Encodes and commits one shard (npz first, so the Parquet part marks commit).

    The worker commits a processed shard and the driver the error rows of one
    that failed every attempt, both through here: the maps' shape comes from
    ``preprocess``, ``saliency_full`` from ``config.store_full``.

    Args:
        status: recorded in the part's footer next to ``config_hash`` and the
            counts: ``"committed"`` when the shard was processed (per-image
            errors included), ``"failed"`` when its rows are error rows for a
            shard that failed every attempt. A rerun skips only committed parts.
        content: the identity of the shard's input files (``ShardSpec.content``);
            a rerun redoes the shard when it differs from the listing's.
        fence: the run's :class:`sgcore.io.lease.Fence`: its epoch and token go
            into the footer, and each file becomes visible only while the run
            holds the output (:func:`sgcore.io.write_bytes`).

    Returns:
        The commit record the manifest keeps (:data:`sgcore.io.output.COMMIT_KEYS`):
        the fence's epoch and token, the part's size, sha256 and stamp, and ``content``.

    Raises:
        LeaseLost: the run lost the output; nothing more was made visible.
    """
    summary = ShardSummary.of(shard_id, rows)
    footer = part_footer(shard_id, config_hash=config_hash, status=status, content=content,
                         rows=summary.rows, ok=summary.ok, fence=fence)
    parquet, npz = encode_part(rows, map_shape=preprocess.map_shape, metadata=footer, fmt=config.format,
                               channels=preprocess.channels if config.store_full else None)
    if npz is not None:
        write_bytes(npz_url(config.output, shard_id), npz, config.storage_options, fence=fence)
    written = write_bytes(part_url(config.output, shard_id), parquet, config.storage_options, fence=fence)
    return commit_record(footer, parquet, written)


def check_owner(config: JobConfig, shard_id: str, fence: Any) -> None:
    """Refuses to commit ``shard_id`` unless this run still holds the output (its lease fence).

    One small read of ``_lease.json`` (not of the manifest): the cost of a
    commit does not grow with the output. The commit itself checks again where
    it takes effect (:meth:`sgcore.io.lease.Fence.held`).

    Raises:
        LeaseLost: another run holds the output now, naming it.
    """
    if fence is not None:
        fence.check()


def _prepare(loaded: LoadedModel, config: JobConfig, device: torch.device) -> torch.nn.Module:
    """The prepared logits model of a job's replica on ``device`` (:class:`~sgcore.pipeline.replica.Replica`)."""
    return Replica(loaded.name, loaded=loaded, fold_bn=config.fold_bn, compile=config.compile, device=device).model


def unfolded_note(config: JobConfig, loaded: LoadedModel) -> str | None:
    """One line naming the model when its BatchNorm cannot be folded (None when it can, or
    when ``--no-fold-bn``): the driver prints it once instead of every replica warning."""
    if not config.fold_bn:
        return None
    _, why = try_fold_batchnorm(loaded.network, example_batch(loaded.preprocess, torch.device("cpu")))
    if why is None:
        return None
    return (f"[sgcore] --model {redact_text(config.model)}: BatchNorm not folded ({why}); "
            "the maps are the same, each replica is only slower")
