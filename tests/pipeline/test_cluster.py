"""Actor planning (pure arithmetic) and the Jobs SDK helpers of sgcore.pipeline.cluster."""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.pipeline import run_job
from sgcore.pipeline.cluster import (
    DEFAULT_EXCLUDES,
    ActorPlan,
    capacity_bundles,
    follow,
    plan_actors,
    plan_for_config,
    release_capacity,
    request_capacity,
    runtime_env_for,
    submit,
)


def plan(resources, **kw):
    args = {
        "gpus_per_actor": 1.0,
        "cpus_per_actor": 1.0,
        "num_actors": None,
        "min_actors": None,
        "max_actors": None,
        "num_shards": 100,
    }
    args.update(kw)
    return plan_actors(resources, **args)


# ---- GPUs ---------------------------------------------------------------


def test_one_replica_per_gpu_by_default():
    p = plan({"CPU": 16.0, "GPU": 4.0, "memory": 1e11})
    assert p.use_gpu and p.num_gpus == 1.0 and p.num_cpus == 1.0
    assert (p.initial_actors, p.min_actors, p.max_actors) == (4, 1, 4)
    # 16 CPUs - 4 held by actors = 12 one-CPU decode tasks.
    assert (p.decode_num_cpus, p.max_decode_tasks) == (1.0, 12)
    assert p.scheduling_strategy == "SPREAD"


def test_half_gpu_packs_two_replicas_per_gpu():
    p = plan({"CPU": 16.0, "GPU": 4.0}, gpus_per_actor=0.5)
    assert p.num_gpus == 0.5
    assert p.initial_actors == p.max_actors == 8
    assert p.max_decode_tasks == 8


def test_cpus_per_actor_limits_gpu_actors():
    # 4 GPUs but only 6 CPUs at 2 per actor: 3 actors fit.
    p = plan({"CPU": 6.0, "GPU": 4.0}, cpus_per_actor=2.0)
    assert p.initial_actors == 3
    assert p.num_cpus == 2.0


def test_per_node_fit_is_checked_when_nodes_are_given():
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0}]
    total = {"CPU": 16.0, "GPU": 2.0}
    assert plan(total, nodes=nodes).initial_actors == 2
    # 0.6 GPU per actor: one per node, so 2, although the 2-GPU total holds floor(2/0.6)=3.
    assert plan(total, nodes=nodes, gpus_per_actor=0.6).initial_actors == 2
    assert plan(total, gpus_per_actor=0.6).initial_actors == 3
    # 0.4 GPU per actor: two per one-GPU node.
    assert plan(total, nodes=nodes, gpus_per_actor=0.4).initial_actors == 4


def test_gpus_per_actor_larger_than_any_node_is_refused():
    nodes = [{"CPU": 4.0, "GPU": 1.0}] * 3
    with pytest.raises(ConfigError, match=r"gpus_per_actor=2 does not fit: any node has at most 1 GPU"):
        plan({"CPU": 12.0, "GPU": 3.0}, nodes=nodes, gpus_per_actor=2.0)
    with pytest.raises(ConfigError, match=r"gpus_per_actor=2 does not fit: the cluster has at most 1 GPU"):
        plan({"CPU": 4.0, "GPU": 1.0}, gpus_per_actor=2.0)


def test_multi_gpu_actor_on_multi_gpu_node():
    nodes = [{"CPU": 96.0, "GPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}]
    p = plan({"CPU": 192.0, "GPU": 16.0}, nodes=nodes, gpus_per_actor=2.0)
    assert p.num_gpus == 2.0 and p.initial_actors == 8


def test_fractional_gpus_above_one_are_refused():
    with pytest.raises(ConfigError, match=r"gpus_per_actor above 1 must be a whole number; got 1.5"):
        plan({"CPU": 16.0, "GPU": 4.0}, gpus_per_actor=1.5)


# ---- CPU fallback -------------------------------------------------------


def test_cpu_fallback_keeps_one_cpu_for_decoding():
    p = plan({"CPU": 8.0, "memory": 1e10})
    assert not p.use_gpu and p.num_gpus == 0.0 and p.num_cpus == 1.0
    assert p.initial_actors == p.max_actors == 7
    assert (p.decode_num_cpus, p.max_decode_tasks) == (1.0, 1)


def test_cpu_fallback_on_two_cpus():
    p = plan({"CPU": 2.0})
    assert (p.initial_actors, p.max_decode_tasks, p.decode_num_cpus) == (1, 1, 1.0)


def test_cpu_fallback_on_one_cpu_shares_it():
    p = plan({"CPU": 1.0})
    assert p.initial_actors == 1
    # The actor holds the only CPU; decode tasks ask for none so they still run.
    assert (p.decode_num_cpus, p.max_decode_tasks) == (0.0, 1)


def test_zero_gpus_per_actor_forces_cpu_actors_on_a_gpu_cluster():
    p = plan({"CPU": 4.0, "GPU": 2.0}, gpus_per_actor=0.0)
    assert not p.use_gpu and p.num_gpus == 0.0 and p.initial_actors == 3


def test_zero_cpus_per_actor_in_cpu_fallback_still_reserves_one():
    p = plan({"CPU": 4.0}, cpus_per_actor=0.0)
    assert p.num_cpus == 1.0 and p.initial_actors == 3


def test_no_actor_fits_names_the_numbers():
    with pytest.raises(ConfigError, match=r"no actor fits the cluster: each needs 4 CPU, "
                       r"the cluster has 0 GPU and 2 CPU \(1 CPU kept for decoding\)"):
        plan({"CPU": 2.0}, cpus_per_actor=4.0)
    with pytest.raises(ConfigError, match=r"each needs 1 GPU \+ 8 CPU, the cluster has 2 GPU and 4 CPU"):
        plan({"CPU": 4.0, "GPU": 2.0}, cpus_per_actor=8.0)


def test_partial_spare_cpu_becomes_a_fractional_decode_task():
    p = plan({"CPU": 3.5, "GPU": 3.0})
    assert p.initial_actors == 3
    assert (p.decode_num_cpus, p.max_decode_tasks) == (0.5, 1)


# ---- counts -------------------------------------------------------------


def test_never_more_actors_than_shards():
    p = plan({"CPU": 64.0, "GPU": 8.0}, num_shards=3)
    assert p.initial_actors == p.max_actors == 3
    p = plan({"CPU": 64.0, "GPU": 8.0}, num_shards=2, min_actors=4, max_actors=8)
    assert (p.initial_actors, p.min_actors, p.max_actors) == (2, 2, 2)
    p = plan({"CPU": 4.0, "GPU": 1.0}, num_shards=1, num_actors=5)
    assert p.initial_actors == p.max_actors == 1
    assert plan({"CPU": 64.0}, num_shards=2).max_decode_tasks == 2


def test_autoscaling_starts_with_what_fits_and_may_grow():
    p = plan({"CPU": 16.0, "GPU": 2.0}, min_actors=1, max_actors=10)
    assert (p.initial_actors, p.min_actors, p.max_actors) == (2, 1, 10)


def test_max_actors_below_capacity_caps_the_start():
    p = plan({"CPU": 64.0, "GPU": 8.0}, max_actors=3)
    assert (p.initial_actors, p.min_actors, p.max_actors) == (3, 1, 3)
    assert p.max_decode_tasks == 61


def test_fixed_num_actors():
    p = plan({"CPU": 64.0, "GPU": 8.0}, num_actors=5)
    assert (p.initial_actors, p.min_actors, p.max_actors) == (5, 5, 5)


def test_min_actors_more_than_the_cluster_holds():
    with pytest.raises(ConfigError, match=r"min_actors=5 is more than the cluster holds now: "
                       r"2 actor\(s\) of 1 GPU \+ 1 CPU"):
        plan({"CPU": 16.0, "GPU": 2.0}, min_actors=5)


def test_num_actors_more_than_the_cluster_holds():
    with pytest.raises(ConfigError, match=r"num_actors=3 does not fit: the cluster holds 1 actor\(s\) "
                       r"of 1 CPU now"):
        plan({"CPU": 2.0}, num_actors=3)
    # Capped at the shard count first, and still too many.
    with pytest.raises(ConfigError, match=r"num_actors=5 does not fit: the cluster holds 1 actor"):
        plan({"CPU": 2.0}, num_actors=5, num_shards=3)
    with pytest.raises(ConfigError, match=r"min_actors=5 is more than the cluster holds now: 1"):
        plan({"CPU": 2.0}, min_actors=5, num_shards=3)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_actors": 2, "min_actors": 1}, r"num_actors fixes the pool size; give it or "
         r"min_actors/max_actors, not both; got num_actors=2, min_actors=1, max_actors=None"),
        ({"min_actors": 4, "max_actors": 2}, r"min_actors must be <= max_actors; got 4 > 2"),
        ({"num_actors": 0}, r"num_actors must be a positive integer; got 0"),
        ({"max_actors": 1.5}, r"max_actors must be a positive integer; got 1.5"),
        ({"gpus_per_actor": -1.0}, r"gpus_per_actor and cpus_per_actor must be >= 0; got -1.0 and 1.0"),
    ],
)
def test_bad_requests(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan({"CPU": 8.0, "GPU": 2.0}, **kw)


@pytest.mark.parametrize("shards", [0, -1, True, 2.0])
def test_num_shards_must_be_positive(shards):
    with pytest.raises(ValueError, match=r"num_shards must be a positive integer; got"):
        plan({"CPU": 8.0}, num_shards=shards)


def test_plan_for_config_reads_the_execution_fields():
    cfg = JobConfig(input="memory://in", output="memory://out", gpus_per_actor=0.5, max_actors=3)
    p = plan_for_config(cfg, {"CPU": 8.0, "GPU": 4.0}, num_shards=10)
    assert (p.num_gpus, p.initial_actors, p.max_actors) == (0.5, 3, 3)


def test_plan_is_frozen_and_gives_actor_options():
    p = plan({"CPU": 8.0, "GPU": 2.0})
    assert isinstance(p, ActorPlan)
    with pytest.raises(AttributeError):
        p.num_gpus = 2.0  # type: ignore[misc]
    assert p.actor_options() == {"num_gpus": 1.0, "num_cpus": 1.0, "scheduling_strategy": "SPREAD"}
    assert p.describe() == (
        "2 actor(s) now, 1..2 autoscaled, each 1 GPU + 1 CPU, SPREAD; "
        "up to 6 decode task(s) x 1 CPU"
    )


def test_capacity_bundles_one_shape_per_actor():
    p = plan({"CPU": 16.0, "GPU": 2.0}, gpus_per_actor=0.5, max_actors=6)
    assert capacity_bundles(p) == [{"CPU": 1.0, "GPU": 0.5}] * 6
    assert capacity_bundles(plan({"CPU": 4.0})) == [{"CPU": 1.0}] * 3


def test_request_capacity_only_when_the_pool_may_grow():
    # No growth possible: returns before touching Ray at all.
    assert request_capacity(plan({"CPU": 8.0, "GPU": 2.0})) is False


# ---- Jobs SDK helpers (a fake client; the real one is in test_submit.py) ----


def test_runtime_env_ships_the_repo_without_venv_data_outputs(tmp_path):
    env = runtime_env_for(tmp_path, env_vars={"A": 1}, pip=["rich"])
    assert env["working_dir"] == str(tmp_path)
    for pattern in ("/.venv/", "/data/", "/outputs/", "/.git/"):
        assert pattern in env["excludes"]
    assert env["env_vars"] == {"A": "1"} and env["pip"] == ["rich"]
    assert runtime_env_for(None) == {}
    assert tuple(runtime_env_for(tmp_path)["excludes"]) == DEFAULT_EXCLUDES


def test_runtime_env_refuses_a_missing_dir(tmp_path):
    with pytest.raises(ValueError, match=r"working_dir must be a directory; got '.*nope'"):
        runtime_env_for(tmp_path / "nope")


class FakeClient:
    def __init__(self, statuses, logs=()):
        self.statuses = list(statuses)
        self.logs = list(logs)
        self.submitted = {}

    def submit_job(self, **kw):
        self.submitted = kw
        return "raysubmit_1"

    def get_job_status(self, job_id):
        value = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(value=value)

    async def tail_job_logs(self, job_id):
        for chunk in self.logs:
            yield chunk


def test_submit_passes_only_what_is_set():
    client = FakeClient(["PENDING"])
    job = submit(client, "python -m jobs.smoothgrad", runtime_env={"working_dir": "."},
                 entrypoint_num_cpus=0.5)
    assert job == "raysubmit_1"
    assert client.submitted == {
        "entrypoint": "python -m jobs.smoothgrad",
        "runtime_env": {"working_dir": "."},
        "entrypoint_num_cpus": 0.5,
    }


def test_follow_streams_logs_and_returns_the_final_status():
    out = io.StringIO()
    client = FakeClient(["RUNNING", "SUCCEEDED"], logs=["hello\n", "done\n"])
    assert follow(client, "j", stream=out, poll_s=0.0) == "SUCCEEDED"
    assert out.getvalue() == "hello\ndone\n"
    assert follow(FakeClient(["PENDING", "RUNNING", "FAILED"]), "j", logs=False, poll_s=0.0) == "FAILED"


def test_follow_times_out():
    with pytest.raises(TimeoutError, match=r"job j still RUNNING after 0.05 s"):
        follow(FakeClient(["RUNNING"]), "j", logs=False, timeout_s=0.05, poll_s=0.01)


# ---- three nodes with logical GPUs (ray.cluster_utils.Cluster) ---------------


@pytest.fixture(scope="module")
def three_gpu_nodes():
    """A CPU head plus three 1-CPU/1-GPU nodes. The GPUs are logical: actors get
    a GPU from Ray, see no CUDA, and run on the CPU, which is what we want here."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _process_tasks(address: str, job_started_ms: int, expected: int) -> list:
    """Finished SaliencyActor.process tasks of the last run, from Ray's state API.

    Task events reach the GCS asynchronously, so poll until all are in.
    """
    from ray.util.state import list_tasks

    found: list = []
    for _ in range(60):
        try:
            # An explicit address: never some other cluster running on this machine.
            tasks = list_tasks(address=address,
                               filters=[("func_or_class_name", "=", "SaliencyActor.process")],
                               detail=True, limit=1000, raise_on_missing_output=False)
        except Exception:  # the state API answers once the dashboard is up
            tasks = []
        found = [t for t in tasks
                 if t.state == "FINISHED" and (t.start_time_ms or 0) >= job_started_ms]
        if len(found) >= expected:
            return found
        time.sleep(0.5)
    return found


def _rows(out: Path) -> pd.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


@pytest.mark.slow
def test_three_gpu_nodes_spread_the_work_and_match_a_one_actor_run(three_gpu_nodes, image_dir,
                                                                   tmp_path):
    import ray

    # A checkpoint, so every replica holds the same weights by construction.
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18-10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), ckpt)
    small = dict(model="resnet18", weights=str(ckpt), image_size=32, n_samples=4, shard_size=1,
                 batch_size=4, progress=False)
    assert ray.cluster_resources()["GPU"] == 3.0

    # A standing autoscaler request is harmless on a fixed cluster.
    grow = plan_actors(ray.cluster_resources(), gpus_per_actor=1.0, cpus_per_actor=1.0,
                       num_actors=None, min_actors=1, max_actors=6, num_shards=7)
    assert (grow.initial_actors, grow.max_actors) == (3, 6)
    assert request_capacity(grow) is True
    release_capacity()

    started = int(time.time() * 1000)
    wide = run_job(JobConfig(input=str(image_dir), output=str(tmp_path / "wide"), **small))
    tasks = _process_tasks(three_gpu_nodes.address, started, expected=7)
    assert wide.actors == 3 and wide.rows == 7 and wide.shards == 7
    by_actor = Counter(t.actor_id for t in tasks)
    assert len(by_actor) == 3 and sum(by_actor.values()) == 7, by_actor
    # One GPU per node: three actors means three nodes, each holding a replica.
    assert len({t.node_id for t in tasks}) == 3

    narrow = run_job(JobConfig(input=str(image_dir), output=str(tmp_path / "narrow"),
                               num_actors=1, **small))
    assert narrow.actors == 1 and narrow.rows == 7

    a = _rows(tmp_path / "wide").sort_values("image_id").reset_index(drop=True)
    b = _rows(tmp_path / "narrow").sort_values("image_id").reset_index(drop=True)
    assert list(a.columns) == list(b.columns) and len(a) == 7
    assert set(a.status) == {"ok", "error"}  # the corrupt image is a row too
    pd.testing.assert_frame_equal(a.drop(columns="saliency"), b.drop(columns="saliency"))
    for x, y in zip(a.saliency, b.saliency, strict=True):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert np.array_equal(np.asarray(x), np.asarray(y))  # bit for bit


def test_follow_survives_a_dropped_log_stream(capsys):
    class Dropping(FakeClient):
        async def tail_job_logs(self, job_id):
            yield "first\n"
            raise ConnectionResetError("peer went away")

    out = io.StringIO()
    assert follow(Dropping(["RUNNING", "SUCCEEDED"]), "j", stream=out, poll_s=0.0) == "SUCCEEDED"
    assert out.getvalue() == "first\n"
    assert "log stream of j ended early (peer went away)" in capsys.readouterr().err
