"""The adaptive-sampling benchmark (sgcore.bench.adaptive, ``--mode adaptive``) at tiny sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.bench.adaptive import compare, run_adaptive_bench, to_markdown, worst_decile
from sgcore.bench.kernel import synthetic_images


class Counting(nn.Module):
    """Counts the rows through its forward, independently of the benchmark's own hook."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def test_worst_decile_is_the_interpolated_10th_percentile():
    assert worst_decile(torch.arange(11.0)) == pytest.approx(1.0)
    assert worst_decile([4.0, 1.0, 3.0, 2.0]) == pytest.approx(1.3)  # position 0.3 between 1 and 2
    values = np.random.default_rng(0).uniform(size=37)
    assert worst_decile(values.tolist()) == pytest.approx(float(np.percentile(values, 10)))
    assert worst_decile([float("nan"), 2.0, 1.0]) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="worst_decile needs at least one value that is not NaN; got none"):
        worst_decile([float("nan")])


def test_report_counts_every_model_evaluation_and_keeps_the_policy(cnn):
    model = Counting(cnn)
    images = synthetic_images(6, 8)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    model.rows = 0
    policy = dict(fixed_n=24, min_samples=16, max_samples=48, round_samples=8, max_tries=3, repeats=2)
    report = run_adaptive_bench(model, images, targets, reference_n=64, noises=("gaussian", "antithetic"), **policy)
    assert report["reference_n"] == 64 and [r["noise"] for r in report["results"]] == ["gaussian", "antithetic"]

    expected_rows = 64 * 6  # the shared reference
    for r in report["results"]:
        fixed, chosen, tries = r["fixed"], r["adaptive"], r["tries"]
        assert fixed["n_samples"] == [24] * 6 and fixed["evaluations"] == 24 * 6
        assert 1 <= len(tries) <= 3
        for t in tries:
            assert t["evaluations"] == sum(t["n_samples"])
            assert all(16 <= n <= 48 and n % 8 == 0 for n in t["n_samples"])
            assert t["passes"] == (t["worst_decile"] >= r["bar"])
            assert t["worst_decile"] == pytest.approx(float(np.percentile(t["measured"], 10)))
        assert r["bar"] == pytest.approx(float(np.percentile(fixed["measured"], 10)))
        assert r["start_target"] == pytest.approx(float(np.percentile(fixed["estimate"], 10)))
        assert tries[0]["target"] == pytest.approx(min(max(r["start_target"], 0.05), 0.9995))
        # The chosen run is the lowest R that met the bar, or the best try when none did.
        passing = [t for t in tries if t["passes"]]
        assert r["reached"] == bool(passing)
        if passing:
            assert chosen["target"] == min(t["target"] for t in passing)
        assert r["evaluation_ratio"] == pytest.approx(fixed["evaluations"] / chosen["evaluations"])
        assert len(r["seconds"]["fixed"]) == len(r["seconds"]["adaptive"]) == 2
        assert r["speed_ratio"] == pytest.approx(r["images_per_s"]["adaptive"] / r["images_per_s"]["fixed"])
        # Nothing runs the model uncounted: fixed + tries + one warm-up and two timed adaptive runs + two fixed.
        expected_rows += fixed["evaluations"] * 3 + sum(t["evaluations"] for t in tries) + 3 * chosen["evaluations"]
    assert model.rows == expected_rows

    table = to_markdown(report, "tiny").splitlines()
    assert len(table) == 2 + 2 and all(line.count("|") == 14 for line in table)
    assert "worst-decile ρ vs n=64" in table[0]
    for line, r in zip(table[2:], report["results"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == ["tiny", r["noise"], "6"]
        assert cells[3] == f"24: {r['fixed']['evaluations']}" and cells[7] == str(r["adaptive"]["evaluations"])
        assert cells[9] == f"{r['evaluation_ratio']:.2f}×"


def test_maps_capped_at_max_samples_stop_the_search_and_say_so(cnn):
    # 16 samples cannot match n=256 (worst decile ≈0.95 against ≈0.99 here): every
    # try runs each map to max_samples, where a higher R cannot change the maps.
    images = synthetic_images(6, 8)
    with torch.no_grad():
        targets = cnn(images).argmax(dim=1)
    from sgcore.attribution.calibration import reference_maps

    ref = reference_maps(cnn, images, targets, reference_n=1024)
    got = compare(cnn, images, targets, noise="gaussian", reference=ref, fixed_n=256, min_samples=16,
                  max_samples=16, round_samples=8, max_tries=4, repeats=1)
    assert not got["reached"] and len(got["tries"]) == 1
    assert got["adaptive"]["n_samples"] == [16] * 6 and got["evaluation_ratio"] == pytest.approx(16.0)
    assert got["adaptive"]["worst_decile"] < got["bar"]
    assert "(bar not reached)" in to_markdown({"reference_n": 1024, "results": [got]})


def test_the_job_writes_the_table_and_json(tmp_path, capsys):
    from jobs import benchmark

    argv = ["--mode", "adaptive", "--model", "digits", "--batch", "4", "--reference-n", "64", "--repeats", "1",
            "--fixed-n", "16", "--min-samples", "16", "--max-samples", "32", "--out", str(tmp_path)]
    assert benchmark.main(argv) == 0
    md = (tmp_path / "adaptive-digits-4img-ref64-cpu.md").read_text().splitlines()
    js = json.loads((tmp_path / "adaptive-digits-4img-ref64-cpu.json").read_text())
    assert [r["noise"] for r in js["results"]] == ["gaussian", "antithetic", "sobol"]
    assert js["model"] == "digits" and js["weights"] == "digits-shipped"
    assert len(md) == 5 and [line.split("|")[2].strip() for line in md[2:]] == ["gaussian", "antithetic", "sobol"]
    assert md[0] in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "line"), [
    (["--min-samples", "64", "--max-samples", "32"], "error: --min-samples must be <= max_samples; got 64 > 32"),
    (["--min-samples", "20"], "error: --min-samples must be a multiple of 8 (whole noise blocks); got 20"),
    (["--fixed-n", "1"], "error: --fixed-n must be >= 2; got 1"),
    (["--model", "resnet18"], "error: --mode adaptive needs a trained model: --model demo, digits or lite0; got 'resnet18'"),
])
def test_bad_adaptive_arguments_exit_2_with_one_line(capsys, tmp_path, argv, line):
    from jobs import benchmark

    assert benchmark.main(["--mode", "adaptive", "--model", "digits", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == line + "\n", err
    assert not any(tmp_path.iterdir())
