"""What planning costs as an input grows: time, driver memory, shards, manifest bytes.

    python -m jobs.benchmark --mode scale --sizes 1000 10000 100000           # local, empty files
    python -m jobs.benchmark --mode scale --sizes 1000 --s3-sizes 1000 10000  # + a moto S3 server

Each size gets a fresh tree of empty ``.jpg`` files (1,000 per folder) in a
temporary folder (removed afterwards), or empty keys in a bucket of a moto S3
server started here in its own process (the keys made in its backend, laid out the
same way). Planning runs in a subprocess of its own,
so that its peak RSS (``ru_maxrss``) is the planning's and nothing else's: the
figure is its growth over the RSS after the imports. The manifest bytes are
those of the ``Manifest.begin`` of the plan (a fresh output), as JSON.
``--baseline PATH`` plans every tree a second time with the code at PATH on
the path (a checkout of another revision), side by side in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PER_FOLDER = 1000


def make_local_tree(root: Path, n: int, *, per_folder: int = PER_FOLDER) -> Path:
    """``n`` empty image files, ``per_folder`` to a folder (``c00000/00000000.jpg``, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, per_folder):
        folder = root / f"c{start // per_folder:05d}"
        folder.mkdir(exist_ok=True)
        for i in range(start, min(n, start + per_folder)):
            os.close(os.open(folder / f"{i:08d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def measure_planning(url: str, *, shard_size: int = 256, pythonpath: str | None = None,
                     env: dict[str, str] | None = None, warm: str | None = None,
                     timeout: float = 3600) -> dict[str, Any]:
    """Plans ``url`` in a fresh interpreter (with ``pythonpath`` first) and returns its figures.

    ``warm``: a small input of the same store planned first, so that imports and
    client sessions are not counted (default: a local folder of one file).
    """
    code = ("import sys, json; from sgcore.bench.scale import _plan_here; "
            "print(json.dumps(_plan_here(sys.argv[1], int(sys.argv[2]), sys.argv[3] or None)))")
    run_env = dict(os.environ, **(env or {}))
    if pythonpath is not None:
        run_env["PYTHONPATH"] = pythonpath
    # cwd: not a checkout, whose sgcore ``-c`` would put before PYTHONPATH's.
    out = subprocess.run([sys.executable, "-c", code, url, str(shard_size), warm or ""], capture_output=True, text=True,
                         env=run_env, timeout=timeout, check=False, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"planning {url} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _plan_here(url: str, shard_size: int, warm: str | None = None) -> dict[str, Any]:
    """Plans ``url`` in this process: seconds, RSS growth (MB), shards, fingerprint, manifest bytes."""
    import hashlib

    import sgcore
    from sgcore.io import plan_shards
    from sgcore.io.output import Manifest, RunEntry

    with tempfile.TemporaryDirectory() as folder:  # lazy imports and first-call caches: not the plan's
        Path(folder, "a.jpg").touch()
        plan_shards(warm or folder, shard_size=shard_size)
    base = _rss_mb()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    shards = plan_shards(url, shard_size=shard_size)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = _rss_mb() - base
    h = hashlib.sha256()  # pipeline.driver.plan_fingerprint, without importing Ray here
    for s in shards:
        h.update(s.shard_id.encode())
        for m in s.planned_ids():
            h.update(b"\x00" + m.encode())
    contents = hashlib.sha256("".join(f"{s.shard_id}:{s.content}\n" for s in shards).encode()).hexdigest()[:16]
    run = RunEntry(started="2026-01-01T00:00:00Z", shards=len(shards), shards_skipped=0)
    manifest = Manifest.begin(config={"input": url}, config_hash="0" * 16, preprocess={}, model={},
                              fingerprint=h.hexdigest()[:16], shards=shards, committed={}, previous=None, run=run)
    try:  # the parallel S3 listing counts its requests (older code has none to count)
        from sgcore.io._tree import last_stats
        requests = last_stats.requests if url.startswith("s3://") else None
    except ImportError:
        requests = None
    return {"sgcore": str(Path(sgcore.__file__).parent), "list_requests": requests, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "rss_growth_mb": round(max(0.0, peak - base), 1),
            "rss_held_mb": round(held, 1), "shards": len(shards), "images": sum(s.size for s in shards),
            "fingerprint": h.hexdigest()[:16], "contents": contents,
            "manifest_bytes": len(manifest.to_json())}


def _serve(port: int, buckets: str) -> None:
    """Runs moto's S3 server on ``port`` with ``buckets`` (``name:n,...``) already holding n empty keys.

    The keys go straight into moto's backend (a PUT through the API costs ~6 ms
    each there: 10^5 keys would take ten minutes), laid out like :func:`make_local_tree` under ``data/``,
    or all directly under ``data/`` (``name:n:flat``: a flat prefix, ``data/00000000.jpg``, ...).
    """
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    backend = s3_backends["123456789012"]["aws"]
    for spec in filter(None, buckets.split(",")):
        name, n, *layout = spec.split(":")
        backend.create_bucket(name, "us-east-1")
        backend.put_object(name, "warm/a.jpg", b"")
        flat = layout == ["flat"]
        for i in range(int(n)):
            backend.put_object(name, f"data/{i:08d}.jpg" if flat else f"data/c{i // PER_FOLDER:05d}/{i:08d}.jpg", b"")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    while True:
        time.sleep(3600)


class MotoServer:
    """A moto S3 server in its own process on a free loopback port (the client's GIL stays the client's).

    ``buckets``: bucket name -> number of empty keys under ``data/`` made before it serves;
    ``flat``: all of them directly under ``data/``, no sub-folders.
    """

    def __init__(self, buckets: dict[str, int] | None = None, *, flat: bool = False) -> None:
        self.flat = flat
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.buckets = buckets or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        code = "import sys; from sgcore.bench.scale import _serve; _serve(int(sys.argv[1]), sys.argv[2])"
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH")))))
        fill = ",".join(f"{b}:{n}" + (":flat" if self.flat else "") for b, n in self.buckets.items())
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.port), fill], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60 + sum(self.buckets.values()) / 1000
        while time.time() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"moto S3 server did not start on {self.endpoint}")

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user + system), from /proc; 0 where unknown."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:  # type: ignore[union-attr]
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def run_scale(*, sizes: Sequence[int] = (1000, 10000), s3_sizes: Sequence[int] = (), shard_size: int = 256,
              baseline: str | None = None, tmp: str | None = None, s3_flat: bool = False,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Plans trees of each size (local, then S3); one row per (store, size, code).

    ``s3_flat``: the S3 keys all directly under ``data/`` (one flat prefix), not 1,000 to a folder.
    An S3 row also gives the moto server's CPU seconds while it answered that planning.
    """
    rows: list[dict[str, Any]] = []
    here = str(Path(__file__).resolve().parents[2])
    codes = [("this", here)] + ([("baseline", baseline)] if baseline else [])
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="sg-scale-", dir=tmp))
        try:
            t0 = time.perf_counter()
            make_local_tree(root / "data", n)
            log(f"local {n:,}: made in {time.perf_counter() - t0:.1f} s")
            for name, path in codes:
                r = measure_planning(str(root / "data"), shard_size=shard_size, pythonpath=path)
                rows.append({"store": "local", "files": n, "code": name, **r})
                log(_line(rows[-1]))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if s3_sizes:
        t0 = time.perf_counter()
        store = "s3 (moto, flat)" if s3_flat else "s3 (moto)"
        with MotoServer({f"scale-{n}": n for n in s3_sizes}, flat=s3_flat) as server:
            log(f"s3: moto server with {', '.join(f'{n:,}' for n in s3_sizes)} keys up in "
                f"{time.perf_counter() - t0:.1f} s")
            for n in s3_sizes:
                for name, path in codes:
                    cpu0 = server.cpu_seconds()
                    r = measure_planning(f"s3://scale-{n}/data", shard_size=shard_size, pythonpath=path,
                                         env=server.env(), warm=f"s3://scale-{n}/warm")
                    r["server_cpu_seconds"] = round(server.cpu_seconds() - cpu0, 2)
                    rows.append({"store": store, "files": n, "code": name, **r})
                    log(_line(rows[-1]))
    return rows


def _line(r: dict[str, Any]) -> str:
    server = f", server {r['server_cpu_seconds']:.2f} s CPU" if r.get("server_cpu_seconds") is not None else ""
    requests = f", {r['list_requests']} requests" if r.get("list_requests") is not None else ""
    return (f"{r['store']} {r['files']:,} [{r['code']}]: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU{server}"
            f"{requests}), +{r['rss_growth_mb']:.0f} MB peak, "
            f"{r['shards']} shards, manifest {r['manifest_bytes']:,} B, fingerprint {r['fingerprint']}, "
            f"contents {r['contents']}")


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| store | files | code | planning s | s per 10^6 files | driver RSS growth MB | B per file "
             "| shards | manifest bytes | list requests | server CPU s | fingerprint |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        n = r["files"]
        lines.append(f"| {r['store']} | {n:,} | {r['code']} | {r['seconds']:.2f} | {r['seconds'] / n * 1e6:.1f} "
                     f"| {r['rss_growth_mb']:.0f} | {r['rss_growth_mb'] * 2**20 / n:.0f} | {r['shards']:,} "
                     f"| {r['manifest_bytes']:,} | {r.get('list_requests') if r.get('list_requests') is not None else '-'} "
                     f"| {r.get('server_cpu_seconds', '-')} | {r['fingerprint']} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], out: str, stem: str = "scale") -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{stem}.md", folder / f"{stem}.json"
    md.write_text(to_markdown(rows))
    js.write_text(json.dumps(list(rows), indent=2))
    return md, js


__all__ = ["MotoServer", "make_local_tree", "measure_planning", "run_scale", "to_markdown",
           "write_tables"]
