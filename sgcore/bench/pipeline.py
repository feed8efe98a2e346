"""Pipeline benchmark: the whole job against the bare kernel, side by side.

Does reading, decoding, Ray scheduling and writing starve the model? Both sides
run the same model, images, n and batch size on this machine, in one process:
first the kernel alone on pre-decoded tensors, then ``run_job`` over the same
files on a local Ray (started before the clock starts). The ratio job/kernel
is the share of the model's speed that survives the pipeline.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgcore.attribution import prepare_model, smoothgrad
from sgcore.config import JobConfig
from sgcore.io import decode_shard, plan_shards
from sgcore.models import load_model


def run_pipeline_bench(*, model: str = "demo", images: int = 240, n_samples: int = 16,
                       batch_size: int = 16, shard_size: int = 30, repeats: int = 2,
                       data_dir: str | None = None) -> dict[str, Any]:
    """Times the bare kernel and the full job on the same demo images (``model="lite0"``: EfficientNet-Lite0
    with its ImageNet weights on the first ``images`` bundled photographs, 224 px).

    Returns:
        dict with ``kernel_images_per_s``, ``job_images_per_s`` (best of
        ``repeats`` each), ``ratio`` and the setup.
    """
    import ray

    from sgcore.demo import ensure_demo_data
    from sgcore.pipeline.driver import run_job

    root = Path(data_dir or tempfile.mkdtemp(prefix="sgbench-"))
    spec, weights = model, "default" if model == "demo" else "none"
    if model == "lite0":
        from sgcore.demo.photos import PHOTOS, write_photos
        from sgcore.models.zoo.efficientnet_lite0 import SPEC

        spec, weights = SPEC, "default"
        src = root / "photos"
        write_photos(src, list(PHOTOS)[:images])
    else:
        src = ensure_demo_data(root / "demo", n_per_class=-(-images // 4))
    loaded = load_model(spec, weights)
    pre = loaded.preprocess
    shards = plan_shards(str(src), shard_size=shard_size, limit=images)
    pixels = np.concatenate([
        decode_shard(s, **pre.decode_kwargs()).images for s in shards
    ])
    x = pre.normalize(torch.from_numpy(pixels))
    net = prepare_model(loaded.model.eval(), example=x[:1])

    def kernel() -> None:
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            with torch.no_grad():
                targets = net(chunk).argmax(dim=1)
            smoothgrad(net, chunk, targets, n_samples=n_samples,
                       seeds=torch.arange(i, i + len(chunk)))

    kernel_s = min(_timed(kernel) for _ in range(repeats))

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    job_s: list[float] = []
    steady: list[float] = []
    try:
        for r in range(repeats):
            out = root / f"out-{r}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = JobConfig(input=str(src), output=str(out), model=spec, weights=weights, limit=images,
                            n_samples=n_samples, batch_size=batch_size, shard_size=shard_size,
                            progress=False)
            job_s.append(_timed(lambda cfg=cfg: run_job(cfg)))
            steady.append(_steady_rate(out))
    finally:
        if started:
            ray.shutdown()
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    n = len(x)
    result = {
        "model": model, "images": n, "n_samples": n_samples, "batch_size": batch_size,
        "shard_size": shard_size, "torch_threads": torch.get_num_threads(),
        "kernel_images_per_s": n / kernel_s, "job_images_per_s": n / min(job_s),
        "job_seconds": [round(s, 2) for s in job_s], "kernel_seconds": round(kernel_s, 2),
    }
    result["job_steady_images_per_s"] = max(steady)
    result["ratio"] = result["job_images_per_s"] / result["kernel_images_per_s"]
    result["ratio_steady"] = result["job_steady_images_per_s"] / result["kernel_images_per_s"]
    return result


def _steady_rate(out: Path) -> float:
    """Images/s between the first and the last shard commit: the job once its
    actors are up, which is where decoding or writing could starve the model."""
    from sgcore.io import read_manifest

    manifest = read_manifest(str(out))
    if manifest is None:
        raise RuntimeError(f"the job wrote no manifest under {out}")
    shards = sorted(manifest.shards.values(), key=lambda e: e.finished or 0.0)
    span = (shards[-1].finished or 0.0) - (shards[0].finished or 0.0)
    return sum(e.rows or 0 for e in shards[1:]) / span if span > 0 else float("nan")


def to_markdown(result: dict[str, Any]) -> str:
    return "\n".join([
        f"Pipeline vs bare kernel: {result['model']}, {result['images']} images, "
        f"n={result['n_samples']}, batch {result['batch_size']}, shards of {result['shard_size']}",
        "",
        "| variant | images/s |",
        "|---|---:|",
        f"| bare kernel (pre-decoded tensors, {result['torch_threads']} threads) | "
        f"{result['kernel_images_per_s']:.3g} |",
        f"| job end to end (list, decode, Ray actors, write Parquet) | {result['job_images_per_s']:.3g} |",
        f"| job, first to last shard commit (actors up) | {result['job_steady_images_per_s']:.3g} |",
        f"| **ratio job / kernel, end to end** | **{result['ratio']:.2f}** |",
        f"| **ratio job / kernel, actors up** | **{result['ratio_steady']:.2f}** |",
    ])


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
