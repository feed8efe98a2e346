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
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from sgcore.config import JobConfig
from sgcore.errors import ConfigError, InputError, Stopped
from sgcore.io import (
    Manifest,
    OutputDir,
    Record,
    ResultRow,
    RunEntry,
    ShardSpec,
    is_storage_unavailable,
    join,
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
from sgcore.pipeline.actors import remote_actor, remote_decode, remote_tally, replica_threads
from sgcore.pipeline.cluster import (
    connect_ray,
    node_resources,
    plan_for_config,
    release_capacity,
    request_capacity,
)
from sgcore.pipeline.pool import ActorSlots, short_error
from sgcore.pipeline.progress import Progress, format_duration, plural
from sgcore.pipeline.recorder import (
    Checkpoints,
    Committed,
    Failed,
    JobFailed,
    JobResult,
    Recorder,
    Retrying,
    StorageDown,
    StorageFailed,
    Submitted,
    manifest_interval,
)
from sgcore.pipeline.worker import ShardSummary, class_target, make_row, probe_model, write_part

__all__ = ["JobFailed", "JobResult", "StorageFailed", "job_hash", "plan_fingerprint", "run_job"]

log = logging.getLogger("sgcore")

# Shards queued per actor: one running, one decoded and waiting.
_QUEUE_PER_ACTOR = 2


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


def run_job(config: JobConfig) -> JobResult:
    """Runs (or resumes) a SmoothGrad job; see ``python -m jobs.smoothgrad --help``.

    Raises:
        ConfigError: bad settings, or an output written with another config.
        InputError: the input cannot be listed or holds no images.
        JobFailed: more than ``max_error_rate`` of the images failed.
    """
    previous_policy = set_default_policy(storage_policy(config.storage_retry_s))
    previous_handler = _on_sigterm()
    try:
        return _run_job(config)
    finally:
        set_default_policy(previous_policy)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _on_sigterm() -> Any:
    """SIGTERM stops the job like Ctrl-C (raises :class:`Stopped`); returns the old handler.

    Set again after Ray starts, which installs its own (that one aborts with a C++
    stack dump). Only the main thread may set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        Stopped.received = signum
        raise Stopped(signum)

    return signal.signal(signal.SIGTERM, stop)


def _run_job(config: JobConfig) -> JobResult:
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
                            t0=t0, started=started)
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
                 t0: float, started: str) -> JobResult:
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
            owns_ray = connect_ray(config.address)
            _on_sigterm()
            scheduler = None
            try:
                scheduler = _Scheduler(config, chash, preprocess, todo, manifest, result, progress, lease, fence,
                                       write_manifest=lambda: out.write_manifest(manifest, fence))
                # What the replicas really hold (a CPU-only cluster: 0 GPUs, whatever was asked).
                run.gpus_per_actor = scheduler.plan.num_gpus
                run.gpus_per_actor_requested = config.gpus_per_actor
                manifest.config["gpus_per_actor"] = scheduler.plan.num_gpus
                scheduler.run()
            finally:
                if scheduler is not None:
                    scheduler.close()  # the run's actors end with it, not at a later garbage collection
                if scheduler is not None and scheduler.requested_capacity:
                    release_capacity()
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


# --------------------------------------------------------------------------- #


class _Scheduler:
    """Keeps every actor fed (bounded queue), retries, replaces dead actors."""

    def __init__(self, config: JobConfig, chash: str, preprocess: Preprocess,
                 todo: list[ShardSpec], manifest: Manifest, result: JobResult,
                 progress: Progress, lease: Lease | None = None, fence: Fence | None = None, *,
                 write_manifest: Callable[[], None] | None = None):
        self.config = config
        self.lease = lease
        self.fence = fence
        self.chash = chash
        self.preprocess = preprocess
        self.pending: deque[tuple[ShardSpec, int]] = deque((s, 0) for s in todo)
        self.progress = progress  # read here; changed only by the recorder, and printed
        # Every change to the manifest, the result and the progress goes through here.
        self.recorder = Recorder(manifest, result, progress, max_error_rate=config.max_error_rate,
                                 output=config.output)
        # The manifest, written while shards commit (bounded rate): a run that dies leaves its record.
        self.checkpoints = (Checkpoints(write_manifest, self.recorder, interval=manifest_interval())
                            if write_manifest is not None else None)
        self.tally: Any = None
        self.slots: ActorSlots | None = None
        self.plan = plan_for_config(config, ray.cluster_resources(), num_shards=len(todo),
                                    nodes=node_resources())
        log.info("actor pool: %s", self.plan.describe())
        # CPU replicas share each node's cores, one kept for decoding (actors.replica_threads).
        self.cpu_threads = replica_threads(self.plan, ray.cluster_resources().get("CPU", 1.0))
        # On an autoscaling cluster, ask for the nodes max_actors needs.
        self.requested_capacity = request_capacity(self.plan)
        self.tally = remote_tally.remote()
        self.slots = ActorSlots(self._new_actor, self.plan.initial_actors)
        # future -> (shard, attempt, actor slot, decoded ref, actor)
        self.inflight: dict[Any, tuple[ShardSpec, int, int, Any, Any]] = {}
        self.recorder.replicas(self.slots.live)
        # Since when shards fail for storage that stays down (None: the last one succeeded).
        self.outage_since: float | None = None
        self.storage_failing: set[str] = set()  # shards that met it and have not succeeded since

    def _new_actor(self) -> Any:
        driver = (ray.get_runtime_context().get_node_id(), os.getpid())
        return remote_actor.options(**self.plan.actor_options()).remote(
            self.config, self.plan.use_gpu, self.cpu_threads, driver, self.tally, self.fence
        )

    def _maybe_grow(self) -> None:
        """Adds a replica while work waits and the cluster has room (up to max_actors)."""
        p = self.plan
        live = self.slots.live
        if live >= p.max_actors or len(self.pending) <= live:
            return
        free = ray.available_resources()
        if free.get("GPU", 0.0) >= p.num_gpus and free.get("CPU", 0.0) >= p.num_cpus + p.decode_num_cpus:
            self.slots.add()
            self.recorder.replicas(live + 1)

    def _submit(self, spec: ShardSpec, attempt: int) -> None:
        slot, actor = self.slots.take()
        # Decode tasks reserve no CPU: the window above bounds how many run, and
        # a reservation could deadlock once a lost node takes the spare CPUs with it.
        decoded = remote_decode.options(num_cpus=0).remote(
            spec, self.preprocess.decode_kwargs(), self.config.storage_options,
            self.config.storage_retry_s,
        )
        fut = actor.process.remote(decoded, self.chash, attempt)
        self.inflight[fut] = (spec, attempt, slot, decoded, actor)
        self.recorder.record(Submitted(spec.shard_id, attempt))

    def run(self) -> None:
        self.progress.restart_clock()
        while self.pending or self.inflight:
            self._maybe_grow()
            # One shard running per actor, plus decoded shards waiting, as many
            # as the decode CPUs allow (at most one more per actor).
            n = self.slots.live
            capacity = n + min(n * (_QUEUE_PER_ACTOR - 1), max(1, self.plan.max_decode_tasks))
            while self.pending and len(self.inflight) < capacity:
                spec, attempt = self.pending.popleft()
                self._submit(spec, attempt)
            if self.lease is not None:
                self.lease.check()  # taken over after our heartbeats failed: stop at once
            done, _ = ray.wait(list(self.inflight), num_returns=1,
                               timeout=min(1.0, self.progress.interval))
            self._take_tally()
            for fut in done:
                self._finish(fut)
            if self.checkpoints is not None:
                self.checkpoints.maybe_write()
            self.progress.maybe_print()

    def close(self) -> None:
        """Kills the run's replicas and its progress tally (their work is over or abandoned)."""
        if self.slots is not None:
            self.slots.close()
        if self.tally is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.tally, no_restart=True)
            self.tally = None

    def _take_tally(self) -> None:
        """Images the replicas finished since the last look (live progress)."""
        try:
            counts = ray.get(self.tally.take.remote(), timeout=10)
        except ray.exceptions.RayError:  # progress only: never fail the job for it
            return
        self.recorder.images_done(counts)

    def _finish(self, fut: Any) -> None:
        spec, attempt, slot, decoded, actor = self.inflight.pop(fut)
        self.slots.release(slot)
        try:
            summary = ray.get(fut)
        except ray.exceptions.RayActorError as e:
            log.warning("actor for shard %s died (%s)", spec.shard_id, short_error(e))
            if self.slots.drop(slot, actor):
                self.recorder.replica_lost()
            self._retry(spec, attempt, f"actor died: {short_error(e)}", decoded)
            return
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, LeaseLost):  # another run holds the output: stop, commit nothing more
                raise e.cause from None
            if isinstance(e.cause, ConfigError | InputError):
                # bad settings, or a model that fails on every input (ModelError)
                raise e.cause from None
            if e.cause is not None and is_storage_unavailable(e.cause):
                self._storage_failed(spec, attempt, short_error(e.cause), decoded)
                return
            self._retry(spec, attempt, short_error(e), decoded)
            return
        except ray.exceptions.RayError as e:
            self._retry(spec, attempt, short_error(e), decoded)
            return
        self.outage_since = None
        self.storage_failing.discard(spec.shard_id)
        self.recorder.record(Committed(summary))

    def _storage_failed(self, spec: ShardSpec, attempt: int, reason: str, decoded: Any) -> None:
        """A shard that met a store down past the retry budget; stops a job whose store stays down."""
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        self.storage_failing.add(spec.shard_id)
        waited = now - self.outage_since
        if waited < self.config.storage_outage_s:
            self._retry(spec, attempt, reason, decoded, storage=True)
            return
        # Down for good: every shard that met the outage fails now, the rest stay pending.
        self.recorder.record(StorageDown(spec.shard_id, attempt, reason, tuple(sorted(self.storage_failing))))
        failed = sorted(self.recorder.result.failed_shards)
        raise StorageFailed(
            f"storage unavailable for {format_duration(waited)} (over --storage-outage-s "
            f"{self.config.storage_outage_s:g}): {plural(len(failed), 'shard')} failed "
            f"({', '.join(failed)}), {plural(self.recorder.not_done(), 'shard')} not done; cause: "
            f"{reason}; rerun the same command once the store is back"
        )

    def _retry(self, spec: ShardSpec, attempt: int, reason: str, decoded: Any, *,
               storage: bool = False) -> None:
        if attempt < self.config.max_retries:
            log.warning("shard %s failed (attempt %d): %s; retrying", spec.shard_id, attempt + 1, reason)
            self.recorder.record(Retrying(spec.shard_id, attempt, reason))
            self.pending.appendleft((spec, attempt + 1))
            return
        message = f"shard failed after {attempt + 1} attempt(s): {reason}"
        rows = _error_rows(self.config, spec, decoded, message, self.preprocess.map_shape)
        # A failed part (redone by the next run) keeps one row per image; with the store
        # down it may not be writable either: the manifest then says failed, and a
        # missing part is redone all the same.
        previous = set_default_policy(storage_policy(min(self.config.storage_retry_s, 5.0))) if storage else None
        try:
            commit = write_part(self.config, self.preprocess, spec.shard_id, rows, config_hash=self.chash,
                                content=spec.content, status="failed", fence=self.fence)
        except OSError as e:
            if not storage:
                raise
            log.warning("shard %s: its failed part could not be written either (%s)", spec.shard_id, e)
        finally:
            if previous is not None:
                set_default_policy(previous)
        self.recorder.record(Failed(ShardSummary.of(spec.shard_id, rows, attempt=attempt, commit=commit), reason))


def _error_rows(config: JobConfig, spec: ShardSpec, decoded: Any, message: str,
                crop: int | tuple[int, int]) -> list[ResultRow]:
    """Error rows for every image of a shard that could not be processed."""
    try:
        records = ray.get(decoded, timeout=60).records
    except Exception:  # the decode itself failed: fall back to the plan
        records = [Record(image_id=m, source=join(spec.root, m)) for m in spec.planned_ids()]
    return [make_row(config, spec.shard_id, rec, crop=crop, error=message) for rec in records]


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
