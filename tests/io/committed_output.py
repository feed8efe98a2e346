"""A committed output of many tiny parts, written straight through the output API (no model, no Ray),
and a count of the S3 requests a piece of code makes.

Also a benchmark: ``python -m tests.io.committed_output --parts 10000`` starts a moto server on
loopback, writes such an output and prints what a no-op resume's committed-set check costs
(requests by kind, seconds).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from sgcore.io import Manifest, OutputDir, RunEntry, encode_part, part_name
from sgcore.io.output import now, sha256_hex

CHASH = "h1"


def shard_ids(n: int) -> list[str]:
    return [f"{i:06d}" for i in range(n)]


def write_committed_output(url: str, n: int, fence: Any, *, recorded: int | None = None,
                           chash: str = CHASH) -> Manifest:
    """``n`` committed parts under ``url`` with their fenced footers, and a manifest that records
    the commits of the first ``recorded`` (all by default); the rest are in the crash window
    (written, not yet in the manifest). Returns the manifest (also written, with ``fence``)."""
    recorded = n if recorded is None else recorded
    out = OutputDir(url)
    ids = shard_ids(n)
    blobs: dict[str, bytes] = {}
    for sid in ids:
        meta = {"config_hash": chash, "status": "committed", "content": None, "shard": sid, "rows": 1,
                "ok": 1, "errors": 0, **fence.stamp()}
        blobs[sid], _ = encode_part([], map_shape=(2, 2), metadata=meta)
    if n:
        out.fs.pipe({out.path_of(part_name(sid)): data for sid, data in blobs.items()})
    listing = out.part_listing()
    run = RunEntry.begin(now(), shards=n, skipped=0, fence=fence)
    specs = [SimpleNamespace(shard_id=sid, size=1, members=(f"{sid}.png",)) for sid in ids]
    committed = {}
    for sid in ids[:recorded]:
        size, stamp = listing[part_name(sid)]
        committed[sid] = {"rows": 1, "ok": 1, "errors": 0,
                          "commit": {**fence.stamp(), "size": size, "stamp": stamp, "sha256": sha256_hex(blobs[sid])}}
    manifest = Manifest.begin(config={"n": n}, config_hash=chash, preprocess={}, model={}, fingerprint="f",
                              shards=specs, committed=committed, previous=None, run=run)
    out.write_manifest(manifest, fence)
    return manifest


class S3Requests:
    """Counts the requests (by operation) and the response bytes of an s3fs filesystem's client."""

    def __init__(self, fs: Any) -> None:
        fs.connect()
        self.events = fs.s3.meta.events
        self.ops: collections.Counter[str] = collections.Counter()
        self.keys: collections.Counter[str] = collections.Counter()  # the object names requested
        self.bytes_in = 0
        self.events.register("before-call.s3", self._call)
        self.events.register("after-call.s3", self._after)

    def _call(self, model: Any = None, params: Any = None, **_: Any) -> None:
        self.ops[model.name] += 1
        with contextlib.suppress(Exception):
            self.keys[str(params.get("Key") or params.get("Prefix") or "").rsplit("/", 1)[-1]] += 1

    def _after(self, http_response: Any = None, model: Any = None, **_: Any) -> None:
        if model is not None and model.name == "HeadObject":
            return  # its content-length is the object's size: no body comes
        with contextlib.suppress(Exception):
            self.bytes_in += int(http_response.headers.get("content-length") or 0)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def reset(self) -> None:
        self.ops.clear()
        self.keys.clear()
        self.bytes_in = 0

    def close(self) -> None:
        self.events.unregister("before-call.s3", self._call)
        self.events.unregister("after-call.s3", self._after)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on loopback, its endpoint in the environment (the benchmark's own)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing-secret", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield os.environ["AWS_ENDPOINT_URL"]
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--unrecorded", type=int, default=0, help="parts the manifest does not record")
    args = parser.parse_args(argv)
    import s3fs

    from sgcore.io.lease import Lease
    from sgcore.pipeline.driver import _committed_shards

    with moto_server():
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        for n in args.parts:
            url = f"s3://bench/resume-{n}"
            lease = Lease(url, run_id=f"bench{n}")
            lease.acquire()
            t = time.perf_counter()
            write_committed_output(url, n, lease.fence, recorded=n - args.unrecorded)
            made = time.perf_counter() - t
            out = OutputDir(url)
            counter = S3Requests(out.fs)
            t = time.perf_counter()
            manifest = out.read_manifest()
            specs = [SimpleNamespace(shard_id=sid, content=None) for sid in shard_ids(n)]
            done = _committed_shards(out, specs, CHASH, manifest)
            took = time.perf_counter() - t
            counter.close()
            print(f"parts={n} unrecorded={args.unrecorded} committed={len(done)} requests={counter.total} "
                  f"({dict(counter.ops)}) bytes_in={counter.bytes_in} seconds={took:.2f} (setup {made:.1f} s)",
                  flush=True)
            lease.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
