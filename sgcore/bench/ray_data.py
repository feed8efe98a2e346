"""Images/s of a Ray Data pipeline with SmoothGradMaps next to the job, in one run.

    python -m sgcore.bench.ray_data --images 120 --n-samples 16

Both sides get the same demo images, model, n, model batch and CPUs on one
local Ray (started before any clock): the job (``run_job``: list, decode tasks,
an actor, Parquet parts, manifest) and ``read_binary_files -> map_batches(
SmoothGradMaps) -> write_parquet`` with one actor. Each runs ``repeats`` times;
the best time counts (the first run of each pays for worker start-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def run_ray_data_bench(*, images: int = 120, n_samples: int = 16, batch_size: int = 16,
                       shard_size: int = 30, repeats: int = 2, num_cpus: int | None = None
                       ) -> dict[str, Any]:
    """Times the job and the Ray Data pipeline on the same images; returns the figures."""
    import ray

    from sgcore.config import JobConfig
    from sgcore.demo import ensure_demo_data
    from sgcore.pipeline import run_job
    from sgcore.ray_data import SmoothGradMaps

    root = Path(tempfile.mkdtemp(prefix="sg-raydata-bench-"))
    src = ensure_demo_data(root / "demo", n_per_class=-(-images // 4))
    files = sorted(str(p) for p in src.rglob("*.png"))[:images]
    settings = dict(model="demo", n_samples=n_samples, batch_size=batch_size)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", num_cpus=num_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    job_s: list[float] = []
    data_s: list[float] = []
    try:
        for r in range(repeats):
            out = root / f"job-{r}"
            cfg = JobConfig(input=str(src), output=str(out), limit=images, shard_size=shard_size,
                            progress=False, num_actors=1, **settings)
            job_s.append(_timed(lambda cfg=cfg: run_job(cfg)))
            out = root / f"data-{r}"

            def pipeline(out: Path = out) -> None:
                ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=0.5)
                ds.map_batches(
                    SmoothGradMaps, fn_constructor_kwargs=SmoothGradMaps.settings(**settings, root=str(src)),
                    compute=ray.data.ActorPoolStrategy(size=1), num_cpus=max(1, cpus - 0.5),
                    batch_size=shard_size,
                ).write_parquet(str(out))

            data_s.append(_timed(pipeline))
        rows = sum(1 for _ in ray.data.read_parquet(str(root / "data-0")).iter_rows())
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "images": len(files), "rows_written": rows, "n_samples": n_samples,
        "batch_size": batch_size, "shard_size": shard_size, "cpus": cpus, "actors": 1,
        "job_seconds": [round(s, 2) for s in job_s], "ray_data_seconds": [round(s, 2) for s in data_s],
        "job_images_per_s": len(files) / min(job_s),
        "ray_data_images_per_s": len(files) / min(data_s),
    }


def to_markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"Job vs Ray Data pipeline: demo model, {r['images']} images, n={r['n_samples']}, model batch "
        f"{r['batch_size']}, shards / Ray Data batches of {r['shard_size']}, {r['cpus']} CPUs, 1 actor",
        "",
        "| pipeline | seconds (each run) | images/s (best) |",
        "|---|---|---:|",
        f"| `python -m jobs.smoothgrad` (run_job) | {r['job_seconds']} | {r['job_images_per_s']:.1f} |",
        f"| read_binary_files → map_batches(SmoothGradMaps) → write_parquet | {r['ray_data_seconds']} | "
        f"{r['ray_data_images_per_s']:.1f} |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=120, help="demo images (default: %(default)s)")
    p.add_argument("--n-samples", type=int, default=16, help="noise samples (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="model batch (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=30,
                   help="job shard = Ray Data batch (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each (default: %(default)s)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    r = run_ray_data_bench(images=a.images, n_samples=a.n_samples, batch_size=a.batch_size,
                           shard_size=a.shard_size, repeats=a.repeats, num_cpus=a.num_cpus)
    print(json.dumps(r) if a.json else to_markdown(r))
    return 0


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
