"""What a run leaves behind in the process (issue 27, items 3 and 6), on a local Ray kept for the module:
no live actor once ``run_job`` returns, and manifest checkpoints written while shards commit."""

from __future__ import annotations

import json

import pytest
import ray

from sgcore.config import JobConfig
from sgcore.io import OutputDir
from sgcore.pipeline import run_job
from sgcore.pipeline.backends import RayJobBackend

pytestmark = pytest.mark.usefixtures("ray_local")

SMALL = dict(model="resnet18", weights="none", image_size=32, n_samples=2, shard_size=1,
             batch_size=4, progress=False)


def _alive(actor_ids: set[str]) -> list[str]:
    """Those of ``actor_ids`` that Ray's control store still lists alive (read from the GCS: the
    state API needs the dashboard, which the tests' Ray does not start)."""
    from ray._private.state import actors

    return sorted(actor_ids & set(actors(actor_state_name="ALIVE")))


def test_no_actor_of_a_run_outlives_it_and_its_manifest_is_checkpointed(image_dir, tmp_path, monkeypatch):
    started: set[str] = set()
    new_actor = RayJobBackend.new_actor

    def recording(self):
        actor = new_actor(self)
        started.add(actor._actor_id.hex())  # the id only: a handle would keep it alive
        if self.tally is not None:
            started.add(self.tally._actor_id.hex())
        return actor

    monkeypatch.setattr(RayJobBackend, "new_actor", recording)
    checkpoints: list[tuple[str, int]] = []
    write = OutputDir.write_manifest

    def recording_write(self, manifest, fence=None):
        checkpoints.append((manifest.status, sum(e.status == "committed" for e in manifest.shards.values())))
        return write(self, manifest, fence)

    monkeypatch.setattr(OutputDir, "write_manifest", recording_write)
    monkeypatch.setenv("SGCORE_MANIFEST_INTERVAL_S", "0")
    out = tmp_path / "out"
    result = run_job(JobConfig(input=str(image_dir), output=str(out), **SMALL))
    assert result.shards == 7 and result.success
    assert started and _alive(started) == []
    # The first write (nothing committed), checkpoints while shards committed, the last one.
    assert checkpoints[0] == ("running", 0) and checkpoints[-1] == ("complete", 7)
    during = [n for status, n in checkpoints[1:-1] if status == "running"]
    assert during and 0 < min(during) and max(during) <= 7
    assert json.loads((out / "_manifest.json").read_text())["status"] == "complete"
    assert ray.is_initialized()  # the module's Ray is not the run's to stop
