"""Images/s and CPU-seconds of a Ray Data pipeline with SmoothGradMaps next to the job, in one run.

    python -m sgcore.bench.ray_data --images 240 --n-samples 16

Both sides get the same demo images, model, n, model batch and CPUs on one
local Ray (started before any clock): the job (``run_job``: list, decode tasks,
an actor, Parquet parts, manifest) and ``read_binary_files -> map_batches(
SmoothGradMaps) -> write_parquet`` with one actor. Each runs ``repeats`` times;
the best time counts (the first run of each pays for worker start-up).

CPU-seconds (Linux): user + system time of each process of the local Ray,
read from ``/proc`` every 0.1 s while a run goes (a process's last reading
before it exits counts): the replica (the job's ``SaliencyActor``, the stage's
``MapWorker``; it loads and prepares the model and computes the maps, the stage
decoding too), every other Ray worker (decode, read and write tasks, helper
actors), and the driver. The maps of both sides are compared row by row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Ray's own daemons, which run whether or not a pipeline does.
_DAEMONS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
_REPLICAS = ("SaliencyActor", "SmoothGradMaps")


class ProcessCPU:
    """CPU-seconds of this process's descendants (the local Ray's processes), read from ``/proc``.

    A daemon thread reads every descendant's user + system time every
    ``interval`` seconds and keeps the last reading and the titles it had
    (``ray::SaliencyActor.process``...); :meth:`since` gives what each
    process used between two :meth:`snapshot` calls, by kind.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.titles: dict[int, set[str]] = {}
        self.own = 0.0  # this sampler's own CPU-seconds (left out of the driver's)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sgcore-cpu", daemon=True)
        self._thread.start()

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")

    def _read(self) -> None:
        parent: dict[int, int] = {}
        stats: dict[int, tuple[str, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            parent[int(name)] = int(fields[1])
            stats[int(name)] = (title, (int(fields[11]) + int(fields[12])) / self.tick)
        me = os.getpid()
        with self._lock:
            for pid, (title, cpu) in stats.items():
                p, hops = pid, 0
                while p > 1 and p != me and hops < 64:
                    p, hops = parent.get(p, 0), hops + 1
                if p == me and pid != me:
                    self.cpu[pid] = cpu
                    self.titles.setdefault(pid, set()).add(title)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            self.own = time.thread_time()
            self._stop.wait(self.interval)

    def snapshot(self) -> dict[int, float]:
        self._read()
        with self._lock:
            return dict(self.cpu)

    def since(self, before: dict[int, float]) -> dict[str, float]:
        """CPU-seconds since ``before`` (a :meth:`snapshot`): ``replica``, ``other_workers`` (Ray's
        daemons left out)."""
        after = self.snapshot()
        out = {"replica": 0.0, "other_workers": 0.0}
        with self._lock:
            for pid, cpu in after.items():
                used = cpu - before.get(pid, 0.0)
                titles = self.titles.get(pid, set())
                if used <= 0 or not any(t.startswith("ray::") for t in titles) \
                        or any(t.startswith(_DAEMONS) for t in titles):
                    continue
                out["replica" if any(r in t for t in titles for r in _REPLICAS) else "other_workers"] += used
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_ray_data_bench(*, images: int = 240, n_samples: int = 16, batch_size: int = 16,
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
    sampler = ProcessCPU() if ProcessCPU.available() else None
    job_s: list[float] = []
    data_s: list[float] = []
    job_cpu: list[dict[str, float]] = []
    data_cpu: list[dict[str, float]] = []
    try:
        for r in range(repeats):
            out = root / f"job-{r}"
            cfg = JobConfig(input=str(src), output=str(out), limit=images, shard_size=shard_size,
                            progress=False, num_actors=1, **settings)
            job_s.append(_timed(lambda cfg=cfg: run_job(cfg), sampler, job_cpu))
            out = root / f"data-{r}"

            def pipeline(out: Path = out) -> None:
                ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=0.5)
                ds.map_batches(
                    SmoothGradMaps, fn_constructor_kwargs=SmoothGradMaps.settings(**settings, root=str(src)),
                    compute=ray.data.ActorPoolStrategy(size=1), num_cpus=max(1, cpus - 0.5),
                    batch_size=shard_size,
                ).write_parquet(str(out))

            data_s.append(_timed(pipeline, sampler, data_cpu))
        rows = sum(1 for _ in ray.data.read_parquet(str(root / "data-0")).iter_rows())
        same = _same_maps(root / "job-0", root / "data-0")
    finally:
        if sampler is not None:
            sampler.close()
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "images": len(files), "rows_written": rows, "n_samples": n_samples,
        "batch_size": batch_size, "shard_size": shard_size, "cpus": cpus, "actors": 1,
        "job_seconds": [round(s, 2) for s in job_s], "ray_data_seconds": [round(s, 2) for s in data_s],
        "job_images_per_s": len(files) / min(job_s),
        "ray_data_images_per_s": len(files) / min(data_s),
        "maps_identical": same,
    }
    if sampler is not None:
        result["job_cpu_seconds"] = job_cpu
        result["ray_data_cpu_seconds"] = data_cpu
    return result


def _same_maps(job: Path, data: Path) -> str:
    """How many images both sides mapped, and how many of those maps are bit-identical."""
    import pyarrow.dataset as pads

    def maps(folder: Path) -> dict[str, Any]:
        files = [str(p) for p in sorted(folder.rglob("*.parquet"))]
        table = pads.dataset(files, format="parquet").to_table(columns=["image_id", "saliency"])
        # float16 values as Python floats: equal lists are equal bits (the maps are finite)
        return dict(zip(table.column("image_id").to_pylist(), table.column("saliency").to_pylist(), strict=True))

    a, b = maps(job), maps(data)
    both = sorted(set(a) & set(b))
    same = sum(a[i] == b[i] and a[i] is not None for i in both)
    return f"{same} of {len(both)}"


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Job vs Ray Data pipeline: demo model, {r['images']} images, n={r['n_samples']}, model batch "
        f"{r['batch_size']}, shards / Ray Data batches of {r['shard_size']}, {r['cpus']} CPUs, 1 actor; "
        f"bit-identical maps: {r['maps_identical']}",
        "",
        "| pipeline | seconds (each run) | images/s (best) |",
        "|---|---|---:|",
        f"| `python -m jobs.smoothgrad` (run_job) | {r['job_seconds']} | {r['job_images_per_s']:.1f} |",
        f"| read_binary_files → map_batches(SmoothGradMaps) → write_parquet | {r['ray_data_seconds']} | "
        f"{r['ray_data_images_per_s']:.1f} |",
    ]
    if "job_cpu_seconds" in r:
        lines += ["", "CPU-seconds of each run (user + system):", "",
                  "| pipeline | run | replica | other Ray workers | driver | all | replica per image |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, runs in (("job", r["job_cpu_seconds"]), ("Ray Data", r["ray_data_cpu_seconds"])):
            for k, c in enumerate(runs):
                lines.append(f"| {name} | {k + 1} | {c['replica']:.1f} | {c['other_workers']:.1f} | {c['driver']:.1f} "
                             f"| {c['all']:.1f} | {c['replica'] / r['images']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=240, help="demo images (default: %(default)s)")
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


def _timed(fn: Any, sampler: ProcessCPU | None = None, cpu: list[dict[str, float]] | None = None) -> float:
    """Seconds ``fn`` took; with a sampler, appends its CPU-seconds to ``cpu``."""
    before = sampler.snapshot() if sampler is not None else {}
    own, driver = (sampler.own if sampler is not None else 0.0), time.process_time()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    if sampler is not None and cpu is not None:
        time.sleep(2 * sampler.interval)  # a last reading of every process still alive
        used = sampler.since(before)
        used["driver"] = max(0.0, time.process_time() - driver - (sampler.own - own))
        used["all"] = used["replica"] + used["other_workers"] + used["driver"]
        cpu.append({k: round(v, 2) for k, v in used.items()})
    return seconds


if __name__ == "__main__":
    raise SystemExit(main())
