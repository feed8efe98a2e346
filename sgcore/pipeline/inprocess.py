"""The schedulers' in-process backend: replicas are objects in this process, faults are injected.

No Ray: a call runs at once, in this thread, and its outcome waits in a
future. A test decides what happens to a call before it runs
(``InProcessBackend.intercept``) or between two waits (``on_wait``): the
replica exits (:class:`ActorExit`, what ``os._exit`` or a SIGKILL is to a
Ray actor: every call queued on it fails as ``ReplicaDied``), the call raises,
or it hangs until its replica is killed. :class:`InProcessJobBackend` runs the
job's shards this way (``run_job(config, backend=InProcessJobBackend())``),
with the real decoding, model, commit and fencing.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sgcore.errors import ConfigError, InputError
from sgcore.io import (
    DecodedShard,
    Record,
    ShardSpec,
    decode_shard,
    set_default_policy,
    storage_policy,
)
from sgcore.pipeline.scheduler import ReplicaDied, TaskFailed, short_error


class ActorExit(BaseException):
    """Raised in a replica's call: its process ends there (``os._exit``, SIGKILL, a lost node)."""


class Hang(BaseException):
    """Raised in a replica's call: it never returns (until its replica is killed)."""


@dataclass(eq=False)
class LocalActor:
    """One replica: ``worker`` runs its calls; ``death`` says why it is gone (None while alive)."""

    index: int
    worker: Any = None
    death: str | None = None
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.death is None


@dataclass(eq=False)
class LocalFuture:
    """A call's outcome: a value, an error (``ReplicaDied``/``TaskFailed``), or not yet (hung)."""

    actor: LocalActor | None
    value: Any = None
    error: Exception | None = None
    done: bool = False

    def settle(self, *, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error, self.done = value, error, True


class InProcessBackend:
    """Replicas as objects built by ``make_worker(index)``.

    Attributes:
        intercept: called as ``intercept(actor, method, args)`` before each
            call runs; it may raise :class:`ActorExit`, :class:`Hang` or any
            error the call should raise.
        on_wait: called with this backend before each wait (kill a replica
            mid-run: :meth:`kill_actor`).
        actors: every replica started, the dead ones too.
    """

    def __init__(self, make_worker: Callable[[int], Any], *,
                 intercept: Callable[[LocalActor, str, tuple[Any, ...]], None] | None = None,
                 on_wait: Callable[[InProcessBackend], None] | None = None) -> None:
        self.make_worker = make_worker
        self.intercept = intercept
        self.on_wait = on_wait
        self.actors: list[LocalActor] = []
        self.killed: list[int] = []  # indices of replicas the scheduler killed
        self._futures: list[LocalFuture] = []
        self._idle = 0

    # ------------------------------------------------------------ Backend
    def new_actor(self) -> LocalActor:
        actor = LocalActor(len(self.actors))
        self.actors.append(actor)
        try:
            actor.worker = self.make_worker(actor.index)
        except Exception as e:  # noqa: BLE001 - a constructor that raises: the actor dies (as in Ray)
            actor.death = f"the actor died in its constructor: {type(e).__name__}: {e}"
        return actor

    def call(self, actor: LocalActor, method: str, *args: Any) -> LocalFuture:
        future = LocalFuture(actor)
        self._futures.append(future)
        if not actor.alive:
            future.settle(error=ReplicaDied(f"the actor died earlier: {actor.death}"))
            return future
        actor.calls.append((method, args))
        try:
            values = [self._resolve(a) for a in args]
            if self.intercept is not None:
                self.intercept(actor, method, args)
            value = getattr(actor.worker, method)(*values)
        except TaskFailed as e:  # a dependency (the decoding) failed: the call raises its error
            future.settle(error=e)
        except ActorExit as e:
            self.kill_actor(actor, f"the actor's process exited: {e}")
        except Hang:
            pass  # done only when its actor dies
        except Exception as e:  # noqa: BLE001 - what a Ray task error carries
            future.settle(error=TaskFailed(short_error(_with_type(e)), e))
        else:
            future.settle(value=value)
        return future

    def wait(self, futures: list[Any], timeout: float | None) -> list[Any]:
        if self.on_wait is not None:
            self.on_wait(self)
        done = next((f for f in futures if f.done), None)
        if done is not None:
            self._idle = 0
            return [done]
        self._idle += 1
        if self._idle > 10_000:  # a test whose calls all hang and nothing kills them
            raise RuntimeError("in-process backend: every call in flight hangs and nothing ends them")
        return []

    def get(self, future: LocalFuture) -> Any:
        if not future.done:
            raise RuntimeError("get() of a call that is not done")
        if future.error is not None:
            raise future.error
        return future.value

    def kill(self, actor: LocalActor) -> None:
        if actor.alive:
            self.killed.append(actor.index)
        self.kill_actor(actor, "killed by the scheduler")

    # ------------------------------------------------------------ faults
    def kill_actor(self, actor: LocalActor | int, reason: str = "SIGKILL") -> None:
        """Ends a replica from outside: its calls not done yet fail as ``ReplicaDied``."""
        if isinstance(actor, int):
            actor = self.actors[actor]
        if not actor.alive:
            return
        actor.death = reason
        for f in self._futures:
            if f.actor is actor and not f.done:
                f.settle(error=ReplicaDied(f"the actor died unexpectedly: {reason}"))

    def live(self) -> list[LocalActor]:
        return [a for a in self.actors if a.alive]

    def _resolve(self, arg: Any) -> Any:
        if not isinstance(arg, LocalFuture):
            return arg
        if arg.error is not None:
            raise arg.error
        return arg.value


def _with_type(e: BaseException) -> BaseException:
    """``e`` worded as a Ray task error's last line is: ``TypeName: message``."""
    return RuntimeError(f"{type(e).__name__}: {e}")


class LocalShardActor:
    """The job's replica in this process: what :class:`~sgcore.pipeline.actors.SaliencyActor` does, minus Ray.

    An ``exit:`` fault of ``--inject-faults`` ends this replica (:class:`ActorExit`),
    not the process.
    """

    def __init__(self, config: Any, fence: Any, tally: dict[tuple[str, int], int], threads: int = 1) -> None:
        from sgcore.pipeline.worker import ShardProcessor

        self.threads = threads
        self.fence = fence
        self.tally = tally
        self.setup_error: ConfigError | InputError | None = None
        self.config = config
        try:
            self.processor = ShardProcessor(config)
        except (ConfigError, InputError) as e:
            self.setup_error = e

    def process(self, decoded: DecodedShard, config_hash: str, attempt: int) -> Any:
        from sgcore.pipeline._faults import maybe_inject
        from sgcore.pipeline.worker import check_owner

        if self.setup_error is not None:
            raise self.setup_error
        if self.config.inject_faults:
            maybe_inject(self.config.inject_faults, (r.image_id for r in decoded.records), attempt,
                         on_exit=_exit_actor)

        def on_batch(n: int) -> None:
            key = (decoded.shard_id, attempt)
            self.tally[key] = self.tally.get(key, 0) + n

        # The replica's torch threads, as a Ray replica sets them (the tests' Ray workers run one);
        # this process's own setting is back afterwards.
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            summary = self.processor.process(
                decoded, config_hash=config_hash, attempt=attempt, on_batch=on_batch, fence=self.fence,
                before_commit=lambda: check_owner(self.config, decoded.shard_id, self.fence))
        finally:
            torch.set_num_threads(previous)
        summary.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary.pid = os.getpid()
        summary.device = str(self.processor.device)
        return summary


def _exit_actor() -> None:
    raise ActorExit("exit fault injected")


class InProcessJobBackend(InProcessBackend):
    """The job's backend with no Ray: shard replicas (:class:`LocalShardActor`) in this process.

    Args:
        cpus: the "cluster's" CPUs (what sizes the pool, as Ray's resources would).
        threads: torch threads of each replica while it computes (the tests' Ray workers run one).
        room: replicas that may still be added while the job runs (the pool grows).
        make_worker: builds a replica from ``(config, fence, tally)``; default :class:`LocalShardActor`.
        clock: monotonic seconds for the outage bound (a test may pass its own).
        intercept, on_wait: see :class:`InProcessBackend`.
    """

    def __init__(self, *, cpus: int = 2, room: int = 0, threads: int = 1,
                 make_worker: Callable[[Any, Any, dict[tuple[str, int], int]], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 intercept: Callable[[LocalActor, str, tuple[Any, ...]], None] | None = None,
                 on_wait: Callable[[InProcessBackend], None] | None = None) -> None:
        super().__init__(self._no_worker, intercept=intercept, on_wait=on_wait)
        self.cpus = cpus
        self.threads = threads
        self.room = room
        self.clock = clock
        self.tally: dict[tuple[str, int], int] = {}
        self._make = make_worker or LocalShardActor
        self.decoded: list[ShardSpec] = []  # every shard decoded, in order (retries included)
        self.closed = False

    @staticmethod
    def _no_worker(index: int) -> Any:
        raise RuntimeError("no replica before start()")

    def resources(self) -> dict[str, float]:
        return {"CPU": float(self.cpus)}

    def nodes(self) -> list[dict[str, float]] | None:
        return None

    def start(self, config: Any, plan: Any, cpu_threads: int | None, fence: Any) -> None:
        if self._make is LocalShardActor:
            self.make_worker = lambda index: LocalShardActor(config, fence, self.tally, self.threads)
        else:
            self.make_worker = lambda index: self._make(config, fence, self.tally)

    def decode(self, spec: ShardSpec, geometry: dict[str, Any], storage_options: dict[str, Any],
               storage_retry_s: float) -> LocalFuture:
        self.decoded.append(spec)
        future = LocalFuture(None)
        previous = set_default_policy(storage_policy(storage_retry_s))
        try:
            future.settle(value=decode_shard(spec, **geometry, storage_options=storage_options))
        except Exception as e:  # noqa: BLE001 - the replica's call raises it (as a Ray dependency's error)
            future.settle(error=TaskFailed(short_error(_with_type(e)), e))
        finally:
            set_default_policy(previous)
        return future

    def records(self, decoded: LocalFuture) -> list[Record]:
        return self._resolve(decoded).records

    def take_tally(self) -> dict[tuple[str, int], int] | None:
        counts = dict(self.tally)
        self.tally.clear()  # in place: the replicas hold this dict
        return counts

    def has_room(self, plan: Any) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        return True

    def request_capacity(self, plan: Any) -> bool:
        return False

    def release_capacity(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def monotonic(self) -> float:
        return self.clock()


__all__ = ["ActorExit", "Hang", "InProcessBackend", "InProcessJobBackend", "LocalActor", "LocalShardActor"]
