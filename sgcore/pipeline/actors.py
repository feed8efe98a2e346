"""Ray wrappers: the model-replica actor and the decode task."""

from __future__ import annotations

import os
import resource
from typing import Any

import ray
import torch

from sgcore.config import JobConfig
from sgcore.errors import ConfigError, InputError
from sgcore.io import (
    DecodedShard,
    ShardSpec,
    decode_shard,
    pid_alive,
    set_default_policy,
    storage_policy,
)
from sgcore.pipeline._faults import maybe_inject
from sgcore.pipeline.worker import ShardProcessor, ShardSummary, check_owner, pick_device


def actor_threads(use_gpu: bool, cpu_threads: int | None = None) -> int | None:
    """A replica actor's torch threads: ``cpu_threads`` (:func:`replica_threads`, from the driver), else the
    actor's CPU reservation (the Ray Data stage's rule; decoding runs inside it); None on a GPU."""
    if use_gpu and torch.cuda.is_available():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, cpu_threads or int(round(cpus)))


def set_cpu_threads(use_gpu: bool, cpu_threads: int | None = None) -> None:
    """Sets :func:`actor_threads` in this process (a pool's worker that does not set them itself)."""
    threads = actor_threads(use_gpu, cpu_threads)
    if threads is not None:
        torch.set_num_threads(threads)


class SaliencyActor:
    """One model replica on one GPU (or on CPUs when the cluster has none)."""

    def __init__(self, config: JobConfig, use_gpu: bool, cpu_threads: int | None = None,
                 driver: tuple[str, int] | None = None, tally: Any = None, fence: Any = None):
        self.driver = driver  # (node id, pid) of the driver: commit only while it runs
        self.fence = fence  # the driver's lease fence: commit only while its run holds the output
        self.tally = tally  # a ProgressTally actor: images done, batch by batch
        set_default_policy(storage_policy(config.storage_retry_s))
        # Bad settings (weights of another architecture, say) come back to the
        # driver as the error of the first task, which stops the job with this
        # message; an actor dying in __init__ would print its traceback first.
        self.setup_error: ConfigError | InputError | None = None
        try:
            self.processor = ShardProcessor(config, device=pick_device(use_gpu),
                                            threads=actor_threads(use_gpu, cpu_threads))
        except (ConfigError, InputError) as e:
            self.setup_error = e

    def process(self, decoded: DecodedShard, config_hash: str, attempt: int) -> ShardSummary:
        if self.setup_error is not None:
            raise self.setup_error
        if self.processor.config.inject_faults:
            maybe_inject(self.processor.config.inject_faults, (r.image_id for r in decoded.records), attempt)
        on_batch = None
        if self.tally is not None:
            def on_batch(n: int) -> None:
                self.tally.add.remote(decoded.shard_id, attempt, n)  # fire and forget
        summary = self.processor.process(decoded, config_hash=config_hash, attempt=attempt,
                                         before_commit=lambda: self._before_commit(decoded.shard_id),
                                         on_batch=on_batch, fence=self.fence)
        summary.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary.pid = os.getpid()
        summary.node = ray.get_runtime_context().get_node_id()
        summary.device = str(self.processor.device)
        return summary

    def _before_commit(self, shard_id: str) -> None:
        """Commits only for a live driver whose run still holds the output."""
        self._check_driver()
        check_owner(self.processor.config, shard_id, self.fence)

    def _check_driver(self) -> None:
        """Refuses to commit for a driver that is gone (killed, or stopped by SIGTERM).

        Ray ends a dead driver's actors, but not at once: a part committed in
        between would land in an output whose run has already ended.
        """
        if self.driver is None:
            return
        node, pid = self.driver
        if node == ray.get_runtime_context().get_node_id() and not pid_alive(pid):
            raise DriverGone(f"driver (pid {pid}) is gone; not committing")


class DriverGone(RuntimeError):
    """The driver of this actor's job no longer runs."""


def _decode(spec: ShardSpec, geometry: dict[str, Any], storage_options: dict[str, Any],
            storage_retry_s: float) -> DecodedShard:
    """``geometry``: ``Preprocess.decode_kwargs()``."""
    set_default_policy(storage_policy(storage_retry_s))
    return decode_shard(spec, **geometry, storage_options=storage_options)


class ProgressTally:
    """Images the replicas finished, per (shard, attempt), until the driver takes them."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def add(self, shard_id: str, attempt: int, images: int) -> None:
        key = (shard_id, attempt)
        self.counts[key] = self.counts.get(key, 0) + images

    def take(self) -> dict[tuple[str, int], int]:
        counts, self.counts = self.counts, {}
        return counts


remote_actor = ray.remote(SaliencyActor)
remote_tally = ray.remote(num_cpus=0)(ProgressTally)
remote_decode = ray.remote(_decode)
