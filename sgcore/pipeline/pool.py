"""A pool of model replicas for independent work items (the audit's heavy checks).

:class:`ReplicaPool` runs on the pipeline's one scheduler
(:mod:`sgcore.pipeline.scheduler`, which also runs the job's shards), with the
same rules: the replicas live in :class:`~sgcore.pipeline.scheduler.ActorSlots`
(a dead one is killed and forgotten; a new one starts only when none is left,
since a replacement might never fit on a cluster that lost a node), the pool
is sized by :func:`~sgcore.pipeline.cluster.plan_actors`, each replica builds
its model once in its constructor, an item whose actor dies is retried on
another replica (up to ``max_retries`` times), and a replica that cannot start
for bad settings stops the whole run with its one-line error.

The worker class is plain Python (``cls(*args)`` then ``getattr(obj,
method)(item)``), so the same class runs in-process without Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sgcore.errors import ConfigError, InputError
from sgcore.pipeline.cluster import ActorPlan
from sgcore.pipeline.scheduler import ActorSlots, Backend, Scheduler, Task, TaskFailed, short_error

log = logging.getLogger("sgcore")


@dataclass(frozen=True)
class ItemFailed:
    """An item that failed every attempt (its value in :meth:`ReplicaPool.map`)."""

    reason: str
    attempts: int


class _SetupFailed(Exception):
    """A replica's constructor raised a user error; carries it to the driver."""

    def __init__(self, error: ConfigError | InputError) -> None:
        super().__init__(str(error))
        self.error = error


class Replica:
    """The Ray actor around one worker object (``cls(*args)``)."""

    def __init__(self, cls: type, args: tuple[Any, ...], use_gpu: bool, cpu_threads: int | None) -> None:
        from sgcore.pipeline.actors import set_cpu_threads

        set_cpu_threads(use_gpu, cpu_threads)
        # A user error while building the model comes back as the first task's error (one
        # line on the driver), not as an actor traceback.
        self.setup_error: ConfigError | InputError | None = None
        self.worker: Any = None
        try:
            self.worker = cls(*args)
        except (ConfigError, InputError) as e:
            self.setup_error = e

    def call(self, method: str, item: Any) -> tuple[int, Any]:
        """``worker.method(item)`` and this process's pid (what a fault test signals)."""
        if self.setup_error is not None:
            raise _SetupFailed(self.setup_error)
        return os.getpid(), getattr(self.worker, method)(item)


class ReplicaPool:
    """Model replicas as Ray actors, sized by an :class:`~sgcore.pipeline.cluster.ActorPlan`.

    Args:
        cls: the worker class; each replica holds ``cls(*args)``.
        args: its constructor arguments (pickled to every replica).
        plan: how many replicas, with which resources (``plan_actors``).
        max_retries: attempts after the first for an item whose replica died
            or whose evaluation raised something other than a user error.
        cpu_threads: torch threads of a CPU replica (None: its CPU reservation).

    Use as a context manager: the replicas are killed on exit.
    """

    def __init__(self, cls: type, args: Sequence[Any], *, plan: ActorPlan, max_retries: int = 3,
                 cpu_threads: int | None = None, backend: Backend | None = None) -> None:
        self.plan = plan
        self.max_retries = max_retries
        if backend is None:
            import ray

            from sgcore.pipeline.backends import RayBackend

            remote = ray.remote(Replica).options(**plan.actor_options())
            replica_args = (cls, tuple(args), plan.use_gpu, cpu_threads)
            backend = RayBackend(lambda: remote.remote(*replica_args))
        self.backend = backend
        self.slots = ActorSlots(backend.new_actor, plan.initial_actors, kill=backend.kill)
        self.pids: set[int] = set()

    @property
    def actors_lost(self) -> int:
        return self.slots.lost

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.slots.close()

    def map(self, method: str, items: Sequence[Any], *,
            on_result: Callable[[int, Any, int], None] | None = None) -> list[Any]:
        """``worker.method(item)`` for every item, on the replicas; values in item order.

        Args:
            method: the worker's method name.
            items: work items (each pickled to the replica that runs it).
            on_result: called on the driver as each item finishes, with its
                index, its value (or :class:`ItemFailed`) and the pid of the
                replica that ran it (-1 when it failed).

        Returns:
            One value per item; :class:`ItemFailed` for an item that failed
            every attempt (the others still run).

        Raises:
            ConfigError, InputError: a replica could not start (bad model,
                weights or settings): every replica would fail the same way.
        """
        run = _Map(self, method, items, on_result)
        run.run()
        return run.out


class _Map(Scheduler):
    """:meth:`ReplicaPool.map`'s decisions: an item's own user error fails it alone, a replica's stops the map."""

    def __init__(self, pool: ReplicaPool, method: str, items: Sequence[Any],
                 on_result: Callable[[int, Any, int], None] | None) -> None:
        super().__init__(pool.backend, pool.slots, range(len(items)), max_retries=pool.max_retries)
        self.pool = pool
        self.method = method
        self.items = items
        self.on_result = on_result
        self.out: list[Any] = [None] * len(items)

    def launch(self, actor: Any, i: int, attempt: int) -> tuple[Any, Any]:
        return self.backend.call(actor, "call", self.method, self.items[i]), None

    def done(self, task: Task, value: Any) -> None:
        pid, value = value
        self.pool.pids.add(pid)
        self.out[task.item] = value
        if self.on_result is not None:
            self.on_result(task.item, value, pid)

    def died(self, task: Task, reason: str) -> None:
        log.warning("replica running work item %d died (%s)", task.item, reason)
        self.slots.drop(task.slot, task.actor)
        self.retry(task, f"replica died: {reason}")

    def failed(self, task: Task, error: TaskFailed) -> None:
        if isinstance(error.cause, _SetupFailed):
            raise error.cause.error from None
        if isinstance(error.cause, ConfigError | InputError):
            # The item's own bad input (an unreadable image): the same on every replica.
            self._fail(task, str(error.cause))
            return
        self.retry(task, error.reason)

    def retrying(self, task: Task, reason: str) -> None:
        log.warning("work item %d failed (attempt %d): %s; retrying", task.item, task.attempt + 1, reason)

    def give_up(self, task: Task, reason: str) -> None:
        self._fail(task, reason)

    def _fail(self, task: Task, reason: str) -> None:
        self.out[task.item] = ItemFailed(reason=reason, attempts=task.attempt + 1)
        if self.on_result is not None:
            self.on_result(task.item, self.out[task.item], -1)


__all__ = ["ActorSlots", "ItemFailed", "Replica", "ReplicaPool", "short_error"]
