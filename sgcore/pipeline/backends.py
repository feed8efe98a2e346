"""The schedulers' Ray backends: replicas as Ray actors (:mod:`sgcore.pipeline.scheduler`).

:class:`RayBackend` turns Ray's errors into the scheduler's two outcomes of a
failed item (the replica died, or the item raised); :class:`RayJobBackend`
adds what the job's scheduler asks of a cluster: its resources, decode tasks,
the progress tally, room to grow, an autoscaler's capacity.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import ray

from sgcore.io import Record, ShardSpec
from sgcore.pipeline.scheduler import ReplicaDied, TaskFailed, short_error


class RayBackend:
    """Replicas as Ray actors started by ``start`` (an actor handle per call)."""

    def __init__(self, start: Callable[[], Any] | None = None) -> None:
        self._start = start

    def new_actor(self) -> Any:
        if self._start is None:
            raise RuntimeError("this backend starts no replica before start()")
        return self._start()

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

    def wait(self, futures: list[Any], timeout: float | None) -> list[Any]:
        done, _ = ray.wait(futures, num_returns=1, timeout=timeout)
        return done

    def get(self, future: Any) -> Any:
        try:
            return ray.get(future)
        except ray.exceptions.RayActorError as e:
            raise ReplicaDied(short_error(e)) from e
        except ray.exceptions.RayTaskError as e:
            raise TaskFailed(short_error(e), e.cause) from e
        except ray.exceptions.RayError as e:
            raise TaskFailed(short_error(e)) from e

    def kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)


class RayJobBackend(RayBackend):
    """The job's shard replicas (:class:`~sgcore.pipeline.actors.SaliencyActor`) on the connected Ray."""

    def __init__(self) -> None:
        super().__init__()
        self.tally: Any = None

    def resources(self) -> dict[str, float]:
        return dict(ray.cluster_resources())

    def nodes(self) -> list[dict[str, float]] | None:
        from sgcore.pipeline.cluster import node_resources

        return node_resources()

    def start(self, config: Any, plan: Any, cpu_threads: int | None, fence: Any) -> None:
        from sgcore.pipeline.actors import remote_actor, remote_tally

        self.tally = remote_tally.remote()
        tally = self.tally
        # A replica commits only while this driver (node, pid) runs.
        driver = (ray.get_runtime_context().get_node_id(), os.getpid())
        options = plan.actor_options()
        self._start = lambda: remote_actor.options(**options).remote(
            config, plan.use_gpu, cpu_threads, driver, tally, fence)

    def decode(self, spec: ShardSpec, geometry: dict[str, Any], storage_options: dict[str, Any],
               storage_retry_s: float) -> Any:
        from sgcore.pipeline.actors import remote_decode

        # Decode tasks reserve no CPU: the scheduler's window bounds how many run, and
        # a reservation could deadlock once a lost node takes the spare CPUs with it.
        return remote_decode.options(num_cpus=0).remote(spec, geometry, storage_options, storage_retry_s)

    def records(self, decoded: Any) -> list[Record]:
        return ray.get(decoded, timeout=60).records

    def take_tally(self) -> dict[tuple[str, int], int] | None:
        try:
            return ray.get(self.tally.take.remote(), timeout=10)
        except ray.exceptions.RayError:
            return None

    def has_room(self, plan: Any) -> bool:
        free = ray.available_resources()
        return free.get("GPU", 0.0) >= plan.num_gpus and free.get("CPU", 0.0) >= plan.num_cpus + plan.decode_num_cpus

    def request_capacity(self, plan: Any) -> bool:
        from sgcore.pipeline.cluster import request_capacity

        return request_capacity(plan)

    def release_capacity(self) -> None:
        from sgcore.pipeline.cluster import release_capacity

        release_capacity()

    def close(self) -> None:
        if self.tally is not None:
            self.kill(self.tally)
            self.tally = None

    def monotonic(self) -> float:
        return time.monotonic()


__all__ = ["RayBackend", "RayJobBackend"]
