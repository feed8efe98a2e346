"""Pools of model replicas on Ray: the slots every pool keeps, and a pool for independent work items.

:class:`ActorSlots` is the one place a pool's replicas live: which slots hold
a live replica, how much work each has queued, which one takes the next item,
and what happens when one dies (it is killed and forgotten; a new one starts
only when none is left, since a replacement might never fit on a cluster that
lost a node). The job's scheduler (:mod:`sgcore.pipeline.driver`) keeps its
shard actors there; :class:`ReplicaPool` keeps the replicas of other heavy
work (the audit's sanity cascade and perturbation curves) there, with the same
rules: the pool is sized by :func:`~sgcore.pipeline.cluster.plan_actors`,
each replica builds its model once in its constructor, an item whose actor
dies is retried on another replica (up to ``max_retries`` times), and a
replica that cannot start for bad settings stops the whole run with its
one-line error.

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


class ActorSlots:
    """A pool's replicas: slots (None once a replica died), the work queued on each, the next to use.

    Args:
        new_actor: starts one replica (an actor handle).
        n: replicas to start now.
    """

    def __init__(self, new_actor: Callable[[], Any], n: int) -> None:
        self._new_actor = new_actor
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
        _kill(dead)
        self.lost += 1
        self.actors[slot] = self._new_actor() if self.live == 1 else None
        return True

    def close(self) -> None:
        """Kills every replica."""
        for a in self.actors:
            if a is not None:
                _kill(a)
        self.actors = []


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


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
                 cpu_threads: int | None = None) -> None:
        import ray

        self._ray = ray
        self.plan = plan
        self.max_retries = max_retries
        remote = ray.remote(Replica).options(**plan.actor_options())
        replica_args = (cls, tuple(args), plan.use_gpu, cpu_threads)
        self.slots = ActorSlots(lambda: remote.remote(*replica_args), plan.initial_actors)
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
        ray = self._ray
        out: list[Any] = [None] * len(items)
        pending: deque[tuple[int, int]] = deque((i, 0) for i in range(len(items)))
        inflight: dict[Any, tuple[int, int, int, Any]] = {}  # future -> (item, attempt, slot, actor)
        slots = self.slots

        def submit(i: int, attempt: int) -> None:
            slot, actor = slots.take()
            inflight[actor.call.remote(method, items[i])] = (i, attempt, slot, actor)

        def failed(i: int, attempt: int, reason: str) -> None:
            if attempt < self.max_retries:
                log.warning("work item %d failed (attempt %d): %s; retrying", i, attempt + 1, reason)
                pending.appendleft((i, attempt + 1))
                return
            out[i] = ItemFailed(reason=reason, attempts=attempt + 1)
            if on_result is not None:
                on_result(i, out[i], -1)

        while pending or inflight:
            while pending and len(inflight) < _QUEUE_PER_ACTOR * slots.live:
                submit(*pending.popleft())
            done, _ = ray.wait(list(inflight), num_returns=1)
            for fut in done:
                i, attempt, slot, actor = inflight.pop(fut)
                slots.release(slot)
                try:
                    pid, value = ray.get(fut)
                except ray.exceptions.RayActorError as e:
                    log.warning("replica running work item %d died (%s)", i, short_error(e))
                    slots.drop(slot, actor)
                    failed(i, attempt, f"replica died: {short_error(e)}")
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
                    failed(i, attempt, short_error(e))
                    continue
                except ray.exceptions.RayError as e:
                    failed(i, attempt, short_error(e))
                    continue
                self.pids.add(pid)
                out[i] = value
                if on_result is not None:
                    on_result(i, value, pid)
        return out


def short_error(e: BaseException) -> str:
    """The last line of an error's message (a Ray error's is the remote traceback's), at most 300 characters."""
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


__all__ = ["ActorSlots", "ItemFailed", "Replica", "ReplicaPool", "short_error"]
