"""A pool of model replicas on Ray that evaluates independent work items.

The job's scheduler (:mod:`sgcore.pipeline.driver`) feeds shards to its
actors; other heavy work (the audit's sanity cascade and perturbation
curves) uses this pool with the same rules: the pool is sized by
:func:`~sgcore.pipeline.cluster.plan_actors`, each replica builds its model
once in its constructor, an item whose actor dies is retried on another
replica (up to ``max_retries`` times), and a replica that cannot start for
bad settings stops the whole run with its one-line error.

The worker class is plain Python (``cls(*args)`` then ``getattr(obj,
method)(item)``), so the same class runs in-process without Ray.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sgcore.errors import ConfigError, InputError
from sgcore.pipeline.cluster import ActorPlan

log = logging.getLogger("sgcore")

# Items queued per replica: one running, one waiting, so a replica never idles.
_QUEUE_PER_ACTOR = 2


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
        import ray
        import torch

        if not use_gpu or not torch.cuda.is_available():
            # Ray pins OMP threads to the actor's reservation; a CPU replica may use what it was granted.
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            torch.set_num_threads(max(1, cpu_threads or int(round(cpus))))
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
                 cpu_threads: int | None = None) -> None:
        import ray

        self._ray = ray
        self.plan = plan
        self.max_retries = max_retries
        self._remote = ray.remote(Replica).options(**plan.actor_options())
        self._args = (cls, tuple(args), plan.use_gpu, cpu_threads)
        self.actors: list[Any] = [self._new_actor() for _ in range(plan.initial_actors)]
        self.actors_lost = 0
        self.pids: set[int] = set()

    def _new_actor(self) -> Any:
        return self._remote.remote(*self._args)

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:
            if a is not None:
                try:
                    self._ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.actors = []

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
        ray = self._ray
        out: list[Any] = [None] * len(items)
        pending: deque[tuple[int, int]] = deque((i, 0) for i in range(len(items)))
        inflight: dict[Any, tuple[int, int, int, Any]] = {}  # future -> (item, attempt, slot, actor)
        load = [0] * len(self.actors)

        def submit(i: int, attempt: int) -> None:
            slot = min((s for s, a in enumerate(self.actors) if a is not None), key=lambda s: load[s])
            actor = self.actors[slot]
            inflight[actor.call.remote(method, items[i])] = (i, attempt, slot, actor)
            load[slot] += 1

        def failed(i: int, attempt: int, reason: str) -> None:
            if attempt < self.max_retries:
                log.warning("work item %d failed (attempt %d): %s; retrying", i, attempt + 1, reason)
                pending.appendleft((i, attempt + 1))
                return
            out[i] = ItemFailed(reason=reason, attempts=attempt + 1)
            if on_result is not None:
                on_result(i, out[i], -1)

        while pending or inflight:
            live = sum(a is not None for a in self.actors)
            while pending and len(inflight) < _QUEUE_PER_ACTOR * live:
                submit(*pending.popleft())
            done, _ = ray.wait(list(inflight), num_returns=1)
            for fut in done:
                i, attempt, slot, actor = inflight.pop(fut)
                load[slot] -= 1
                try:
                    pid, value = ray.get(fut)
                except ray.exceptions.RayActorError as e:
                    log.warning("replica running work item %d died (%s)", i, _short(e))
                    self._drop(slot, actor)
                    failed(i, attempt, f"replica died: {_short(e)}")
                    continue
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, _SetupFailed):
                        raise e.cause.error from None
                    if isinstance(e.cause, ConfigError | InputError):
                        # The item's own bad input (an unreadable image): the same on every replica.
                        out[i] = ItemFailed(reason=str(e.cause), attempts=attempt + 1)
                        if on_result is not None:
                            on_result(i, out[i], -1)
                        continue
                    failed(i, attempt, _short(e))
                    continue
                except ray.exceptions.RayError as e:
                    failed(i, attempt, _short(e))
                    continue
                self.pids.add(pid)
                out[i] = value
                if on_result is not None:
                    on_result(i, value, pid)
        return out

    def _drop(self, slot: int, dead: Any) -> None:
        """Forgets a dead replica; starts a new one only when none is left (as the job's driver does).

        A replacement might never fit (its node is gone), and work queued on it would wait forever.
        """
        if self.actors[slot] is not dead:
            return
        try:
            self._ray.kill(dead, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.actors_lost += 1
        alive = sum(a is not None for a in self.actors) - 1
        self.actors[slot] = self._new_actor() if alive == 0 else None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


__all__ = ["ItemFailed", "Replica", "ReplicaPool"]
