"""One model replica (:class:`sgcore.pipeline.replica.Replica`) behind every place that computes maps:
the job's actor, the Ray Data stage, the audit's workers and the sweep (no Ray here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from sgcore.config import JobConfig
from sgcore.pipeline.replica import Replica

ROOT = Path(__file__).resolve().parents[2] / "sgcore"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Replica]:
    """Every Replica constructed while the test runs."""
    made: list[Replica] = []
    init = Replica.__init__

    def counting(self: Replica, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Replica, "__init__", counting)
    return made


@pytest.fixture
def threads():
    """torch's intra-op threads, restored after the test (a replica sets them for its process)."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_the_jobs_actor_holds_a_replica(built, monkeypatch, threads):
    from sgcore.pipeline import actors

    monkeypatch.setattr(actors, "actor_threads", lambda use_gpu, cpu_threads=None: 1)  # no Ray here
    monkeypatch.setattr(actors, "set_default_policy", lambda policy: policy)  # this process's stays
    actor = actors.SaliencyActor(JobConfig(input="-", output="-", model="demo"), use_gpu=False)
    assert [r.threads for r in built] == [1] and torch.get_num_threads() == 1
    assert actor.processor.replica is built[0]
    assert actor.processor.explained is built[0].explained and actor.processor.model is built[0].model


def test_the_ray_data_stage_holds_a_replica(built):
    from sgcore.ray_data import SmoothGradMaps

    stage = SmoothGradMaps(model="demo", n_samples=2)
    assert len(built) == 1 and stage.processor.replica is built[0]
    assert stage.preprocess is built[0].preprocess


def test_the_audits_worker_holds_a_replica(built):
    from sgcore.audit._workers import AuditWorker, WorkerSpec
    from sgcore.audit.sanity import MapSettings
    from sgcore.models import resolve_preprocess

    pre = resolve_preprocess("demo").to_dict()
    worker = AuditWorker(WorkerSpec(model="demo", weights="default", image_size=None, preprocess=pre,
                                    settings=MapSettings(n_samples=2), score="softmax"))
    assert len(built) == 1 and worker.replica is built[0]
    assert worker.prepared is built[0].explained and worker.model is built[0].plain
    assert built[0].score == "softmax"


def test_the_sweep_holds_a_replica(built, tmp_path, monkeypatch):
    import sgcore.audit.sweep_runner as sweep_runner
    from sgcore.audit.sweep_runner import SweepConfig, run_sweep
    from sgcore.demo import generate_dataset

    generate_dataset(tmp_path / "demo", n_per_class=1, seed=0)
    used: list[torch.nn.Module] = []
    real = sweep_runner.sweep_grid
    monkeypatch.setattr(sweep_runner, "sweep_grid", lambda model, *a, **k: used.append(model) or real(model, *a, **k))
    run_sweep(SweepConfig(report=str(tmp_path / "sweep"), input=str(tmp_path / "demo" / "images"), model="demo",
                          images=1, noise_levels=(0.1,), sample_counts=(1,), convergence_counts=(1,),
                          reference_samples=1), log=lambda _line: None)
    assert len(built) == 1 and used == [built[0].explained]


def test_a_replica_prepares_once_and_explains_the_score(threads):
    replica = Replica("demo", score="log_softmax", threads=1)
    assert replica.threads == 1 == torch.get_num_threads()
    x = replica.inputs(torch.zeros((2, *replica.preprocess.map_shape, replica.preprocess.channels), dtype=torch.uint8))
    with torch.no_grad():
        plain, prepared = replica.plain(x), replica.explained(x)
    torch.testing.assert_close(prepared, plain, rtol=0, atol=1e-4)
    assert torch.allclose(prepared.exp().sum(dim=1), torch.ones(2))  # log-softmax, not the logits
    result = replica.explain(x, torch.tensor([0, 1]), n_samples=2, seeds=torch.tensor([1, 2]))
    assert result.shape == x.shape  # without return_reliability: the maps


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


def test_only_the_replica_prepares_a_network_for_maps():
    """A fifth way of holding a model would build and prepare it itself: none does outside the replica
    (the kernel benchmarks, which time prepare_model itself, aside)."""
    holders = {"prepare_network", "with_score", "map_network"}
    found = {str(p.relative_to(ROOT)): sorted(_calls(p) & holders) for p in ROOT.rglob("*.py")
             if "bench" not in p.parts and "models" not in p.parts}
    assert {p: c for p, c in found.items() if c} == {"pipeline/replica.py": sorted(holders)}


def _plan(cpus: float, gpus: float = 0.0, **kw):
    from sgcore.pipeline.cluster import plan_actors

    args = dict(gpus_per_actor=1.0 if gpus else 0.0, cpus_per_actor=1.0, num_actors=None, min_actors=None,
                max_actors=None, num_shards=64)
    return plan_actors({"CPU": cpus, "GPU": gpus}, **(args | kw))


def test_a_cpu_replica_leaves_a_core_to_the_decode_tasks():
    """On a 2-core node the job's replica ran 2 torch threads beside the decode tasks and the driver:
    OpenMP spin-waiting made it cost twice the CPU of 1 thread for the same maps (and more than the
    Ray Data stage). The replicas now share the CPUs less the decode core."""
    from sgcore.pipeline.cluster import replica_threads

    plan = _plan(2.0)
    assert (plan.initial_actors, plan.num_cpus, plan.decode_num_cpus) == (1, 1.0, 1.0)
    assert replica_threads(plan, 2.0) == 1  # was 2: every CPU of the node
    assert replica_threads(_plan(16.0, num_actors=1), 16.0) == 15  # one replica still takes the rest
    assert replica_threads(_plan(16.0), 16.0) == 1  # fifteen replicas, one core each
    assert replica_threads(_plan(8.0, num_actors=2), 8.0) == 3
    assert replica_threads(_plan(1.0), 1.0) == 1  # no spare core: the replica shares it
    assert replica_threads(_plan(8.0, cpus_per_actor=4.0, num_actors=1), 8.0) == 7
    assert replica_threads(_plan(8.0, gpus=1.0), 8.0) is None  # a GPU replica keeps torch's default
