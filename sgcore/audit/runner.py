"""The audit of one results directory: a plan, one pass over the parts, then the sections.

1. :func:`plan_audit`: the results' manifest, the model, the ground truth and
   what the heavy checks will cost -- counted in model passes and, from a
   probe that times the model here, in seconds -- printed before any work.
2. One streaming pass (:func:`sgcore.audit.scan.scan`): each part file is
   read once and fed to every section (per-class view, localization,
   strategy features, the heavy checks' sample, the comparison).
3. The sections (:mod:`sgcore.audit.sections`, one module each), the heavy
   checks on the replica pool (recomputing maps on randomized models,
   perturbation curves), then the report.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sgcore.audit._workers import AuditWorker, Chunk, WorkerSpec, run_chunks
from sgcore.audit.config import QUICK, AuditConfig
from sgcore.audit.literature import literature_section
from sgcore.audit.report import Report, write_report
from sgcore.audit.results import check_model_files, load_images, read_boxes
from sgcore.audit.sanity import MapSettings
from sgcore.audit.scan import Index, SampleFeed, scan
from sgcore.audit.sections.classes import ClassFeed, class_section
from sgcore.audit.sections.compare import CompareFeed, compare_section
from sgcore.audit.sections.faithfulness import faithfulness_section
from sgcore.audit.sections.localization import LocalizationFeed, localization_section
from sgcore.audit.sections.overview import (
    SETTINGS,
    accuracy,
    csv_bytes,
    describe,
    error_reasons,
    overview_rows,
)
from sgcore.audit.sections.reliability import add_risks, reliability_section
from sgcore.audit.sections.road_pic import road_pic_section
from sgcore.audit.sections.sanity import sanity_section
from sgcore.audit.sections.strategies import StrategyFeed, strategy_section
from sgcore.errors import InputError, Stopped, stop_on_sigterm
from sgcore.io import join, url_to_fs
from sgcore.pipeline.pool import ItemFailed
from sgcore.pipeline.progress import format_duration
from sgcore.redact import redact_text
from sgcore.results import Results, open_results_dir, read_maps

__all__ = ["QUICK", "AuditConfig", "AuditPlan", "plan_audit", "run_audit"]


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What one replica's model costs here, measured before the heavy checks.

    Attributes:
        map_set: seconds for one image's map (n forward+backward passes in one batch).
        prepare: seconds to prepare a copy of the model (one per cascade step and chunk).
        forward: seconds of one forward pass of one image (in a batch of the curves' size).
        load: seconds to load the model.
        steps: the sanity cascade's steps (names), top first.
        layers: the weight layers the cascade walks.
        device: where it ran.
    """

    map_set: float
    prepare: float
    forward: float
    load: float
    steps: list[str]
    layers: int
    device: str


@dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """What the audit will do, decided before the pass over the parts."""

    config: AuditConfig
    results: Results
    model: str
    weights: str
    random_weights: bool
    settings: MapSettings
    run_settings: dict[str, Any]
    masks_root: str | None
    boxes: dict[str, np.ndarray] | None
    other: Results | None
    ok: int | None  # ok rows the manifest records (None: not recorded)
    errors: int | None
    spec: WorkerSpec | None
    probe: Probe | None
    worker: AuditWorker | None  # the probe's replica, reused when the checks run in this process

    @property
    def heavy(self) -> bool:
        return self.spec is not None

    @property
    def sample(self) -> int:
        return min(self.config.sample, self.ok) if self.ok is not None else self.config.sample

    @property
    def used(self) -> dict[str, Any]:
        return {k: getattr(self.settings, k) for k in SETTINGS}

    @property
    def truth(self) -> str | None:
        return "boxes" if self.boxes is not None else "masks" if self.masks_root else None

    def passes(self) -> dict[str, int]:
        """Model passes per check: sanity (forward+backward), faithfulness (forward)."""
        c, out = self.config, {}
        images = self.sample
        if c.sanity and self.probe is not None:
            out["sanity"] = images * (len(self.probe.steps) + 1) * int(self.settings.n_samples)
        if c.faithfulness:
            out["faithfulness"] = images * 4 * (c.steps + 1)
        return out

    def estimate(self) -> float | None:
        """Seconds the heavy checks should take on one replica like the probe's (model work only)."""
        p = self.probe
        if p is None:
            return None
        c = self.config
        chunks = -(-self.sample // c.chunk_size)
        seconds = 0.0
        if c.sanity:
            sets = len(p.steps) + 1
            seconds += self.sample * sets * p.map_set + chunks * sets * p.prepare
        if c.faithfulness:
            seconds += self.passes()["faithfulness"] * p.forward
        return seconds

    def line(self) -> str:
        """The plan in one line: the sample, the checks in passes, and the estimate."""
        c = self.config
        counts = (f"{self.sample} of {self.ok} ok image(s) sampled ({self.errors} error row(s) left out)"
                  if self.ok is not None else f"up to {c.sample} ok image(s) sampled")
        parts = [counts + f", chunks of {c.chunk_size}"]
        passes = self.passes()
        if c.sanity and self.probe is not None:
            p = self.probe
            parts.append(f"sanity: {self.sample} images x {len(p.steps) + 1} map sets ({len(p.steps)} "
                         f"{'layers' if len(p.steps) == p.layers else f'blocks of {p.layers} layers'}"
                         f" + the model as given) x n={self.settings.n_samples} samples")
        if c.faithfulness:
            parts.append(f"faithfulness: {self.sample} images x 4 curves x {c.steps + 1} points"
                         + (" (+ ROAD and PIC, CPU-bound image work not in the estimate; --no-road-pic skips them)"
                            if c.road_pic else ""))
        where = ("in this process" if _in_process(c) else
                 f"on {c.num_actors} replica(s)" if c.num_actors else "on as many replicas as the cluster's free CPUs/GPUs fit")
        total = f" = about {sum(passes.values()):,} forward(+backward) passes" if passes else ""
        line = "; ".join(parts) + total + f", {where}"
        if (seconds := self.estimate()) is not None and self.probe is not None:
            p = self.probe
            line += (f"; estimated {format_duration(seconds)} of model work on one replica (probe on {p.device}: "
                     f"one image's map {p.map_set:.2f}s, a forward {p.forward * 1000:.0f}ms, preparing a copy "
                     f"{p.prepare:.2f}s)")
        return line


def _in_process(config: AuditConfig) -> bool:
    return config.num_actors == 0


def plan_audit(config: AuditConfig, *, log: Callable[[str], None] = print) -> AuditPlan:
    """Opens the results and decides what the audit does; with heavy checks, loads the model here and times it.

    Everything a user can get wrong (results, model files, boxes, the other run) fails here, before any work.
    """
    results = open_results_dir(config.results, storage_options=config.storage_options, allow_partial=config.allow_partial)
    job = results.config
    model = config.model or job.get("model")
    weights = config.weights or job.get("weights") or "default"
    if not model:
        raise InputError(f"the manifest of {results.url} names no model; pass --model")
    settings = MapSettings.from_job(job, n_samples=config.n_samples)
    masks_root = None
    boxes: dict[str, np.ndarray] | None = None
    if config.localization and config.boxes:
        boxes = read_boxes(config.boxes, config.storage_options)  # bad files fail here, before any work
    elif config.localization:
        masks_root = config.masks or _default_masks(job.get("input"), config.storage_options)
    other = (open_results_dir(config.compare, storage_options=config.storage_options,
                              allow_partial=config.allow_partial) if config.compare else None)
    shards = [e for e in results.manifest.shards.values() if e.ok is not None]
    recorded = len(shards) == len(results.manifest.shards) and not results.missing
    ok = sum(int(e.ok or 0) for e in shards) if recorded else None
    errors = sum(int(e.errors or 0) for e in shards) if recorded else None
    spec = probe = worker = None
    if config.heavy:
        check_model_files(results, model, weights, config.storage_options, what="the audit")
        spec = WorkerSpec(
            model=model,
            weights=weights,
            image_size=job.get("image_size"),
            preprocess=results.preprocess.to_dict(),
            settings=settings,
            sanity=config.sanity,
            faithfulness=config.faithfulness,
            road_pic=bool(config.road_pic),
            literature=bool(config.literature),
            steps=config.steps,
            seed=config.seed,
            image_column=job.get("image_column"),
            use_gpu=config.gpus_per_actor > 0,
            score=job.get("score") or "logit",
            fold_bn=bool(job.get("fold_bn", True)),
            cascade=config.cascade,
            storage_options=config.storage_options,
        )
        log(f"audit: loading {redact_text(model)} here to time it (the plan's estimate)")
        worker, probe = _probe(spec, config)
    return AuditPlan(config=config, results=results, model=model, weights=weights,
                     random_weights=str(weights).lower() == "none", settings=settings,
                     run_settings={k: job.get(k) for k in SETTINGS}, masks_root=masks_root, boxes=boxes,
                     other=other, ok=ok, errors=errors, spec=spec, probe=probe,
                     worker=worker if _in_process(config) else None)


def _probe(spec: WorkerSpec, config: AuditConfig) -> tuple[AuditWorker, Probe]:
    """Loads one replica here and times one image's map, a prepared copy and a forward pass."""
    import torch

    from sgcore.audit.sanity import cascade_steps, randomization_order

    t0 = time.perf_counter()
    worker = AuditWorker(spec)
    load = time.perf_counter() - t0
    pre = worker.preprocess
    h, w = (pre.crop_size, pre.crop_size) if isinstance(pre.crop_size, int) else pre.crop_size
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, pre.channels, h, w), generator=gen).to(worker.device)
    x = (x - 0.5) / 0.25  # about the range of normalized pixels
    target = torch.zeros(1, dtype=torch.int64, device=worker.device)
    seeds = torch.zeros(1, dtype=torch.int64)
    order = randomization_order(worker.model, x) if spec.sanity else []
    steps = [name for name, _ in cascade_steps(worker.model, order, spec.cascade)] if order else []  # type: ignore[arg-type]
    t0 = time.perf_counter()
    spec.settings.maps(worker.prepared, x, target, seeds)
    map_set = time.perf_counter() - t0
    prepare = 0.0
    if spec.sanity:
        t0 = time.perf_counter()
        worker._prepare(worker.model)
        prepare = time.perf_counter() - t0
    batch = min(config.steps + 1, 16)
    t0 = time.perf_counter()
    with torch.no_grad():
        worker.prepared(x.expand(batch, *x.shape[1:]).contiguous())
    forward = (time.perf_counter() - t0) / batch
    return worker, Probe(map_set=map_set, prepare=prepare, forward=forward, load=load, steps=steps,
                         layers=len(order), device=str(worker.device))


def run_audit(
    config: AuditConfig,
    *,
    log: Any = print,
    on_chunk: Callable[[int, Any, int], None] | None = None,
) -> dict[str, Any]:
    """Audits ``config.results`` and writes the report; returns ``summary.json``'s content.

    Args:
        config: the audit's settings.
        log: where the plan and the progress lines go.
        on_chunk: called as each chunk of the heavy checks finishes, with its
            index, its output (or :class:`~sgcore.pipeline.pool.ItemFailed`)
            and the pid of the replica that ran it.

    Finished chunks of the heavy checks are kept under ``REPORT/_partial``
    until the report is written, so an audit stopped by Ctrl-C or SIGTERM and
    rerun with the same settings resumes from them.
    """
    t0 = time.perf_counter()
    on_ray = not _in_process(config) and (config.heavy or config.strategies)
    owns_ray = False
    previous = stop_on_sigterm()
    try:
        plan = plan_audit(config, log=log)
        log("audit plan: " + plan.line())
        if on_ray:
            from sgcore.pipeline.cluster import connect_ray

            owns_ray = connect_ray(config.address)
            stop_on_sigterm()  # again: Ray installs a handler of its own (a C++ stack dump)
        return _run(plan, t0, log=log, on_chunk=on_chunk, on_ray=on_ray)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if owns_ray:
            import ray

            ray.shutdown()


def _run(plan: AuditPlan, t0: float, *, log: Any, on_chunk: Callable[[int, Any, int], None] | None,
         on_ray: bool) -> dict[str, Any]:
    config, results = plan.config, plan.results
    report = Report(
        title="SmoothGrad audit",
        subtitle=(
            f"results {results.url} · model {plan.model} ({plan.weights}{', random' if plan.random_weights else ''}) · "
            f"maps of the run: {describe(plan.run_settings)}"
            + (f" · recomputed for the checks: {describe(plan.used)}" if plan.heavy else "")
            + f" · config {results.manifest.config_hash}"
        ),
    )
    if plan.random_weights:
        report.warnings.append(
            f"The model has random weights (--weights none): {plan.model} was never trained, so these maps explain "
            "an untrained network. Pass --weights to audit a trained model."
        )
    summary: dict[str, Any] = {
        "results": results.url,
        "model": plan.model,
        "weights": plan.weights,
        "random_weights": plan.random_weights,
        "config_hash": results.manifest.config_hash,
        "run_settings": plan.run_settings,
        # The settings the audit's recomputed maps used (what its numbers rest on).
        "settings": plan.used if plan.heavy else plan.run_settings,
        "quick": config.quick,
    }

    # ---- the one pass over the parts --------------------------------------------
    index = Index()
    classes = ClassFeed(examples=config.examples, border_width=config.border_width)
    feeds: list[Any] = [index, classes]
    localization = None
    if plan.truth:
        localization = LocalizationFeed(
            per_image=classes.per_image, url=results.url, preprocess=results.preprocess, masks_root=plan.masks_root,
            boxes=plan.boxes, boxes_url=config.boxes, tolerance=config.pointing_tolerance,
            storage_options=config.storage_options)
        feeds.append(localization)
    strategies = StrategyFeed(config.strategy_config(), on_ray=on_ray) if config.strategies else None
    if strategies is not None:
        feeds.append(strategies)
    sample = SampleFeed(config.sample if plan.heavy else 0, config.seed)
    feeds.append(sample)
    compare = CompareFeed(plan.other, results) if plan.other is not None else None
    if compare is not None:
        feeds.append(compare)
    what = ["per-class statistics"] + ([f"localization ({plan.truth})"] if plan.truth else []) \
        + (["strategy features"] if strategies else []) + (["the checks' sample"] if plan.heavy else []) \
        + ([f"the comparison with {config.compare}"] if compare else [])
    log(f"audit: one pass over {len(results.parts)} part(s): {', '.join(what)}")
    stream = _Progress("pass over the parts", len(results.parts), "parts", log)
    scan(results, feeds, on_part=lambda rows: stream.step(1))

    per_image, errors = classes.per_image, index.errors
    if not per_image or classes.map_shape is None:
        raise InputError(f"results at {results.url} hold no ok rows to audit"
                         + (f" ({len(errors)} error rows, e.g. {errors[0]['error']})" if errors else ""))
    summary["images"] = {"rows": len(per_image) + len(errors), "ok": len(per_image), "errors": len(errors),
                         "classes": len(classes.view.summaries())}
    summary["error_rows"] = error_reasons(errors)
    if errors:
        report.attach("error_rows.csv", csv_bytes(errors))
    table = index.table
    summary["accuracy"] = accuracy(table)
    report.overview.extend(overview_rows(results, plan.model, plan.weights, plan.random_weights, results.config,
                                         plan.run_settings, plan.used, plan.heavy, summary, config))

    def images_for(ids: list[str]) -> list[np.ndarray]:
        return _images_for(results, table, ids, config)

    # ---- the sections that read the pass -----------------------------------------
    class_section(report, summary, classes, border_width=config.border_width, examples=config.examples,
                  images_for=images_for)
    reliability = reliability_section(report, summary, per_image, config.reliability_threshold)
    localization_section(report, summary, localization)
    summary["strategies"] = None
    if strategies is not None:
        strategy_section(report, summary, per_image, strategies, log=log,
                         examples_for=lambda ids: _examples(results, table, ids, config))

    # ---- heavy checks on the sample, on the replica pool --------------------------
    summary["sanity"] = None
    summary["faithfulness"] = None
    summary["device"] = None  # where the maps were recomputed, when they were
    all_ids = table.column("image_id").to_pylist()
    rows = sample.rows()
    if plan.heavy:
        _heavy(plan, report, summary, table, rows, sample.maps(), log=log, on_chunk=on_chunk)

    recomputed = plan.heavy and plan.settings.n_samples != plan.run_settings.get("n_samples")
    add_risks(reliability, summary, per_image, heavy_ids=[all_ids[r] for r in rows] or None,
              heavy_note=(f"the run's maps of the sampled images; the checks recompute theirs at "
                          f"n={plan.settings.n_samples}" if recomputed else "the run's maps of the sampled images"))
    report.attach("per_image.csv", csv_bytes(per_image))  # with strategy and strategy_flagged

    if compare is not None:
        compare_section(report, summary, compare, margin=config.compare_margin, examples=config.examples)

    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["findings"] = report.findings()
    write_report(config.report, report, summary, config.storage_options)
    if plan.heavy:
        _Partial(config, plan.spec, results.manifest.config_hash).clear()  # type: ignore[arg-type]
    log(f"audit: wrote {join(config.report, 'index.html')} in {format_duration(summary['seconds'])}")
    return summary


def _heavy(plan: AuditPlan, report: Report, summary: dict[str, Any], table: Any, rows: list[int], maps: np.ndarray,
           *, log: Any, on_chunk: Callable[[int, Any, int], None] | None) -> None:
    """The sanity and faithfulness checks on the sampled rows, in chunks, resumable; fills their sections."""
    config, spec = plan.config, plan.spec
    if spec is None:  # plan.heavy is false: the caller does not come here
        raise RuntimeError("the audit's heavy checks need a plan with a worker spec (plan.heavy)")
    sources = _sources(table, rows, config.input)
    targets = table.column("target").to_pylist()
    seeds = table.column("seed").to_pylist()
    size = config.chunk_size
    chunks = [
        Chunk(
            sources=sources[i : i + size],
            targets=[int(targets[r]) for r in rows[i : i + size]],
            seeds=[int(seeds[r]) for r in rows[i : i + size]],
            maps=maps[i : i + size],
        )
        for i in range(0, len(rows), size)
    ]
    partial = _Partial(config, spec, plan.results.manifest.config_hash)
    kept = {i: v for i in range(len(chunks)) if (v := partial.load(i, chunks[i])) is not None}
    if kept:
        log(f"audit: resuming: {len(kept)} of {len(chunks)} chunk(s) kept from an earlier run in {partial.root}")
    todo = [i for i in range(len(chunks)) if i not in kept]
    images_kept = sum(len(chunks[i].sources) for i in kept)
    progress = _Progress("sanity/faithfulness", len(rows), "images", log, done=images_kept,
                         estimate=plan.estimate())
    sets = len(plan.probe.steps) + 1 if plan.probe is not None and config.sanity else 0
    current = {"chunk": 0}

    def finished(j: int, value: Any, pid: int) -> None:
        i = todo[j]
        if not isinstance(value, ItemFailed):
            partial.save(i, chunks[i], value)
        progress.step(len(chunks[i].sources), failed=isinstance(value, ItemFailed))
        current["chunk"] = j + 1
        if on_chunk is not None:
            on_chunk(i, value, pid)

    def step(done: int, total: int) -> None:
        progress.note(f"map set {done}/{total} of the next {len(chunks[todo[current['chunk']]].sources)} image(s)"
                      if current["chunk"] < len(todo) else f"map set {done}/{total}")

    try:
        fresh, record = run_chunks(
            spec, [chunks[i] for i in todo], num_actors=config.num_actors, address=config.address,
            gpus_per_actor=config.gpus_per_actor, max_retries=config.max_retries, on_result=finished,
            on_step=step if sets else None, log=log, worker=plan.worker,
        )
    except KeyboardInterrupt as e:
        done = sum(1 for i in range(len(chunks)) if partial.exists(i, chunks[i]))
        # Ray may turn the signal (sent to its workers too, as a process group) into a plain KeyboardInterrupt.
        signum = e.signum if isinstance(e, Stopped) else Stopped.received
        how = f"stopped by {signal.Signals(signum).name}" if signum is not None else "interrupted"
        images = sum(len(chunks[i].sources) for i in range(len(chunks)) if partial.exists(i, chunks[i]))
        log(f"audit: {how}; {done} of {len(chunks)} chunk(s) of the heavy checks are kept ({images} of "
            f"{len(rows)} images) in {partial.root}: rerun the same command to resume from them")
        e.reported = True  # type: ignore[attr-defined]  # run_cli adds no second line
        raise
    outputs_by_chunk = {**kept, **dict(zip(todo, fresh, strict=True))}
    ordered = [outputs_by_chunk[i] for i in range(len(chunks))]
    failed = [{"images": len(chunks[i].sources), "sources": chunks[i].sources, "reason": v.reason,
               "attempts": v.attempts} for i, v in enumerate(ordered) if isinstance(v, ItemFailed)]
    outputs = [v for v in ordered if not isinstance(v, ItemFailed)]
    summary["heavy"] = {"sampled": len(rows), "chunks": len(chunks), "resumed_chunks": len(kept),
                        "evaluated_images": sum(o["images"] for o in outputs), "failed_chunks": failed,
                        "estimated_seconds": plan.estimate(), "seconds": round(progress.elapsed(), 2),
                        **{k: record[k] for k in ("replicas", "replicas_lost")}}
    summary["device"] = sorted({o["device"] for o in outputs}) or None
    if failed:
        report.warnings.append(
            f"{sum(f['images'] for f in failed)} of {len(rows)} sampled images were left out of the sanity/"
            f"faithfulness checks: {failed[0]['reason']}" + (f" (and {len(failed) - 1} more chunk(s))"
                                                              if len(failed) > 1 else "")
        )
    if outputs and config.sanity:
        sanity_section(report, summary, outputs, plan.settings, plan.run_settings, plan.random_weights)
    if outputs and config.faithfulness:
        faithfulness_section(report, summary, outputs, config.steps)
        road_pic_section(report, summary, outputs)
    if outputs and config.literature:
        literature_section(report, summary, outputs)


# --------------------------------------------------------------------------- helpers


class _Progress:
    """Progress lines of one section: done/total, elapsed and ETA (at most one line per 2 s, always the last)."""

    def __init__(self, name: str, total: int, unit: str, log: Any, *, done: int = 0, every: float = 2.0,
                 estimate: float | None = None) -> None:
        self.name, self.total, self.unit, self.log, self.every = name, total, unit, log, every
        self.estimate = estimate  # the plan's seconds for the whole section: the ETA until a unit is done
        self.done = done
        self.start_done = done
        self.failed = 0
        self.t0 = time.perf_counter()
        self.last = -float("inf")

    def step(self, n: int, *, failed: bool = False) -> None:
        self.done += n
        self.failed += int(failed)
        now = time.perf_counter()
        if self.done < self.total and now - self.last < self.every:
            return
        self.last = now
        self.log(f"audit: {self.name} {self.done}/{self.total} {self.unit}"
                 + (f" ({self.failed} failed)" if self.failed else "") + f" | {self._times(now)}")

    def note(self, what: str) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.log(f"audit: {self.name} {self.done}/{self.total} {self.unit}, {what} | {self._times(now)}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _times(self, now: float) -> str:
        elapsed = now - self.t0
        fresh = self.done - self.start_done
        left = self.total - self.done
        if fresh > 0:
            eta = format_duration(elapsed / fresh * left)
        elif self.estimate is not None and self.total > self.start_done:
            share = left / (self.total - self.start_done)
            eta = "~" + format_duration(max(0.0, self.estimate * share - elapsed)) + " (plan)"
        else:
            eta = "?"
        return f"{format_duration(elapsed)} elapsed | ETA {eta if left else '0s'}"


class _Partial:
    """Finished chunks of the heavy checks, kept under ``REPORT/_partial`` until the report is written.

    A chunk's file name is a hash of everything its output depends on (results, model, weights,
    settings, seeds, images), so a rerun with other settings never reuses it.
    """

    def __init__(self, config: AuditConfig, spec: WorkerSpec, config_hash: str | None) -> None:
        self.root = join(config.report, "_partial")
        self.storage_options = config.storage_options
        self.base = json.dumps({
            "results": config.results, "config_hash": config_hash, "model": spec.model, "weights": spec.weights,
            "settings": {f.name: getattr(spec.settings, f.name) for f in fields(spec.settings)},
            "sanity": spec.sanity, "faithfulness": spec.faithfulness, "road_pic": spec.road_pic, "steps": spec.steps,
            "seed": spec.seed, "literature": spec.literature,
            "fold_bn": spec.fold_bn, "cascade": spec.cascade,
        }, sort_keys=True, default=str)

    def _url(self, i: int, chunk: Chunk) -> str:
        key = hashlib.sha256(json.dumps([self.base, chunk.sources, chunk.targets, chunk.seeds]).encode()).hexdigest()
        return join(self.root, f"chunk-{i:05d}-{key[:16]}.json")

    def exists(self, i: int, chunk: Chunk) -> bool:
        try:
            fs, path = url_to_fs(self._url(i, chunk), self.storage_options)
            return bool(fs.exists(path))
        except (OSError, InputError):
            return False

    def load(self, i: int, chunk: Chunk) -> dict[str, Any] | None:
        from sgcore.io import read_bytes

        url = self._url(i, chunk)
        try:
            fs, path = url_to_fs(url, self.storage_options)
            if not fs.exists(path):
                return None
            return json.loads(read_bytes(fs, path, url=url))
        except (OSError, ValueError, InputError):
            return None  # unreadable: recompute

    def save(self, i: int, chunk: Chunk, output: dict[str, Any]) -> None:
        from sgcore.io import write_bytes

        write_bytes(self._url(i, chunk), json.dumps(_plain(output)).encode(), self.storage_options)

    def clear(self) -> None:
        try:
            fs, path = url_to_fs(self.root, self.storage_options)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except OSError:
            pass


def _plain(v: Any) -> Any:
    """numpy arrays and scalars as JSON lists and numbers (NaN kept)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _sources(index: Any, rows: list[int], input_root: str | None) -> list[str]:
    if input_root:
        ids = index.column("image_id").to_pylist()
        return [join(input_root, ids[r]) for r in rows]
    sources = index.column("source").to_pylist()
    return [sources[r] for r in rows]


def _images_for(results: Results, index: Any, image_ids: list[str], config: AuditConfig) -> list[np.ndarray]:
    position = {image_id: i for i, image_id in enumerate(index.column("image_id").to_pylist())}
    sources = _sources(index, [position[i] for i in image_ids], config.input)
    return list(load_images(sources, results.preprocess, config.storage_options,
                            image_column=results.config.get("image_column")))


def _examples(results: Results, index: Any, image_ids: list[str], config: AuditConfig) -> tuple[list, list]:
    """Images and maps of a flagged strategy cluster's examples: known only after the pass, so their
    parts are read again (only the parts that hold one)."""
    position = {image_id: i for i, image_id in enumerate(index.column("image_id").to_pylist())}
    maps = read_maps(results, index, [position[i] for i in image_ids])
    return _images_for(results, index, image_ids, config), list(maps)


def _default_masks(input_url: str | None, storage_options: dict[str, Any]) -> str | None:
    """``<parent>/masks`` when the input is a folder named ``images`` and that exists."""
    if not input_url:
        return None
    trimmed = input_url.rstrip("/")
    if posixpath.basename(trimmed) != "images":
        return None
    candidate = posixpath.join(posixpath.dirname(trimmed), "masks")
    try:
        fs, path = url_to_fs(candidate, storage_options)
        return candidate if fs.isdir(path) else None
    except (InputError, ImportError, OSError):
        return None
