"""How often a job downloads its weights: once in the driver, once per replica.

The checkpoint is served over HTTP from this process; the server counts the GETs
of every process (the driver's and the Ray actors'), which a monkeypatch could not.
"""

from __future__ import annotations

import collections
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from sgcore.config import JobConfig
from sgcore.pipeline import run_job
from tests.conftest import write_images

pytest.importorskip("aiohttp")  # fsspec's http://


class _Counting(http.server.SimpleHTTPRequestHandler):
    gets: collections.Counter = collections.Counter()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).gets[self.path] += 1
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of a loopback HTTP server that counts GETs per path."""
    root = tmp_path_factory.mktemp("served")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Counting, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


@pytest.mark.slow  # in CI: test_the_driver_and_a_replica_each_read_a_checkpoint_once (below, in process)
def test_a_checkpoint_is_read_once_by_the_driver_and_once_per_replica(ray_local, served, tmp_path):
    base, root = served
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=2).state_dict(), root / "mnv3.pt")
    write_images(tmp_path / "in", n_per_class=2, size=40)
    _Counting.gets.clear()
    result = run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="mobilenet_v3_small",
                               weights=f"{base}/mnv3.pt", image_size=32, n_samples=2, shard_size=1, batch_size=2,
                               num_actors=2, cpus_per_actor=0.5, gpus_per_actor=0.0, progress=False))
    assert result.errors == 0
    replicas = 2
    assert _Counting.gets["/mnv3.pt"] == 1 + replicas, dict(_Counting.gets)


def test_the_driver_and_a_replica_each_read_a_checkpoint_once(monkeypatch, tmp_path):
    """In process, for every path that reads weights: the driver's checks, a replica's load."""
    from sgcore.models import checkpoint, load_model
    from sgcore.pipeline.driver import _model_on_driver

    reads: list[str] = []
    real = checkpoint.read_weights_bytes
    monkeypatch.setattr(checkpoint, "read_weights_bytes", lambda url, *a, **k: reads.append(url) or real(url, *a, **k))
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=2).state_dict(), tmp_path / "w.pt")
    for model in ("mobilenet_v3_small", "demo"):
        weights = str(tmp_path / "w.pt") if model != "demo" else "default"
        config = JobConfig(input=str(tmp_path), output=str(tmp_path / "out"), model=model, weights=weights,
                           image_size=32)
        reads.clear()
        _model_on_driver(config)
        assert len(reads) == 1, reads
        reads.clear()
        load_model(model, weights, image_size=32)
        assert len(reads) == 1, reads
