"""The audit end to end on demo results, and what the literature expects of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.audit import AuditConfig, open_results_dir, read_index, read_maps, run_audit
from sgcore.audit._workers import Chunk, WorkerSpec, run_chunks
from sgcore.audit.sanity import MapSettings
from sgcore.errors import ConfigError, InputError
from sgcore.models import DemoNet
from tests.audit.job_output import write_results
from tests.pictures import assert_picture


@pytest.fixture(scope="module")
def audit(demo_results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    report = tmp_path_factory.mktemp("audit")
    config = AuditConfig(results=str(demo_results), report=str(report), sample=8, n_samples=8,
                         steps=12, examples=2, num_actors=0)
    return run_audit(config, log=lambda m: None), report


def test_audit_writes_report_and_summary(audit: tuple[dict, Path]) -> None:
    summary, report = audit
    on_disk = json.loads((report / "summary.json").read_text())
    # The error row is counted and named, not silently left out.
    assert on_disk["images"] == {"rows": 25, "ok": 24, "errors": 1, "classes": 4}
    assert [e["examples"] for e in on_disk["error_rows"]] == [["gone.png"]]
    assert [c["name"] for c in on_disk["classes"]] == ["circle", "cross", "square", "triangle"]
    page = (report / "index.html").read_text()
    for title in ("Per-class view", "Localization", "Sanity check", "Faithfulness"):
        assert title in page
    for png in ("class_mean_maps", "examples_circle", "localization", "sanity", "faithfulness"):
        assert_picture((report / "img" / f"{png}.png").read_bytes())
    assert summary["sanity_images"] == 8
    lines = (report / "per_image.csv").read_text().splitlines()
    assert len(lines) == 25
    assert lines[0] == ("image_id,label,entropy,gini,border_share,reliability,n_samples,mass_in_mask,mask_area,pointing_hit,"
                        "strategy_class,strategy,strategy_flagged")
    assert 'href="per_image.csv"' in page


def test_sanity_summary_shape_and_expectation(audit: tuple[dict, Path]) -> None:
    steps = audit[0]["sanity"]
    # DemoNet is sequential: its linear head, then its conv layers from the last to the first.
    convs = [n for n, m in DemoNet().named_modules() if isinstance(m, nn.Conv2d)]
    assert [s["layer"] for s in steps] == ["classifier", *convs[::-1]]
    for s in steps:
        assert set(s) >= {"layer", "spearman_abs", "spearman_signed", "ssim"}
        assert -1 <= s["spearman_abs"] <= 1 and -1 <= s["ssim"] <= 1
    # Adebayo et al.: maps of the fully randomized model correlate far less with the trained ones.
    assert steps[-1]["spearman_abs"] < 0.5
    assert abs(steps[-1]["spearman_signed"]) < 0.2


def test_localization_expectation(audit: tuple[dict, Path]) -> None:
    loc = audit[0]["localization"]
    assert loc["images"] == 24 and loc["missing_masks"] == 0
    assert 0.1 < loc["mask_area"] < 0.35  # the demo draws objects over 12-30 % of the image
    # A trained model's maps put mass on the object well above its area share.
    assert loc["mass_in_mask"] > 1.5 * loc["mask_area"]
    assert loc["pointing_game"] > 0.6


def test_faithfulness_expectation(audit: tuple[dict, Path]) -> None:
    f = audit[0]["faithfulness"]
    assert set(f) >= {"deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random"}
    assert f["deletion_auc"] < f["deletion_auc_random"]
    assert f["insertion_auc"] > f["insertion_auc_random"]


def test_compare_ranks_changes(demo_results: Path, random_results: Path, tmp_path: Path) -> None:
    config = AuditConfig(results=str(demo_results), report=str(tmp_path), compare=str(random_results),
                         sanity=False, faithfulness=False, localization=False, examples=0, num_actors=0)
    cmp = run_audit(config, log=lambda m: None)["compare"]
    assert cmp["images"] == 24 and len(cmp["classes"]) == 4
    rho = [r["spearman"] for r in cmp["most_changed"]]
    assert rho == sorted(rho)  # most changed (lowest correlation) first
    # Against itself nothing changes.
    self_cmp = run_audit(
        AuditConfig(results=str(demo_results), report=str(tmp_path / "self"), compare=str(demo_results),
                    sanity=False, faithfulness=False, localization=False, examples=0, num_actors=0),
        log=lambda m: None,
    )["compare"]
    assert self_cmp["spearman"] == pytest.approx(1.0)
    assert cmp["spearman"] < self_cmp["spearman"] - 0.2


@pytest.mark.slow
def test_ray_actor_pool_matches_in_process(demo_results: Path, ray_local: None) -> None:
    results = open_results_dir(str(demo_results))
    index = read_index(results)
    rows = [0, 9]
    maps = read_maps(results, index, rows)
    spec = WorkerSpec(model="demo", weights="default", image_size=None, preprocess=results.preprocess.to_dict(),
                      settings=MapSettings(n_samples=2), steps=4)
    src, tgt, seeds = (index.column(c).to_pylist() for c in ("source", "target", "seed"))
    chunks = [Chunk(sources=[src[r]], targets=[tgt[r]], seeds=[seeds[r]], maps=maps[i : i + 1])
              for i, r in enumerate(rows)]
    on_ray, _ = run_chunks(spec, chunks, num_actors=1)
    local, _ = run_chunks(spec, chunks, num_actors=0)
    for a, b in zip(on_ray, local, strict=True):
        np.testing.assert_allclose(a["sanity"]["spearman_abs"], b["sanity"]["spearman_abs"], atol=1e-6)
        np.testing.assert_allclose(a["faithfulness"]["deletion"], b["faithfulness"]["deletion"], atol=1e-6)


def test_incomplete_results_are_refused(demo_results: Path, tmp_path: Path) -> None:
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(demo_results, partial)
    (partial / "_SUCCESS").unlink()
    with pytest.raises(InputError, match=r"results at .*partial are incomplete \(no _SUCCESS\)"):
        open_results_dir(str(partial))
    assert open_results_dir(str(partial), allow_partial=True).complete is False
    with pytest.raises(InputError, match=r"no _manifest.json under .*; is it the --output of jobs.smoothgrad\?"):
        open_results_dir(str(tmp_path / "nothing"))


def test_audit_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sample must be a positive integer; got 0"):
        AuditConfig(results="r", report="o", sample=0)
    with pytest.raises(ConfigError, match="results must be a non-empty URL or path; got ''"):
        AuditConfig(results="", report="o")
    with pytest.raises(ConfigError, match=r"border_width must be in \(0, 0.5\); got 0.7"):
        AuditConfig(results="r", report="o", border_width=0.7)
    with pytest.raises(ConfigError, match="num_actors must be a non-negative integer; got -1"):
        AuditConfig(results="r", report="o", num_actors=-1)
    with pytest.raises(ConfigError, match="examples must be a non-negative integer; got -2"):
        AuditConfig(results="r", report="o", examples=-2)


def test_audit_report_renders_in_chromium(audit: tuple[dict, Path], chromium, tmp_path: Path) -> None:  # noqa: ANN001
    """The page as a user sees it: it renders, every figure loads, nothing is blank."""
    import shutil

    report = audit[1]
    # Negative control: the same page with one figure missing must be caught.
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    (broken / "img" / "sanity.png").unlink()
    (sizes, broken_sizes), pixels = chromium([report / "index.html", broken / "index.html"])
    expected = {f"img/{p.name}" for p in (report / "img").iterdir()}
    assert set(sizes) == expected and len(expected) >= 8
    assert all(w > 50 and h > 50 for w, h in sizes.values()), sizes
    assert broken_sizes["img/sanity.png"] == (0, 0)
    assert broken_sizes["img/faithfulness.png"] == sizes["img/faithfulness.png"]
    # Not blank: a good share of non-white pixels and many colours (figures drawn).
    assert (pixels < 240).any(axis=2).mean() > 0.05
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


def test_localization_negative_control(audit: tuple[dict, Path], random_results: Path, tmp_path: Path) -> None:
    """An untrained model's maps do not favour the objects: the metric can tell the two apart."""
    config = AuditConfig(results=str(random_results), report=str(tmp_path), sanity=False, faithfulness=False,
                         examples=0, num_actors=0)
    untrained = run_audit(config, log=lambda m: None)["localization"]
    trained = audit[0]["localization"]
    assert untrained["mass_ratio"] < 1.5 < trained["mass_ratio"]
    assert untrained["pointing_game"] < trained["pointing_game"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("address", "env", "expected"),
    [
        (None, None, "local"),  # a fresh Ray, never the `ray start` cluster that address=None would join
        (None, "ray://head:10001", "ray://head:10001"),
        ("auto", "ray://head:10001", "auto"),
    ],
)
def test_ray_address_as_the_job_driver_picks_it(
    address: str | None, env: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    calls: list[dict] = []

    def init(**kwargs: object) -> None:
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    spec = WorkerSpec(model="demo", weights="default", image_size=None, preprocess={}, settings=MapSettings())
    chunk = Chunk(sources=["x.png"], targets=[0], seeds=[0], maps=np.zeros((1, 4, 4), np.float32))
    with pytest.raises(_Stop):
        run_chunks(spec, [chunk], num_actors=1, address=address)
    assert [c["address"] for c in calls] == [expected]


@pytest.mark.slow
def test_audit_reads_a_real_job_run(demo_root: Path, demo_results: Path, ray_local: None, tmp_path: Path) -> None:
    """The job itself on Ray, then the audit: the fixtures' results stand for this output."""
    from sgcore.config import JobConfig
    from sgcore.pipeline import run_job

    out = tmp_path / "job"
    job = JobConfig(input=str(demo_root / "images"), output=str(out), limit=6, shard_size=3, n_samples=2,
                    num_actors=1, gpus_per_actor=0, progress=False)
    assert run_job(job).success
    summary = run_audit(AuditConfig(results=str(out), report=str(tmp_path / "report"), sample=2, n_samples=2,
                                    steps=4, examples=1, num_actors=0), log=lambda m: None)
    assert summary["images"]["ok"] == 6 and summary["localization"]["images"] == 6
    # The fixtures' manifest says what the job's says where the audit reads it.
    real = json.loads((out / "_manifest.json").read_text())
    # The job's hash (its config's, with the weights' sha256 when it read a weights file).
    assert summary["faithfulness"]["images"] == 2 and summary["config_hash"] == real["config_hash"]
    ours = json.loads((demo_results / "_manifest.json").read_text())
    assert set(ours["config"]) == set(real["config"]) and set(ours["preprocess"]) == set(real["preprocess"])
    assert {e["status"] for e in real["shards"].values()} == {e["status"] for e in ours["shards"].values()}


def test_audit_of_a_torchvision_run(demo_root: Path, tmp_path: Path) -> None:
    """A torchvision architecture's run (resnet18, random init: no download here) audits like the demo's:
    the sanity cascade walks its 21 weight layers from fc down, faithfulness and localization run."""
    torch.manual_seed(0)
    results = write_results(tmp_path / "results", demo_root / "images", model="resnet18", weights="none",
                            image_size=32, n_samples=2, limit=6)
    summary = run_audit(AuditConfig(results=str(results), report=str(tmp_path / "report"), sample=2, n_samples=2,
                                    steps=4, examples=0, strategies=False, num_actors=0), log=lambda m: None)
    assert summary["model"] == "resnet18" and summary["random_weights"] is True
    layers = [s["layer"] for s in summary["sanity"]]
    assert len(layers) == 21 and layers[0] == "fc" and layers[-1] == "conv1"
    assert summary["faithfulness"]["images"] == 2
    assert summary["localization"]["images"] == 6 and summary["localization"]["missing_masks"] == 0
    assert summary["reliability"]["images"] == 6
    assert (tmp_path / "report" / "index.html").is_file()
