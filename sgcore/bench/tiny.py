"""Where a tiny-compute job's time goes: the whole job against the same work in one process.

    python -m jobs.benchmark --mode tiny --images 4096 --image-size 32 --n-samples 1 --shard-sizes 8 64 512

With one noise sample per image on 32 px images, the model costs almost nothing:
what is left is the job's overhead per shard and per run. Both sides run the
demo model on the same ``images`` PNGs (written once, in a temporary folder):

- **in one process**: plan, then per shard decode, compute the rows
  (:class:`~sgcore.pipeline.worker.ShardProcessor`) and write the part
  (:func:`~sgcore.pipeline.worker.write_part`), each stage timed;
- **the whole job**: ``run_job`` on a local Ray started before the clock, its
  wall time split into the time to the first commit (planning, actor start,
  first decode) and the rest, and the replicas' own seconds per shard from the
  manifest (compute, the commit check and the write; summed over replicas).

The ratio job / in-process at each shard size is the share of the in-process
rate the whole job keeps.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` random ``size`` px PNGs in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(sub / f"{i:06d}.png")
    return folder


def _config(src: Path, out: Path, *, image_size: int, n_samples: int, shard_size: int) -> Any:
    from sgcore.config import JobConfig

    return JobConfig(input=str(src), output=str(out), model="demo", weights="default", image_size=image_size,
                     n_samples=n_samples, batch_size=64, shard_size=shard_size, progress=False)


def in_process(src: Path, out: Path, *, image_size: int, n_samples: int, shard_size: int) -> dict[str, Any]:
    """The job's work on one process, no Ray: seconds per stage."""
    from sgcore.io import decode_shard, plan_shards
    from sgcore.pipeline.worker import ShardProcessor, write_part

    config = _config(src, out, image_size=image_size, n_samples=n_samples, shard_size=shard_size)
    processor = ShardProcessor(config)
    pre = processor.loaded.preprocess
    stages = dict.fromkeys(("plan", "decode", "compute", "write"), 0.0)
    t0 = time.perf_counter()
    shards = plan_shards(config.input, shard_size=shard_size)
    stages["plan"] = time.perf_counter() - t0
    images = 0
    for spec in shards:
        t = time.perf_counter()
        decoded = decode_shard(spec, **pre.decode_kwargs())
        t1 = time.perf_counter()
        rows = processor.compute_rows(decoded)
        t2 = time.perf_counter()
        write_part(config, pre, spec.shard_id, rows, config_hash="bench", content=spec.content)
        t3 = time.perf_counter()
        stages["decode"] += t1 - t
        stages["compute"] += t2 - t1
        stages["write"] += t3 - t2
        images += len(rows)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "images": images, "images_per_s": round(images / seconds, 1),
            **{f"{k}_s": round(v, 2) for k, v in stages.items()}}


def whole_job(src: Path, out: Path, *, image_size: int, n_samples: int, shard_size: int) -> dict[str, Any]:
    """``run_job`` on the local Ray: wall time, time to the first commit, replicas' seconds from the manifest."""
    from sgcore.io import read_manifest
    from sgcore.pipeline.driver import run_job

    config = _config(src, out, image_size=image_size, n_samples=n_samples, shard_size=shard_size)
    started = time.time()
    t0 = time.perf_counter()
    result = run_job(config)
    seconds = time.perf_counter() - t0
    manifest = read_manifest(str(out))
    entries = [e for e in manifest.shards.values() if e.finished] if manifest else []
    finished = sorted(e.finished for e in entries)
    task = sum(e.seconds or 0.0 for e in entries)
    images = sum(e.rows or 0 for e in entries)
    first = finished[0] - started if finished else float("nan")
    return {"seconds": round(seconds, 2), "images": images, "images_per_s": round(images / seconds, 1),
            "first_commit_s": round(first, 2), "after_first_commit_s": round(seconds - first, 2),
            "replica_task_s": round(task, 2), "shards": len(entries),
            "ok": getattr(result, "ok", None)}


def run_tiny(*, images: int = 4096, image_size: int = 32, n_samples: int = 1,
             shard_sizes: Sequence[int] = (64,), data_dir: str | None = None) -> list[dict[str, Any]]:
    """One row per shard size: the in-process run, then the whole job, on the same images."""
    import ray

    root = Path(data_dir or tempfile.mkdtemp(prefix="sg-tiny-"))
    rows: list[dict[str, Any]] = []
    started = not ray.is_initialized()
    try:
        src = make_images(root / "in", images, image_size)
        if started:
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        for size in shard_sizes:
            one = in_process(src, root / f"one-{size}", image_size=image_size, n_samples=n_samples,
                             shard_size=size)
            job = whole_job(src, root / f"job-{size}", image_size=image_size, n_samples=n_samples,
                            shard_size=size)
            rows.append({"shard_size": size, "in_process": one, "job": job,
                         "ratio": round(job["images_per_s"] / one["images_per_s"], 3)})
    finally:
        if started:
            ray.shutdown()
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| shard size | in one process img/s | decode s | compute s | write s | job img/s | ratio "
             "| job s | to first commit s | after it s | replicas' task s (summed) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, j = r["in_process"], r["job"]
        lines.append(f"| {r['shard_size']} | {o['images_per_s']} | {o['decode_s']} | {o['compute_s']} "
                     f"| {o['write_s']} | {j['images_per_s']} | {r['ratio']:.2f} | {j['seconds']} "
                     f"| {j['first_commit_s']} | {j['after_first_commit_s']} | {j['replica_task_s']} |")
    return "\n".join(lines) + "\n"


__all__ = ["in_process", "make_images", "run_tiny", "to_markdown", "whole_job"]
