"""Where the audit runs: the device it was asked for, and the same numbers on CUDA as on the CPU.

The CUDA tests are marked ``needs_cuda`` (skipped without a GPU by tests/conftest.py).
Noise is drawn on the images' device, so CUDA and CPU maps agree exactly only
without noise; noisy maps are compared by rank correlation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.audit import AuditConfig, run_audit
from sgcore.audit._workers import AuditWorker, Chunk, WorkerSpec
from sgcore.audit.faithfulness import deletion_insertion
from sgcore.audit.metrics import spearman
from sgcore.audit.sanity import MapSettings, cascading_randomization
from sgcore.audit.sweep import convergence, sweep_grid
from sgcore.results import open_results_dir, read_index, read_maps

EXACT = MapSettings(n_samples=1, noise_level=0.0)
CUDA = torch.device("cuda")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 16, 16, generator=g), torch.tensor([0, 2, 1]), torch.tensor([7, 8, 9])


def test_in_process_audit_stays_on_the_cpu_unless_a_gpu_is_asked_for(
    demo_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --num-actors 0 and no GPU asked for, a visible GPU is left alone (as a Ray actor without one would)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # would send the model to CUDA, and fail here
    config = AuditConfig(results=str(demo_results), report=str(tmp_path), sample=2, steps=2, examples=0,
                         sanity=False, localization=False, num_actors=0)
    assert run_audit(config, log=lambda m: None)["device"] == ["cpu"]


@pytest.mark.needs_cuda
def test_sanity_cascade_on_cuda_matches_cpu() -> None:
    model, (x, t, seeds) = _model(), _inputs()
    cpu = cascading_randomization(model, x, t, settings=EXACT, seeds=seeds, seed=3)
    gpu = cascading_randomization(model.to(CUDA), x.to(CUDA), t.to(CUDA), settings=EXACT, seeds=seeds, seed=3)
    assert gpu.layers == cpu.layers
    for key in ("spearman_abs", "spearman_signed", "ssim"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), atol=1e-3)
    # With noise: runs on CUDA (noise drawn there) and is still a cascade of valid correlations.
    noisy = cascading_randomization(model, x.to(CUDA), t.to(CUDA), settings=MapSettings(n_samples=4), seeds=seeds)
    assert noisy.spearman_abs.shape == cpu.spearman_abs.shape and np.isfinite(noisy.spearman_abs).all()


@pytest.mark.needs_cuda
def test_faithfulness_on_cuda_matches_cpu() -> None:
    model, (x, t, _) = _model(), _inputs()
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    cpu = deletion_insertion(model, x, t, maps, steps=8, seed=5)
    # Images, targets and maps on CUDA; the random order is drawn on the CPU and moved.
    gpu = deletion_insertion(model.to(CUDA), x.to(CUDA), t.to(CUDA), maps.to(CUDA), steps=8, seed=5)
    for key in ("deletion", "insertion", "deletion_random", "insertion_random"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), atol=1e-5)


@pytest.mark.needs_cuda
def test_sweep_kernels_on_cuda_match_cpu() -> None:
    model, (x, t, seeds) = _model(), _inputs()
    settings = MapSettings(aggregate="square", reduction="max_abs")
    kw = {"noise_levels": (0.0, 0.2), "sample_counts": (1, 32), "seeds": seeds, "settings": settings}
    cpu = sweep_grid(model, x, t, **kw)
    gpu = sweep_grid(model.to(CUDA), x.to(CUDA), t.to(CUDA), **kw)
    np.testing.assert_allclose(gpu.maps[0], cpu.maps[0], rtol=1e-4, atol=1e-7)  # no noise: the same maps
    assert np.all(spearman(gpu.maps[1, 1], cpu.maps[1, 1]) > 0.6)  # other noise, same expectation
    exact = MapSettings(noise_level=0.0)
    conv = convergence(model, x.to(CUDA), t.to(CUDA), sample_counts=(1, 4), reference_samples=8, seeds=seeds,
                       settings=exact)
    np.testing.assert_allclose(conv.relative_l2, 0.0, atol=1e-5)
    noisy = convergence(model, x.to(CUDA), t.to(CUDA), sample_counts=(1, 16), reference_samples=64, seeds=seeds,
                        settings=settings)
    assert noisy.relative_l2.shape == (2, 3) and noisy.relative_l2[1].mean() < noisy.relative_l2[0].mean()


@pytest.mark.needs_cuda
def test_audit_worker_on_cuda_matches_cpu(demo_results: Path) -> None:
    results = open_results_dir(str(demo_results))
    index = read_index(results)
    rows = [0, 5, 11]
    src, tgt, seeds = (index.column(c).to_pylist() for c in ("source", "target", "seed"))
    chunk = Chunk(sources=[src[r] for r in rows], targets=[tgt[r] for r in rows], seeds=[seeds[r] for r in rows],
                  maps=read_maps(results, index, rows))
    spec = {"model": "demo", "weights": "default", "image_size": None, "preprocess": results.preprocess.to_dict(),
            "settings": EXACT, "steps": 4}
    cpu = AuditWorker(WorkerSpec(**spec)).evaluate(chunk)
    gpu = AuditWorker(WorkerSpec(**spec, use_gpu=True)).evaluate(chunk)
    assert (cpu["device"], gpu["device"]) == ("cpu", "cuda")
    np.testing.assert_allclose(gpu["sanity"]["spearman_abs"], cpu["sanity"]["spearman_abs"], atol=1e-3)
    np.testing.assert_allclose(gpu["faithfulness"]["deletion"], cpu["faithfulness"]["deletion"], atol=1e-4)


@pytest.mark.needs_cuda
def test_in_process_audit_runs_on_cuda_when_asked(demo_results: Path, tmp_path: Path) -> None:
    config = AuditConfig(results=str(demo_results), report=str(tmp_path), sample=2, n_samples=2, steps=4,
                         examples=0, num_actors=0, gpus_per_actor=1)
    summary = run_audit(config, log=lambda m: None)
    assert summary["device"] == ["cuda"] and summary["faithfulness"]["images"] == 2
