"""The audit says what it does and tells the truth: settings used, random weights, error rows,
plan and progress, a first screen of findings, --quick, and a real resume after Ctrl-C."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sgcore.audit import AuditConfig, plots, run_audit

SMALL = {"sample": 4, "steps": 4, "examples": 1, "num_actors": 0}


@pytest.fixture(scope="module")
def random_audit(random_results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[str]]:
    """The random-weights results (maps made with n=4) audited with --n-samples 2."""
    report = tmp_path_factory.mktemp("random_audit")
    lines: list[str] = []
    summary = run_audit(AuditConfig(results=str(random_results), report=str(report), n_samples=2, **SMALL),
                        log=lines.append)
    return summary, report, lines


def test_header_and_summary_show_the_n_the_audit_used(random_audit: tuple[dict, Path, list[str]]) -> None:
    summary, report, _ = random_audit
    on_disk = json.loads((report / "summary.json").read_text())
    assert on_disk["settings"]["n_samples"] == 2 and on_disk["run_settings"]["n_samples"] == 4
    page = (report / "index.html").read_text()
    assert "maps of the run: mean of gradient, n=4" in page and "recomputed for the checks: mean of gradient, n=2" in page
    sanity = page[page.index('<section id="sanity">'):]
    assert "with the run&#x27;s settings" not in sanity
    assert "with n=2 samples (the run&#x27;s maps used n=4" in sanity


def test_random_weights_are_never_called_trained(random_audit: tuple[dict, Path, list[str]]) -> None:
    summary, report, _ = random_audit
    page = (report / "index.html").read_text()
    assert summary["random_weights"] is True
    assert "the trained model" not in page and "trained model&#x27;s" not in page
    assert '<p class="warn">The model has random weights (--weights none)' in page
    assert "RANDOM: never trained" in page


def test_error_rows_are_counted_and_named_on_the_first_screen(random_audit: tuple[dict, Path, list[str]]) -> None:
    summary, report, _ = random_audit
    assert summary["images"] == {"rows": 25, "ok": 24, "errors": 1, "classes": 4}
    page = (report / "index.html").read_text()
    first_screen = page[: page.index("<section ")]
    assert "25 rows: 24 ok, 1 error(s)" in first_screen
    assert re.search(r"<th>Error rows \(1\)</th><td>[^<]*gone\.png", first_screen)
    assert (report / "error_rows.csv").read_text().splitlines()[1].startswith("gone.png,")


def test_findings_link_to_their_sections(random_audit: tuple[dict, Path, list[str]]) -> None:
    summary, report, _ = random_audit
    page = (report / "index.html").read_text()
    ids = set(re.findall(r'<section id="([^"]+)">', page))
    sections = {f["section"] for f in summary["findings"]}
    assert {"classes", "reliability", "localization", "sanity", "faithfulness"} <= sections
    # Beyond those, only the strategy section's flagged clusters and ROAD's blurred-map control (blur
    # alone earning the score, stated against that control) have findings of their own.
    assert all(s.startswith("strategies") or s == "road-and-pic"
               for s in sections - {"classes", "reliability", "localization", "sanity", "faithfulness"})
    links = re.findall(r'<ul class="findings">(.*?)</ul>', page, re.S)[0]
    assert set(re.findall(r'href="#([^"]+)"', links)) <= ids
    assert page.index('id="findings"') < page.index("<section ")  # findings come before the sections


def test_plan_then_progress_with_eta(random_audit: tuple[dict, Path, list[str]]) -> None:
    lines = random_audit[2]
    plan = [i for i, line in enumerate(lines) if line.startswith("audit plan: ")]
    assert len(plan) == 1
    text = lines[plan[0]]
    # DemoNet: 6 convs + the head = 7 weight layers; 4 images, 2 samples, 5 curve points.
    assert "4 of 24 ok image(s) sampled (1 error row(s) left out)" in text
    assert "sanity: 4 images x 8 map sets (7 layers + the model as given) x n=2 samples" in text
    assert "faithfulness: 4 images x 4 curves x 5 points" in text
    assert "about 144 forward(+backward) passes" in text  # 4*8*2 + 4*4*5
    # The plan comes before any work, with an estimate in time from a probe of the model here.
    assert re.search(r"estimated \S+ of model work on one replica \(probe on cpu: one image's map [\d.]+s", text)
    first_pass = next(i for i, line in enumerate(lines) if line.startswith("audit: one pass over "))
    assert plan[0] < first_pass
    heavy = [line for line in lines[plan[0]:] if line.startswith("audit: sanity/faithfulness ")]
    assert heavy and re.search(r"4/4 images \| \S+ elapsed \| ETA 0s$", heavy[-1])
    # Progress counts images (and, within a chunk, map sets), with an ETA from the plan until one is done.
    assert re.search(r"0/4 images, map set \d/8 of the next 2 image\(s\) \| .* ETA ~\S+ \(plan\)$", heavy[0])
    assert any(re.search(r"pass over the parts 1/\d+ parts \| .* ETA", line) for line in lines)


def test_accuracy_and_confusion_beside_the_per_class_view(random_audit: tuple[dict, Path, list[str]]) -> None:
    summary, report, _ = random_audit
    acc = summary["accuracy"]
    assert acc["images"] == 24 and 0 <= acc["correct"] <= 24
    assert sum(sum(v for k, v in row.items() if k != "label") for row in acc["confusion"]) == 24
    diagonal = sum(row.get(row["label"], 0) for row in acc["confusion"])
    assert diagonal == acc["correct"]
    page = (report / "index.html").read_text()
    classes = page[page.index('<section id="classes">'):page.index('<section id="localization">')]
    assert "<th>accuracy</th>" in classes and "Confusion table" in classes


def test_quick_changes_only_what_was_not_given() -> None:
    quick = AuditConfig(results="r", report="o", quick=True, steps=16).effective()
    assert (quick.sample, quick.n_samples, quick.steps, quick.examples) == (4, 4, 16, 1)
    assert AuditConfig(results="r", report="o").effective().sample == 64
    # A value given on purpose stays, even when it equals the default.
    given = AuditConfig(results="r", report="o", quick=True, sample=64, steps=32, road_pic=True)
    assert (given.sample, given.steps, given.n_samples, given.road_pic) == (64, 32, 4, True)
    assert AuditConfig(results="r", report="o", quick=True).road_pic is False  # PIC's interpolation: minutes on a CPU
    assert AuditConfig(results="r", report="o").road_pic is True


def test_the_cli_takes_its_defaults_from_the_config() -> None:
    from jobs.audit import build_parser
    from sgcore.audit.config import DEFAULTS, QUICK
    from sgcore.cli import config_from_args

    parser = build_parser()
    assert config_from_args(AuditConfig, parser.parse_args(["--quick", "--sample", "64"])).sample == 64
    assert config_from_args(AuditConfig, parser.parse_args(["--quick"])).sample == QUICK["sample"]
    assert config_from_args(AuditConfig, parser.parse_args([])).sample == DEFAULTS["sample"]
    text = " ".join(parser.format_help().split())
    assert f"(default: {DEFAULTS['steps']}; --quick: {QUICK['steps']})" in text
    for action in parser._actions:  # the fields --quick changes are left to the config
        if action.dest in QUICK:
            assert action.default is None, action.dest


def test_faithfulness_axes_fit_the_probabilities() -> None:
    curves = {k: np.full((3, 9), 0.04) for k in ("deletion", "insertion", "deletion_random", "insertion_random")}
    fig = plots.perturbation_figure(curves)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low == 0 and 0.04 < high < 0.05
    assert plots.perturbation_figure({k: np.full((1, 3), 0.9) for k in curves}).axes[0].get_ylim()[1] > 0.9


class _Interrupt(KeyboardInterrupt):
    pass


def test_ctrl_c_keeps_finished_chunks_and_a_rerun_resumes(demo_results: Path, tmp_path: Path) -> None:
    config = AuditConfig(results=str(demo_results), report=str(tmp_path / "r"), n_samples=2, localization=False,
                         **SMALL)
    lines: list[str] = []

    def stop_after_first(i: int, value: object, pid: int) -> None:
        raise _Interrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(config, log=lines.append, on_chunk=stop_after_first)
    assert "1 of 2 chunk(s) of the heavy checks are kept" in lines[-1]
    assert len(list((tmp_path / "r" / "_partial").iterdir())) == 1
    lines.clear()
    resumed = run_audit(config, log=lines.append)
    assert any("resuming: 1 of 2 chunk(s) kept" in line for line in lines)
    assert resumed["heavy"]["resumed_chunks"] == 1 and not (tmp_path / "r" / "_partial").exists()
    fresh = run_audit(AuditConfig(**{**config.__dict__, "report": str(tmp_path / "fresh")}), log=lambda m: None)
    for a, b in zip(resumed["sanity"], fresh["sanity"], strict=True):
        assert a["spearman_abs"] == pytest.approx(b["spearman_abs"], abs=1e-9)
    assert resumed["faithfulness"]["deletion_auc"] == pytest.approx(fresh["faithfulness"]["deletion_auc"], abs=1e-9)


@pytest.mark.parametrize("actors", ["0", pytest.param("1", marks=pytest.mark.slow)])
def test_sigterm_keeps_finished_chunks_in_one_line(demo_results: Path, tmp_path: Path, actors: str) -> None:
    """A scheduler's SIGTERM mid-audit: finished chunks stay in _partial, one line says so, exit 128 + 15;
    on Ray too, without Ray's stack dump."""
    import os
    import signal
    import subprocess
    import sys
    import time

    report = tmp_path / "r"
    args = [sys.executable, "-m", "jobs.audit", "--results", str(demo_results), "--report", str(report),
            "--num-actors", actors, "--sample", "6", "--n-samples", "2", "--steps", "2", "--chunk-size", "1",
            "--no-strategies", "--no-localization"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # A finished chunk, not the hidden temp file of one being written (SIGTERM there keeps 0).
        if (report / "_partial").exists() and any((report / "_partial").glob("chunk-*.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    said = [line for line in (out + err).splitlines() if "stopped" in line]
    assert len(said) == 1 and re.search(r"audit: stopped by SIGTERM; \d of 6 chunk\(s\) of the heavy checks are "
                                        r"kept \(\d of 6 images\) in .*_partial: rerun the same command", said[0])
    assert "Traceback" not in err and "SIGTERM received" not in out + err, err
    if actors == "0":
        assert err.strip() == "", err
    assert not (report / "index.html").exists() and len(list((report / "_partial").glob("chunk-*.json"))) >= 1
