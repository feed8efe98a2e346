"""The one scheduler of the pipeline: work items on a pool of replicas, over a small backend.

:class:`Scheduler` keeps the work: items pending (with their attempt), items in
flight on a replica, and the pool's replicas (:class:`ActorSlots`). It feeds
every replica (a bounded queue), waits for one item at a time, retries a failed
item up to ``max_retries`` times, and forgets a replica that died (a new one
starts only when none is left). What an outcome means is a subclass's choice:
:class:`JobScheduler` is the job's (retries with attempt limits, dead actors,
storage outages, error rows of a shard that failed every attempt, the error
rate, progress, the lease), :class:`sgcore.pipeline.pool.ReplicaPool` the
audit's.

A scheduler knows no Ray: it talks to a :class:`Backend` (start a replica,
call it, wait, read a result, kill it). :mod:`sgcore.pipeline.backends` holds
the Ray backends; :mod:`sgcore.pipeline.inprocess` one that runs replicas as
objects in this process and can be told to kill, fail or hang them, so that
every decision here is tested with injected faults in milliseconds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sgcore.errors import ConfigError, InputError
from sgcore.io import (
    Record,
    ResultRow,
    ShardSpec,
    is_storage_unavailable,
    join,
    set_default_policy,
    storage_policy,
)
from sgcore.io.lease import LeaseLost
from sgcore.pipeline.progress import format_duration, plural

if TYPE_CHECKING:
    from sgcore.config import JobConfig
    from sgcore.io import Manifest
    from sgcore.io.lease import Fence, Lease
    from sgcore.models import Preprocess
    from sgcore.pipeline.cluster import ActorPlan
    from sgcore.pipeline.progress import Progress
    from sgcore.pipeline.recorder import JobResult

log = logging.getLogger("sgcore")

# Items queued per replica: one running, one waiting (decoded, for the job), so a replica never idles.
QUEUE_PER_ACTOR = 2


# ----------------------------------------------------------------- the backend


class ReplicaDied(Exception):
    """The replica running an item is gone (killed, its node lost, its process exited)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TaskFailed(Exception):
    """An item raised on its replica: ``cause`` is the error it raised (None when unknown)."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


class Backend(Protocol):
    """Where replicas run: Ray actors (:mod:`sgcore.pipeline.backends`) or objects in this process."""

    def new_actor(self) -> Any:
        """Starts one replica; returns its handle."""

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        """``actor.method(*args)``, started now; returns a future."""

    def wait(self, futures: list[Any], timeout: float | None) -> list[Any]:
        """At most one future of ``futures`` that is done (none after ``timeout`` seconds)."""

    def get(self, future: Any) -> Any:
        """The value of a done future; raises :class:`ReplicaDied` or :class:`TaskFailed`."""

    def kill(self, actor: Any) -> None:
        """Ends a replica (nothing when it is gone already)."""


def _ray_kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


class ActorSlots:
    """A pool's replicas: slots (None once a replica died), the work queued on each, the next to use.

    Args:
        new_actor: starts one replica (an actor handle).
        n: replicas to start now.
        kill: ends a replica (default: ``ray.kill``).
    """

    def __init__(self, new_actor: Callable[[], Any], n: int, kill: Callable[[Any], None] | None = None) -> None:
        self._new_actor = new_actor
        self._kill = kill or _ray_kill
        self.actors: list[Any] = [new_actor() for _ in range(n)]
        self.load = [0] * n
        self.lost = 0

    @property
    def live(self) -> int:
        return sum(a is not None for a in self.actors)

    def take(self) -> tuple[int, Any]:
        """The least-loaded live replica's slot and handle; counts one more item on it."""
        slot = min((s for s, a in enumerate(self.actors) if a is not None), key=lambda s: self.load[s])
        self.load[slot] += 1
        return slot, self.actors[slot]

    def release(self, slot: int) -> None:
        """An item on ``slot`` finished (whatever its outcome)."""
        self.load[slot] -= 1

    def add(self) -> None:
        """Starts one more replica, in a dead one's slot if there is one."""
        if None in self.actors:
            self.actors[self.actors.index(None)] = self._new_actor()
        else:
            self.actors.append(self._new_actor())
            self.load.append(0)

    def drop(self, slot: int, dead: Any) -> bool:
        """Forgets the dead replica ``dead`` of ``slot``; starts a new one only when none is left.

        A replacement might never fit (its node is gone), and work queued on
        it would wait forever; a pool grows back through :meth:`add` once the
        cluster has room. Returns False when ``dead`` was already dropped.
        """
        if self.actors[slot] is not dead:
            return False
        self._kill(dead)
        self.lost += 1
        self.actors[slot] = self._new_actor() if self.live == 1 else None
        return True

    def close(self) -> None:
        """Kills every replica."""
        for a in self.actors:
            if a is not None:
                self._kill(a)
        self.actors = []


def short_error(e: BaseException) -> str:
    """The last line of an error's message (a Ray error's is the remote traceback's), at most 300 characters."""
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


# ----------------------------------------------------------------- the loop


@dataclass
class Task:
    """One attempt of an item, in flight: on which replica, and what its launch kept (``extra``)."""

    item: Any
    attempt: int
    slot: int
    actor: Any
    extra: Any = None


class Scheduler:
    """Pending items, items in flight and the pool's replicas; the loop every pool runs.

    Subclasses say how an item is launched (:meth:`launch`) and what an
    outcome means (:meth:`done`, :meth:`died`, :meth:`failed`, :meth:`give_up`).

    Args:
        backend: where the replicas run.
        slots: the pool's replicas (started on ``backend``).
        items: the work, each with attempt 0.
        max_retries: attempts after the first for an item that failed.
        wait_s: the longest wait for an outcome before the loop's housekeeping
            (:meth:`after_wait`, :meth:`tick`) runs again; None waits for one.
    """

    def __init__(self, backend: Backend, slots: ActorSlots, items: Iterable[Any] = (), *,
                 max_retries: int, wait_s: float | None = None) -> None:
        self.backend = backend
        self.slots = slots
        self.max_retries = max_retries
        self.wait_s = wait_s
        self.pending: deque[tuple[Any, int]] = deque((item, 0) for item in items)
        self.inflight: dict[Any, Task] = {}

    # ------------------------------------------------------------ what subclasses decide
    def launch(self, actor: Any, item: Any, attempt: int) -> tuple[Any, Any]:
        """Starts ``item`` on ``actor``: (its future, anything :meth:`give_up` needs later)."""
        raise NotImplementedError

    def capacity(self) -> int:
        """Items in flight at most."""
        return QUEUE_PER_ACTOR * self.slots.live

    def grow(self) -> None:
        """Before the queue is filled: room to add a replica?"""

    def before_wait(self) -> None:
        """Before each wait."""

    def after_wait(self) -> None:
        """After each wait, before its outcome is handled."""

    def tick(self) -> None:
        """After the outcomes of each wait."""

    def done(self, task: Task, value: Any) -> None:
        """The item's value came back."""

    def died(self, task: Task, reason: str) -> None:
        """The item's replica died: it is forgotten, the item retried."""
        self.slots.drop(task.slot, task.actor)
        self.retry(task, reason)

    def failed(self, task: Task, error: TaskFailed) -> None:
        """The item raised on its replica: retried."""
        self.retry(task, error.reason)

    def retrying(self, task: Task, reason: str) -> None:
        """An attempt failed and another follows (a log line)."""

    def give_up(self, task: Task, reason: str) -> None:
        """The last attempt failed."""

    # ------------------------------------------------------------ the loop
    def retry(self, task: Task, reason: str) -> None:
        """Queues the item again, first, while attempts are left; else :meth:`give_up`."""
        if task.attempt < self.max_retries:
            self.retrying(task, reason)
            self.pending.appendleft((task.item, task.attempt + 1))
            return
        self.give_up(task, reason)

    def submit(self, item: Any, attempt: int) -> None:
        slot, actor = self.slots.take()
        future, extra = self.launch(actor, item, attempt)
        self.inflight[future] = Task(item, attempt, slot, actor, extra)

    def step(self) -> None:
        """Fills the queue, waits for one outcome and handles it."""
        self.grow()
        capacity = self.capacity()
        while self.pending and len(self.inflight) < capacity:
            self.submit(*self.pending.popleft())
        self.before_wait()
        done = self.backend.wait(list(self.inflight), self.wait_s)
        self.after_wait()
        for future in done:
            self.finish(future)
        self.tick()

    def finish(self, future: Any) -> None:
        task = self.inflight.pop(future)
        self.slots.release(task.slot)
        try:
            value = self.backend.get(future)
        except ReplicaDied as e:
            self.died(task, e.reason)
            return
        except TaskFailed as e:
            self.failed(task, e)
            return
        self.done(task, value)

    def run(self) -> None:
        """Until every item is done or given up."""
        while self.pending or self.inflight:
            self.step()


# ----------------------------------------------------------------- the job


class JobBackend(Backend, Protocol):
    """What the job asks of a backend besides replicas: cluster size, decoding, progress, room to grow."""

    def resources(self) -> dict[str, float]:
        """The cluster's resources (``{"CPU": 4.0, "GPU": 1.0}``)."""

    def nodes(self) -> list[dict[str, float]] | None:
        """Each node's resources, when known."""

    def start(self, config: JobConfig, plan: ActorPlan, cpu_threads: int | None, fence: Fence | None) -> None:
        """Called once before the first :meth:`new_actor`: what every shard replica is built with."""

    def decode(self, spec: ShardSpec, geometry: dict[str, Any], storage_options: dict[str, Any],
               storage_retry_s: float) -> Any:
        """Starts decoding a shard; returns a reference a replica's call takes."""

    def records(self, decoded: Any) -> list[Record]:
        """The records of a decoded shard (raises when its decoding failed)."""

    def take_tally(self) -> dict[tuple[str, int], int] | None:
        """Images finished per (shard, attempt) since the last look; None when unknown."""

    def has_room(self, plan: ActorPlan) -> bool:
        """Whether one more replica fits now."""

    def request_capacity(self, plan: ActorPlan) -> bool:
        """Asks an autoscaler for ``plan.max_actors``; True when it did."""

    def release_capacity(self) -> None:
        """Takes back what :meth:`request_capacity` asked for."""

    def close(self) -> None:
        """Ends what :meth:`start` started (the progress tally)."""

    def monotonic(self) -> float:
        """Seconds, for the outage bound (a test backend brings its own clock)."""


class JobScheduler(Scheduler):
    """The job's shards on a pool of shard replicas: retries, dead replicas, outages, failed shards.

    Decisions, each recorded through the run's
    :class:`~sgcore.pipeline.recorder.Recorder`:

    - a shard whose replica died, or that raised, is retried on a live replica
      (first in the queue) up to ``max_retries`` times; the dead replica is
      killed and forgotten, a new one starts only when none is left (the pool
      grows back when the cluster has room: :meth:`grow`);
    - a shard that failed every attempt gets a part of error rows (status
      ``failed``) that the next run redoes;
    - a replica's ``ConfigError``/``InputError`` (bad settings, a model that
      fails on every input) or ``LeaseLost`` stops the run with that error;
    - a shard that met storage down past its retry budget is retried while the
      store has been down less than ``storage_outage_s``; then every shard that
      met the outage fails, the rest stay pending, and :class:`StorageFailed`
      stops the run;
    - the recorder stops the run (:class:`JobFailed`) past ``max_error_rate``.
    """

    def __init__(self, backend: JobBackend, config: JobConfig, chash: str, preprocess: Preprocess,
                 todo: list[ShardSpec], manifest: Manifest, result: JobResult, progress: Progress,
                 lease: Lease | None = None, fence: Fence | None = None, *,
                 write_manifest: Callable[[], None] | None = None) -> None:
        from sgcore.pipeline.cluster import plan_for_config, replica_threads
        from sgcore.pipeline.recorder import Checkpoints, Recorder, manifest_interval

        self.config = config
        self.lease = lease
        self.fence = fence
        self.chash = chash
        self.preprocess = preprocess
        self.progress = progress  # read here; changed only by the recorder, and printed
        # Every change to the manifest, the result and the progress goes through here.
        self.recorder = Recorder(manifest, result, progress, max_error_rate=config.max_error_rate,
                                 output=config.output)
        # The manifest, written while shards commit (bounded rate): a run that dies leaves its record.
        self.checkpoints = (Checkpoints(write_manifest, self.recorder, interval=manifest_interval())
                            if write_manifest is not None else None)
        self.job_backend = backend
        self.plan = plan_for_config(config, backend.resources(), num_shards=len(todo), nodes=backend.nodes())
        log.info("actor pool: %s", self.plan.describe())
        # CPU replicas share each node's cores, one kept for decoding (cluster.replica_threads).
        self.cpu_threads = replica_threads(self.plan, backend.resources().get("CPU", 1.0))
        # On an autoscaling cluster, ask for the nodes max_actors needs.
        self.requested_capacity = backend.request_capacity(self.plan)
        backend.start(config, self.plan, self.cpu_threads, fence)
        super().__init__(backend, ActorSlots(backend.new_actor, self.plan.initial_actors, kill=backend.kill),
                         todo, max_retries=config.max_retries, wait_s=min(1.0, progress.interval))
        self.recorder.replicas(self.slots.live)
        # Since when shards fail for storage that stays down (None: the last one succeeded).
        self.outage_since: float | None = None
        self.storage_failing: set[str] = set()  # shards that met it and have not succeeded since

    def run(self) -> None:
        self.progress.restart_clock()
        super().run()

    def close(self) -> None:
        """Kills the run's replicas and its progress tally (their work is over or abandoned)."""
        self.slots.close()
        self.job_backend.close()

    # ------------------------------------------------------------ the loop's hooks
    def grow(self) -> None:
        """Adds a replica while work waits and the cluster has room (up to max_actors)."""
        live = self.slots.live
        if live >= self.plan.max_actors or len(self.pending) <= live:
            return
        if self.job_backend.has_room(self.plan):
            self.slots.add()
            self.recorder.replicas(live + 1)

    def capacity(self) -> int:
        # One shard running per actor, plus decoded shards waiting, as many
        # as the decode CPUs allow (at most one more per actor).
        n = self.slots.live
        return n + min(n * (QUEUE_PER_ACTOR - 1), max(1, self.plan.max_decode_tasks))

    def launch(self, actor: Any, spec: ShardSpec, attempt: int) -> tuple[Any, Any]:
        from sgcore.pipeline.recorder import Submitted

        decoded = self.job_backend.decode(spec, self.preprocess.decode_kwargs(), self.config.storage_options,
                                          self.config.storage_retry_s)
        future = self.backend.call(actor, "process", decoded, self.chash, attempt)
        self.recorder.record(Submitted(spec.shard_id, attempt))
        return future, decoded

    def before_wait(self) -> None:
        if self.lease is not None:
            self.lease.check()  # taken over after our heartbeats failed: stop at once

    def after_wait(self) -> None:
        counts = self.job_backend.take_tally()  # progress only: never fail the job for it
        if counts is not None:
            self.recorder.images_done(counts)

    def tick(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.maybe_write()
        self.progress.maybe_print()

    # ------------------------------------------------------------ outcomes
    def done(self, task: Task, summary: Any) -> None:
        from sgcore.pipeline.recorder import Committed

        self.outage_since = None
        self.storage_failing.discard(task.item.shard_id)
        self.recorder.record(Committed(summary))

    def died(self, task: Task, reason: str) -> None:
        log.warning("actor for shard %s died (%s)", task.item.shard_id, reason)
        if self.slots.drop(task.slot, task.actor):
            self.recorder.replica_lost()
        self.retry(task, f"actor died: {reason}")

    def failed(self, task: Task, error: TaskFailed) -> None:
        cause = error.cause
        if isinstance(cause, LeaseLost):  # another run holds the output: stop, commit nothing more
            raise cause from None
        if isinstance(cause, ConfigError | InputError):
            # bad settings, or a model that fails on every input (ModelError)
            raise cause from None
        if cause is not None and is_storage_unavailable(cause):
            self._storage_failed(task, short_error(cause))
            return
        self.retry(task, error.reason)

    def retrying(self, task: Task, reason: str) -> None:
        from sgcore.pipeline.recorder import Retrying

        log.warning("shard %s failed (attempt %d): %s; retrying", task.item.shard_id, task.attempt + 1, reason)
        self.recorder.record(Retrying(task.item.shard_id, task.attempt, reason))

    def _storage_failed(self, task: Task, reason: str) -> None:
        """A shard that met a store down past the retry budget; stops a job whose store stays down."""
        from sgcore.pipeline.recorder import StorageDown, StorageFailed

        spec: ShardSpec = task.item
        now = self.job_backend.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        self.storage_failing.add(spec.shard_id)
        waited = now - self.outage_since
        if waited < self.config.storage_outage_s:
            self.retry(task, reason, storage=True)
            return
        # Down for good: every shard that met the outage fails now, the rest stay pending.
        self.recorder.record(StorageDown(spec.shard_id, task.attempt, reason, tuple(sorted(self.storage_failing))))
        failed = sorted(self.recorder.result.failed_shards)
        raise StorageFailed(
            f"storage unavailable for {format_duration(waited)} (over --storage-outage-s "
            f"{self.config.storage_outage_s:g}): {plural(len(failed), 'shard')} failed "
            f"({', '.join(failed)}), {plural(self.recorder.not_done(), 'shard')} not done; cause: "
            f"{reason}; rerun the same command once the store is back"
        )

    def retry(self, task: Task, reason: str, *, storage: bool = False) -> None:
        """``storage``: the failure is the store's, so the failed part may not be writable either."""
        if task.attempt < self.max_retries:
            super().retry(task, reason)
            return
        self._fail(task, reason, storage=storage)

    def give_up(self, task: Task, reason: str) -> None:
        self._fail(task, reason, storage=False)

    def _fail(self, task: Task, reason: str, *, storage: bool) -> None:
        from sgcore.pipeline.recorder import Failed
        from sgcore.pipeline.worker import ShardSummary, write_part

        spec: ShardSpec = task.item
        message = f"shard failed after {task.attempt + 1} attempt(s): {reason}"
        rows = self._error_rows(spec, task.extra, message)
        # A failed part (redone by the next run) keeps one row per image; with the store
        # down it may not be writable either: the manifest then says failed, and a
        # missing part is redone all the same.
        previous = set_default_policy(storage_policy(min(self.config.storage_retry_s, 5.0))) if storage else None
        commit = None
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
        self.recorder.record(Failed(ShardSummary.of(spec.shard_id, rows, attempt=task.attempt, commit=commit),
                                    reason))

    def _error_rows(self, spec: ShardSpec, decoded: Any, message: str) -> list[ResultRow]:
        """Error rows for every image of a shard that could not be processed."""
        from sgcore.pipeline.worker import make_row

        try:
            records = self.job_backend.records(decoded)
        except Exception:  # noqa: BLE001 - the decode itself failed: fall back to the plan
            records = [Record(image_id=m, source=join(spec.root, m)) for m in spec.planned_ids()]
        crop = self.preprocess.map_shape
        return [make_row(self.config, spec.shard_id, rec, crop=crop, error=message) for rec in records]


__all__ = ["ActorSlots", "Backend", "JobBackend", "JobScheduler", "ReplicaDied", "Scheduler", "Task",
           "TaskFailed", "short_error"]
