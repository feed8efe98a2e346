"""The heavy part of an audit: recomputing maps and perturbing images.

One :class:`AuditWorker` holds a model :class:`~sgcore.pipeline.replica.Replica`,
the job's own; the runner drives
several of them on the pipeline's :class:`~sgcore.pipeline.pool.ReplicaPool`
(sized by ``plan_actors``, chunks of a dead replica retried elsewhere), or one
in-process. Every result depends only on the chunk's images, their seeds and
the audit seed, never on which worker ran it or on a retry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from sgcore.audit.faithfulness import deletion_insertion
from sgcore.audit.results import load_images
from sgcore.audit.sanity import MapSettings, cascading_randomization
from sgcore.errors import InputError
from sgcore.models.preprocess import Preprocess
from sgcore.pipeline.pool import ItemFailed
from sgcore.pipeline.replica import Replica, pick_device


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a worker needs to rebuild the model and the settings.

    ``use_gpu``: run on CUDA when torch sees a GPU (the job's rule, see
    :func:`sgcore.pipeline.replica.pick_device`); otherwise on the CPU, even
    on a machine with a GPU, since no GPU was asked for.
    """

    model: str
    weights: str
    image_size: int | None
    preprocess: dict[str, Any]
    settings: MapSettings
    sanity: bool = True
    faithfulness: bool = True
    road_pic: bool = True  # with faithfulness: ROAD and PIC (sgcore.audit.road_pic)
    literature: bool = False  # methods side by side (sgcore.audit.literature)
    steps: int = 32
    seed: int = 0
    image_column: str | None = None
    use_gpu: bool = False
    score: str = "logit"
    fold_bn: bool = True
    cascade: str = "layer"  # the sanity cascade's granularity: layer, block or auto (sgcore.audit.sanity.cascade_steps)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """A few sampled images: where they are, what was explained, their stored maps."""

    sources: list[str]
    targets: list[int]
    seeds: list[int]
    maps: np.ndarray  # (N, H, W) float32, as stored


class AuditWorker:
    """Evaluates chunks: sanity cascade and deletion/insertion curves."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        # The job's resolved preprocessing, given whole, also feeds an archive that had
        # only --preprocess; the maps differentiate the job's --score. Where nothing
        # folds, one warning per worker.
        self.replica = Replica(spec.model, spec.weights, image_size=spec.image_size,
                               storage_options=spec.storage_options, preprocess=spec.preprocess,
                               score=spec.score, fold_bn=spec.fold_bn, device=pick_device(spec.use_gpu),
                               quiet=False)
        self.device = self.replica.device
        # The cascade randomizes the plain model and prepares each step; the rest runs prepared.
        self.model = self.replica.plain
        self.prepared = self.replica.explained
        self.preprocess = Preprocess.from_dict(spec.preprocess)
        self.on_step: Callable[[int, int], None] | None = None

    def _prepare(self, model: torch.nn.Module, *, quiet: bool = True) -> torch.nn.Module:
        """As the job's replicas: the network inside the score/logits wrappers is prepared, then wrapped again."""
        return self.replica.prepare(model, quiet=quiet)

    def evaluate(self, chunk: Chunk) -> dict[str, Any]:
        spec = self.spec
        pixels = load_images(chunk.sources, self.preprocess, spec.storage_options, image_column=spec.image_column)
        x = self.preprocess.normalize(torch.from_numpy(pixels)).to(self.device)
        targets = torch.tensor(chunk.targets, dtype=torch.int64, device=self.device)
        seeds = torch.tensor(chunk.seeds, dtype=torch.int64)
        if tuple(chunk.maps.shape[1:]) != tuple(x.shape[2:]):
            raise ValueError(
                f"stored maps must match the model input size; got maps {tuple(chunk.maps.shape[1:])} "
                f"and inputs {tuple(x.shape[2:])}"
            )
        t0 = time.perf_counter()
        out: dict[str, Any] = {"images": len(chunk.sources), "device": str(self.device)}
        if spec.sanity:
            r = cascading_randomization(self.model, x, targets, settings=spec.settings, seeds=seeds, seed=spec.seed,
                                        prepare=self._prepare, on_step=self.on_step,
                                        granularity=spec.cascade)  # type: ignore[arg-type]
            out["sanity"] = asdict(r)
        if spec.faithfulness:
            # The random orders depend on the chunk's first image, not on the worker.
            order_seed = (spec.seed * 1_000_003 + chunk.seeds[0]) % (2**63)
            f = deletion_insertion(
                self.prepared, x, targets, torch.tensor(chunk.maps, device=self.device),
                steps=spec.steps, seed=order_seed,
            )
            out["faithfulness"] = asdict(f)
            if spec.road_pic:
                from sgcore.audit.road_pic import evaluate_chunk

                out["road_pic"] = evaluate_chunk(self.model, self.preprocess, pixels, x, targets,
                                                 torch.tensor(chunk.maps, device=self.device), seed=order_seed)
        if spec.literature:
            from sgcore.audit.literature import evaluate as compare_methods

            out["literature"] = compare_methods(
                self.model, self.prepared, x, targets, seeds=seeds, n_samples=spec.settings.n_samples,
                noise_level=spec.settings.noise_level, seed=spec.seed, prepare=self._prepare, steps=spec.steps,
                on_step=self.on_step)
        out["seconds"] = time.perf_counter() - t0
        return out


def run_chunks(
    spec: WorkerSpec,
    chunks: list[Chunk],
    *,
    num_actors: int | None = None,
    address: str | None = None,
    gpus_per_actor: float = 0.0,
    max_retries: int = 3,
    on_result: Callable[[int, Any, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    worker: AuditWorker | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Evaluates chunks on the pipeline's replica pool, or in this process when ``num_actors == 0``.

    Args:
        spec: the workers' model and settings.
        chunks: work items.
        num_actors: replicas (None: as many as :func:`~sgcore.pipeline.cluster.plan_actors`
            fits, at most one per chunk); 0 runs in this process without Ray.
        address: Ray cluster address; None: ``RAY_ADDRESS``, else a fresh
            local Ray, shut down afterwards (as the job's driver does).
        gpus_per_actor: GPUs each replica reserves (0 on CPU-only clusters).
            ``spec.use_gpu`` must say whether it is > 0.
        max_retries: attempts after the first for a chunk whose replica died.
        on_result: called as each chunk finishes with (index, output or
            :class:`~sgcore.pipeline.pool.ItemFailed`, pid of the replica).
        on_step: in this process only: (map sets done, in all) within a chunk's cascade.
        log: gets one line saying where the chunks run.
        worker: in this process, a replica already loaded for ``spec`` (the plan's probe) to use.

    Returns:
        (one output or ``ItemFailed`` per chunk in order, the pool's record:
        ``replicas``, ``replicas_lost``, ``pids``).
    """
    if not chunks:
        return [], {"replicas": 0, "replicas_lost": 0, "pids": []}
    if num_actors == 0:
        worker = worker if worker is not None and worker.spec == spec else AuditWorker(spec)
        worker.on_step = on_step
        if log is not None:
            log(f"audit: {len(chunks)} chunk(s) in this process on {worker.device}")
        outputs: list[Any] = []
        for i, c in enumerate(chunks):
            try:
                value: Any = worker.evaluate(c)
            except InputError as e:  # an unreadable image: the chunk fails, the audit goes on
                value = ItemFailed(reason=str(e), attempts=1)
            outputs.append(value)
            if on_result is not None:
                on_result(i, value, os.getpid() if not isinstance(value, ItemFailed) else -1)
        return outputs, {"replicas": 1, "replicas_lost": 0, "pids": [os.getpid()]}
    try:
        import ray

        from sgcore.pipeline.cluster import (
            connect_ray,
            node_resources,
            plan_actors,
            replica_threads,
        )
        from sgcore.pipeline.pool import ReplicaPool
    except ImportError as e:  # pragma: no cover - ray is a core dependency
        raise ImportError("running the audit on Ray needs ray: pip install 'ray[data]'") from e
    owns_ray = connect_ray(address)
    try:
        plan = plan_actors(ray.cluster_resources(), gpus_per_actor=gpus_per_actor, cpus_per_actor=1.0,
                           num_actors=num_actors, min_actors=None, max_actors=None, num_shards=len(chunks),
                           nodes=node_resources())
        threads = replica_threads(plan, ray.cluster_resources().get("CPU", 1.0))  # a core kept for decoding
        if log is not None:
            log(f"audit: {len(chunks)} chunk(s) on the replica pool: {plan.describe()}")
        with ReplicaPool(AuditWorker, (spec,), plan=plan, max_retries=max_retries, cpu_threads=threads) as pool:
            outputs = pool.map("evaluate", chunks, on_result=on_result)
            record = {"replicas": plan.initial_actors, "replicas_lost": pool.actors_lost,
                      "pids": sorted(pool.pids), "plan": plan.describe()}
        return outputs, record
    finally:
        if owns_ray:
            ray.shutdown()
