"""python -m jobs.audit and python -m jobs.sweep as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import audit as audit_job
from jobs import sweep as sweep_job


def test_audit_job_writes_the_report(demo_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = audit_job.main(["--results", str(demo_results), "--report", str(out), "--sample", "2",
                           "--n-samples", "2", "--steps", "4", "--examples", "1", "--num-actors", "0"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["sanity"]) == 7 and summary["faithfulness"]["images"] == 2
    assert summary["localization"]["images"] == 24
    assert (out / "index.html").stat().st_size > 1000


def test_audit_job_reports_missing_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = audit_job.main(["--results", str(tmp_path / "nope"), "--report", str(tmp_path / "r")])
    assert code == 2
    assert "no _manifest.json under" in capsys.readouterr().err


def test_sweep_job_from_results(demo_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code = sweep_job.main(["--results", str(demo_results), "--report", str(out), "--images", "2",
                           "--noise-levels", "0,0.15,0.5", "--sample-counts", "1,4",
                           "--convergence-counts", "1,4,16", "--reference-samples", "32"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid"]["noise_levels"] == [0.0, 0.15, 0.5]
    assert len(summary["grid"]["cells"]) == 6 and len(summary["images"]) == 2
    l2 = [p["relative_l2"] for p in summary["convergence"]["points"]]
    assert l2[0] > l2[-1]
    assert (out / "img" / "grid_00.png").exists() and (out / "img" / "convergence.png").exists()


def test_sweep_job_from_an_image_folder(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code = sweep_job.main(["--input", str(demo_root / "images"), "--model", "demo", "--report", str(out),
                           "--images", "1", "--noise-levels", "0.1", "--sample-counts", "2",
                           "--convergence-counts", "1,2", "--reference-samples", "8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["label"] in ("circle", "square", "triangle", "cross")
