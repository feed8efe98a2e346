"""The job driver: plan shards, run them through a pool of model actors, commit.

Exactly-once rows (docs/design.md contract 4) rest on three things: every shard
writes one part with a deterministic name (a retry overwrites, never adds);
a part is committed atomically; and a rerun skips shards whose part carries
the same config hash and the footer status ``committed``. A shard that failed
every attempt still gets a part (error rows for its images, status
``failed``) and is redone by the next run. ``_SUCCESS`` is written last, only
when every shard is committed.

The driver keeps the output's manifest (:class:`sgcore.io.Manifest`; its
schema is in :mod:`sgcore.io.output`, which owns the output directory): written
when a run starts work, updated in memory as shards finish (by the
:class:`~sgcore.pipeline.recorder.Recorder`, from the scheduler's shard
outcomes), checkpointed while they do (:class:`~sgcore.pipeline.recorder.Checkpoints`:
at most every 30 s and at most 5 % of the run's time, so a run that dies leaves
the record of its commits and the next one reads no footer of those), written
again when the run ends. The run's actors are killed when it ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import signal
import time
from typing import Any

import ray

from sgcore.config import JobConfig
from sgcore.errors import ConfigError, InputError, Stopped, stop_on_sigterm
from sgcore.io import (
    Manifest,
    OutputDir,
    RunEntry,
    ShardSpec,
    plan_shards,
    set_default_policy,
    storage_policy,
)
from sgcore.io._fs import is_local
from sgcore.io.labels import LabelsFile, load_labels
from sgcore.io.lease import Fence, Lease, LeaseLost
from sgcore.io.output import LEASE_NAME, now
from sgcore.models import (
    Preprocess,
    check_base,
    model_identity,
    probe_on_driver,
    resolve_preprocess,
)
from sgcore.models.checkpoint import read_once
from sgcore.pipeline._faults import parse_faults
from sgcore.pipeline.backends import RayJobBackend
from sgcore.pipeline.cluster import connect_ray
from sgcore.pipeline.progress import Progress, plural
from sgcore.pipeline.recorder import JobFailed, JobResult, StorageFailed
from sgcore.pipeline.scheduler import JobBackend, JobScheduler
from sgcore.pipeline.worker import class_target, probe_model

__all__ = ["JobFailed", "JobResult", "StorageFailed", "job_hash", "plan_fingerprint", "run_job"]

log = logging.getLogger("sgcore")

def plan_fingerprint(shards: list[ShardSpec]) -> str:
    """A hash of the shard plan: which images go in which shard."""
    h = hashlib.sha256()
    for s in shards:
        h.update(s.shard_id.encode())
        for m in s.planned_ids():  # one at a time: a Parquet range holds no id per row
            h.update(b"\x00" + m.encode())
    return h.hexdigest()[:16]


def job_hash(config: JobConfig, identity: dict[str, Any], preprocess: Preprocess) -> str:
    """The config hash with the content of every other input that decides the rows.

    That is the sha256 of the model's files (weights, archive and its preprocessing
    sidecar, directory), of the ``--labels`` table, and the resolved preprocessing
    (whatever declared it: flags, sidecar, checkpoint, library or a ``py:`` factory).
    Parts carry it: a resume after one of them changed at the same URL finds no part
    of its own and is refused by :func:`_guard_output`, naming what changed.
    """
    blob = json.dumps({"config": config.config_hash(), "files": identity.get("files") or {},
                       "labels": identity.get("labels") or {}, "preprocess": preprocess.to_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _labels_on_driver(config: JobConfig, identity: dict[str, Any]) -> LabelsFile | None:
    """The ``--labels`` table, read once here; its sha256 goes into ``identity`` (the manifest's
    ``model`` record, next to the model's files) and so into the config hash."""
    if not config.labels:
        return None
    table = load_labels(config.labels, config.storage_options)
    identity["labels"] = {config.labels: table.sha256}
    return table


def _model_on_driver(config: JobConfig) -> tuple[Preprocess, dict[str, Any]]:
    """The model's preprocessing and provenance, checked before any Ray work.

    A torchvision model with downloadable weights is not built here (no
    download on the driver). Any other model is loaded once, as each replica
    will, and run on one blank input: a bad spec, a checkpoint of another
    architecture, a file that is no archive or a crop the model cannot take
    (``--image-size 1``) then stops the job with one line before a cluster is
    involved.
    """
    with read_once():  # preprocessing, identity and probe share one download of each weights file
        if not probe_on_driver(config.model, config.weights):
            preprocess = resolve_preprocess(config.model, config.weights, image_size=config.image_size,
                                            storage_options=config.storage_options, preprocess=config.preprocess)
            return preprocess, model_identity(config.model, config.weights, storage_options=config.storage_options)
        loaded = probe_model(config)
        class_target(config.target, loaded.categories, loaded.num_classes)
        identity = (model_identity(config.model, config.weights, storage_options=config.storage_options)
                    if loaded.source in ("torchvision", "demo") else loaded.identity())
        return loaded.preprocess, identity


def run_job(config: JobConfig, *, backend: JobBackend | None = None) -> JobResult:
    """Runs (or resumes) a SmoothGrad job; see ``python -m jobs.smoothgrad --help``.

    Args:
        config: the job's settings.
        backend: where the shard replicas run: Ray (default: the cluster of
            ``config.address``, else a local Ray of its own), or
            :class:`sgcore.pipeline.inprocess.InProcessJobBackend` (no Ray: this
            process, for tests of the scheduler's decisions).

    Raises:
        ConfigError: bad settings, or an output written with another config.
        InputError: the input cannot be listed or holds no images.
        JobFailed: more than ``max_error_rate`` of the images failed.
    """
    previous_policy = set_default_policy(storage_policy(config.storage_retry_s))
    previous_handler = stop_on_sigterm()
    try:
        return _run_job(config, backend)
    finally:
        set_default_policy(previous_policy)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _run_job(config: JobConfig, backend: JobBackend | None) -> JobResult:
    t0 = time.perf_counter()
    started = now()
    if config.inject_faults:
        try:
            parse_faults(config.inject_faults)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    check_base(config.model, config.base)
    preprocess, identity = _model_on_driver(config)
    labels = _labels_on_driver(config, identity)
    shards = plan_shards(
        config.input, shard_size=config.shard_size, limit=config.limit,
        input_format=config.input_format, image_column=config.image_column,
        label_column=config.label_column, id_column=config.id_column,
        labels=labels, storage_options=config.storage_options,
    )
    chash = job_hash(config, identity, preprocess)
    fingerprint = plan_fingerprint(shards)
    out = OutputDir(config.output, config.storage_options)
    if out.is_local_file():
        raise ConfigError(f"--output {config.output} is a file; give a directory for the results")
    # One writer at a time: from the output checks to the last manifest write, this
    # run holds the output's lease (a second run is refused with one line naming it).
    new_dir = is_local(out.fs) and not out.fs.exists(out.path)
    lease = Lease(config.output, config.storage_options)
    lease.acquire()
    lease.start_heartbeat()
    try:
        return _run_claimed(config, out, lease, preprocess, identity, shards, chash, fingerprint,
                            t0=t0, started=started, backend=backend)
    except LeaseLost as e:
        # Another run holds the output now: nothing more of ours may land there.
        raise JobFailed(f"{e}; stopped without writing more to {config.output}") from None
    finally:
        # A run that never started leaves no folder made only for its claim; otherwise the
        # released lease stays, so that the next holder's epoch is higher.
        empty = new_dir and _only_the_lease(out)
        lease.release(remove=empty)
        if empty:
            with contextlib.suppress(OSError):
                os.rmdir(out.path)


def _only_the_lease(out: OutputDir) -> bool:
    try:
        return os.listdir(out.path) == [LEASE_NAME]
    except OSError:
        return False


def _run_claimed(config: JobConfig, out: OutputDir, lease: Lease, preprocess: Preprocess,
                 identity: dict[str, Any], shards: list[ShardSpec], chash: str, fingerprint: str, *,
                 t0: float, started: str, backend: JobBackend | None = None) -> JobResult:
    """The run proper, under ``lease``: every file it makes visible carries the lease's fence."""
    fence = lease.fence
    _guard_output(config, out, chash, fingerprint, identity, preprocess, fence)
    removed = out.remove_temp_files()  # safe under the lease: no other writer is alive
    if removed:
        log.info("removed %s of a writer that died: %s", plural(len(removed), "temporary file"),
                 ", ".join(removed[:5]))
    # --overwrite (or another config) starts a new record; a resume extends it.
    old = None if config.overwrite else out.read_manifest()
    if old is not None and old.config_hash != chash:
        old = None
    committed = _committed_shards(out, shards, chash, old)
    todo = [s for s in shards if s.shard_id not in committed]
    fresh = out.read_manifest() is None
    run = RunEntry.begin(started, shards=len(todo), skipped=len(committed), fence=fence)
    manifest = Manifest.begin(config=config.public_dict(), config_hash=chash, preprocess=preprocess.to_dict(),
                              model=identity, fingerprint=fingerprint, shards=shards, committed=committed,
                              previous=old, run=run)
    if todo:
        out.remove_success(fence)
        out.write_manifest(manifest, fence)

    result = JobResult(output=config.output, shards=len(shards), shards_skipped=len(committed))
    progress = Progress(sum(s.size for s in shards), len(shards), enabled=config.progress)
    progress.skip(sum(s.size for s in shards if s.shard_id in committed), len(committed))
    if committed and todo and config.progress:
        print(f"[sgcore] resuming: {plural(progress.skipped_images, 'image')} in "
              f"{plural(len(committed), 'shard')} already done, {plural(len(todo), 'shard')} to go",
              file=progress.stream, flush=True)
    for sid in committed:
        entry = manifest.shards[sid]
        result.rows += entry.rows or 0
        result.ok += entry.ok or 0
        result.errors += entry.errors or 0
    before = (result.rows, result.ok, result.errors)
    result.images_skipped = result.rows

    status = "stopped"
    never_started = False
    storage_failure: StorageFailed | None = None
    lost = False
    try:
        if todo:
            owns_ray = False
            if backend is None:
                owns_ray = connect_ray(config.address)
                stop_on_sigterm()
                backend = RayJobBackend()
            scheduler = None
            try:
                scheduler = JobScheduler(backend, config, chash, preprocess, todo, manifest, result, progress,
                                         lease, fence, write_manifest=lambda: out.write_manifest(manifest, fence))
                # What the replicas really hold (a CPU-only cluster: 0 GPUs, whatever was asked).
                run.gpus_per_actor = scheduler.plan.num_gpus
                run.gpus_per_actor_requested = config.gpus_per_actor
                manifest.config["gpus_per_actor"] = scheduler.plan.num_gpus
                scheduler.run()
            finally:
                if scheduler is not None:
                    scheduler.close()  # the run's actors end with it, not at a later garbage collection
                if scheduler is not None and scheduler.requested_capacity:
                    backend.release_capacity()
                if owns_ray:
                    ray.shutdown()
        progress.maybe_print(force=True)
        status = "complete" if result.success else "failed"
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Stopped) else Stopped.received
        if signum is not None:
            run.stopped_by = Stopped(signum).args[0]
        raise
    except StorageFailed as e:
        status = "failed"
        storage_failure = e
        raise
    except LeaseLost:
        # Another run holds the output now: its manifest is not ours to write.
        status, lost = "failed", True
        raise
    except (ConfigError, InputError):
        # A run that never started (a replica refused the settings) leaves nothing.
        never_started = fresh and not out.has_parts()
        raise
    finally:
        result.seconds = time.perf_counter() - t0
        computed = result.rows - result.images_skipped
        result.images_per_s = computed / result.seconds if result.seconds > 0 else 0.0
        run.finished, run.status, run.seconds = now(), status, round(result.seconds, 2)
        run.shards_failed, run.failed_shards = result.shards_failed, list(result.failed_shards)
        run.rows, run.ok = result.rows - before[0], result.ok - before[1]
        run.errors = result.errors - before[2]
        run.actors, run.actors_lost = result.actors, result.actors_lost
        run.worker_max_rss_mb = round(result.worker_max_rss_mb, 1)
        run.driver_max_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        for entry in manifest.shards.values():
            if entry.status == "running":  # in flight when the run ended: not done
                entry.status = "pending"
        manifest.status = status
        manifest.finished = run.finished
        if lost:
            pass
        elif never_started:
            out.remove_manifest(fence)
        else:
            _write_final_manifest(config, out, manifest, storage_failure, fence)
    if status == "complete":
        out.write_success(fence)
    return result


def _write_final_manifest(config: JobConfig, out: OutputDir, manifest: Manifest,
                          storage_failure: StorageFailed | None, fence: Fence) -> None:
    """The run's last manifest write; while storage is down, a short try that names the shards."""
    if storage_failure is None:
        out.write_manifest(manifest, fence)
        return
    previous = set_default_policy(storage_policy(min(config.storage_retry_s, 5.0)))
    try:
        out.write_manifest(manifest, fence)
    except OSError as e:
        raise StorageFailed(f"{storage_failure}; the manifest could not be written either ({e})") from None
    finally:
        set_default_policy(previous)


def _guard_output(config: JobConfig, out: OutputDir, chash: str, fingerprint: str,
                  identity: dict[str, Any] | None = None, preprocess: Preprocess | None = None,
                  fence: Fence | None = None) -> None:
    """Refuses to mix two configs (or two input listings) in one output."""
    old = out.read_manifest()
    if old is None:
        if config.overwrite and out.has_parts():
            out.clear(fence)  # parts without a manifest (an --overwrite stopped half way)
        return
    if config.overwrite:
        out.clear(fence)  # _SUCCESS and the manifest first, then the parts
        return
    if not out.has_parts():
        return  # a run that stopped before writing anything (bad weights, say)
    if old.config_hash != chash:
        raise ConfigError(_what_changed(config, old, identity or {}, preprocess))
    if old.plan.fingerprint != fingerprint:
        raise ConfigError(
            f"the input listing of {config.input} changed since {config.output} was written "
            "(files added or removed); use a new --output, or pass --overwrite"
        )


def _what_changed(config: JobConfig, old: Manifest, identity: dict[str, Any], preprocess: Preprocess | None) -> str:
    """Why ``old`` is of another job, in one line: a flag, else a file (model, labels) whose
    content changed at the same URL, else the resolved preprocessing."""
    way_out = "use a new --output, or pass --overwrite to replace them"
    since = f"changed since {config.output} was written"
    flags = _diff(old.config, config.result_fields(), empty="")
    if flags:
        return f"{config.output} holds results of another config (changed: {flags}); {way_out}"
    # JSON both sides: the manifest holds lists where to_dict() may hold tuples.
    pre = _diff(old.preprocess, json.loads(json.dumps(preprocess.to_dict())), empty="") if preprocess else ""
    model = _replaced(old.model.get("files"), identity.get("files"))
    if model:
        name, was, is_ = model
        also = f"; preprocessing {pre}" if pre else ""
        return (f"the model file {name} {since} (sha256 {was[:12]}... -> {is_[:12]}...{also}); "
                f"its maps would mix two models: {way_out}")
    labels = _replaced(old.model.get("labels"), identity.get("labels"))
    if labels:
        name, was, is_ = labels
        return (f"the labels table {name} {since} (sha256 {was[:12]}... -> {is_[:12]}...); "
                f"its rows would mix two labelings: {way_out}")
    if pre:
        return f"the model's preprocessing {since} ({pre}); its maps would mix two preprocessings: {way_out}"
    return f"{config.output} holds results of another config (changed: sgcore version); {way_out}"


def _replaced(old: dict[str, str] | None, new: dict[str, str] | None) -> tuple[str, str, str] | None:
    """The first file of ``new`` that ``old`` recorded with another sha256: (name, old, new)."""
    old, new = old or {}, new or {}
    return next(((f, old[f], new[f]) for f in new if f in old and old[f] != new[f]), None)


def _diff(old: dict[str, Any], new: dict[str, Any], empty: str = "sgcore version") -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in keys) or empty


def _committed_shards(out: OutputDir, shards: list[ShardSpec], chash: str,
                      manifest: Manifest | None) -> dict[str, dict[str, Any]]:
    """Shards whose part was committed under this config hash -> its footer (resume skips them).

    Only parts that ``manifest``'s runs committed count (their lease fence in the
    footer; the size, stamp and sha256 it recorded): a part of a writer that had
    lost the output, or one whose bytes changed, is redone and named.
    """
    done, changed, suspect = out.committed_parts(chash, {s.shard_id: s.content for s in shards},
                                                 manifest=manifest, fenced=True)
    if suspect:
        log.warning("%s not counted as committed, redoing: %s%s", plural(len(suspect), "part"),
                    "; ".join(suspect[:10]), "; ..." if len(suspect) > 10 else "")
    if changed:
        message = (f"the input files of {plural(len(changed), 'shard')} changed since they were written "
                   f"(size or modification stamp): {', '.join(changed[:10])}"
                   f"{', ...' if len(changed) > 10 else ''}; redoing them")
        log.warning("%s", message)  # the CLI prints warnings; a library caller gets a record
    return done
