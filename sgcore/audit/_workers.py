"""The heavy part of an audit: recomputing maps and perturbing images.

One :class:`AuditWorker` holds a model replica; the runner drives several of
them as Ray actors (or one in-process). Every result depends only on the
chunk's images, their seeds and the audit seed, never on which worker ran it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from sgcore.audit.faithfulness import deletion_insertion
from sgcore.audit.results import load_images
from sgcore.audit.sanity import MapSettings, cascading_randomization
from sgcore.models import load_model, with_score
from sgcore.models.preprocess import Preprocess
from sgcore.pipeline.worker import pick_device


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a worker needs to rebuild the model and the settings.

    ``use_gpu``: run on CUDA when torch sees a GPU (the job's rule, see
    :func:`sgcore.pipeline.worker.pick_device`); otherwise on the CPU, even
    on a machine with a GPU, since no GPU was asked for.
    """

    model: str
    weights: str
    image_size: int | None
    preprocess: dict[str, Any]
    settings: MapSettings
    sanity: bool = True
    faithfulness: bool = True
    steps: int = 32
    seed: int = 0
    image_column: str | None = None
    use_gpu: bool = False
    score: str = "logit"
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
        # only --preprocess; the maps differentiate the job's --score.
        loaded = load_model(spec.model, spec.weights, image_size=spec.image_size,
                            storage_options=spec.storage_options, preprocess=spec.preprocess)
        self.device = pick_device(spec.use_gpu)
        self.model = with_score(loaded.model.to(self.device).eval(), spec.score)
        self.preprocess = Preprocess.from_dict(spec.preprocess)

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
        out: dict[str, Any] = {"images": len(chunk.sources), "device": str(self.device)}
        if spec.sanity:
            r = cascading_randomization(self.model, x, targets, settings=spec.settings, seeds=seeds, seed=spec.seed)
            out["sanity"] = asdict(r)
        if spec.faithfulness:
            # The random orders depend on the chunk's first image, not on the worker.
            order_seed = (spec.seed * 1_000_003 + chunk.seeds[0]) % (2**63)
            f = deletion_insertion(
                self.model, x, targets, torch.tensor(chunk.maps, device=self.device),
                steps=spec.steps, seed=order_seed,
            )
            out["faithfulness"] = asdict(f)
        return out


def run_chunks(
    spec: WorkerSpec,
    chunks: list[Chunk],
    *,
    num_actors: int | None = None,
    address: str | None = None,
    gpus_per_actor: float = 0.0,
) -> list[dict[str, Any]]:
    """Evaluates chunks in order; on a Ray actor pool unless ``num_actors == 0``.

    Args:
        spec: the workers' model and settings.
        chunks: work items.
        num_actors: Ray actors (None: one per CPU of the cluster, at most one
            per chunk); 0 runs in this process without Ray.
        address: Ray cluster address; None: ``RAY_ADDRESS``, else a fresh
            local Ray, shut down afterwards (as the job's driver does).
        gpus_per_actor: GPUs each actor reserves (0 on CPU-only clusters).
            ``spec.use_gpu`` must say whether it is > 0.
    """
    if not chunks:
        return []
    if num_actors == 0:
        worker = AuditWorker(spec)
        return [worker.evaluate(c) for c in chunks]
    try:
        import ray
        from ray.util import ActorPool

        from sgcore.pipeline.cluster import connect_ray
    except ImportError as e:  # pragma: no cover - ray is a core dependency
        raise ImportError("running the audit on Ray needs ray: pip install 'ray[data]'") from e
    owns_ray = connect_ray(address)
    actors: list[Any] = []
    try:
        if num_actors is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            num_actors = max(1, min(cpus, len(chunks)))
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_actor)(AuditWorker)
        actors = [remote.remote(spec) for _ in range(num_actors)]
        pool = ActorPool(actors)
        return list(pool.map(lambda a, c: a.evaluate.remote(c), chunks))
    finally:
        for a in actors:
            ray.kill(a)
        if owns_ray:
            ray.shutdown()


