"""The kernel benchmark (sgcore.bench.kernel) on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sgcore.bench.kernel import (
    BenchConfig,
    cost_model,
    run,
    spearman,
    synthetic_images,
    write_report,
)
from sgcore.settings import SmoothGradSettings


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 7, generator=gen)
    b = a + 0.7 * torch.randn(3, 5, 7, generator=gen)
    got = spearman(a, b)
    for i in range(3):
        want = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(got[i]) == pytest.approx(want, abs=1e-9)
    assert torch.allclose(spearman(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(3, dtype=torch.float64))


def test_synthetic_images_share_one_range():
    x = synthetic_images(4, 9)
    span = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    torch.testing.assert_close(span, span[:1].expand(4))


def test_speed_and_fidelity_run_end_to_end(cnn, tmp_path):
    pytest.importorskip("captum")
    images = synthetic_images(2, 8)
    targets = torch.tensor([0, 1])
    config = BenchConfig(mode="both", settings=SmoothGradSettings(n_samples=4), precisions=("fp32", "bf16"), repeats=1, warmup=0, reference_n=64, grid=(2, 8, 32),
                         fidelity_repeats=1, threshold=0.5)
    report = run(cnn, images, targets, config, setup={"model": "tiny"}, log=lambda s: None)
    names = [r.variant for r in report.speed]
    assert names[0] == "sgcore fp32, model as given"
    assert {"sgcore fp32, prepared", "sgcore bf16, prepared", "sgcore fp32, prepared but NCHW", "captum NoiseTunnel(Saliency) fp32",
            "per-sample loop fp32"} <= set(names)
    by = {r.variant: r for r in report.speed}
    assert all(math.isfinite(r.images_per_s) and r.images_per_s > 0 for r in report.speed)
    # The table's share of the ceiling is the two measured rates' ratio.
    for r in report.speed:
        if r.ceiling_images_per_s:
            assert f"| {100 * r.images_per_s / r.ceiling_images_per_s:.0f}% |" in report.to_markdown()
    # Same noise, same model up to exact BN folding: the same maps.
    assert by["sgcore fp32, prepared"].spearman > 0.999
    assert by["per-sample loop fp32"].spearman > 0.999
    assert by["sgcore fp32, model as given"].ceiling_images_per_s > 0
    reference = by["sgcore fp32, model as given"]
    assert reference.spearman is None and "the Spearman reference" in reference.note
    table = report.to_markdown()
    assert "| note |" in table and "the Spearman reference |" in table
    assert [f["noise"] for f in report.fidelity] == ["gaussian", "antithetic", "sobol"]
    gauss = report.fidelity[0]["spearman_by_n"]
    assert gauss[32] > gauss[2]
    assert [p["variant"] for p in report.precision] == ["fp32, prepared", "bf16, prepared"]
    assert report.precision[0]["median"] > 0.999
    assert report.setup["gflop_per_image"] > 0 and report.setup["activation_mib_per_image"] > 0
    md, js = write_report(report, tmp_path, "bench")
    assert "| variant | images/s" in md.read_text() and "| noise | samples to Spearman" in md.read_text()
    assert json.loads(js.read_text())["speed"][0]["variant"] == "sgcore fp32, model as given"


def test_cost_model_counts_conv_flops(cnn):
    # Forward conv FLOPs of the tiny CNN at 8x8: 2·(3·6·9 + 6·6·9)·64 per sample;
    # the input-gradient backward adds at least as many again for the second conv.
    cost = cost_model(cnn, torch.zeros(3, 8, 8), 10)
    forward = 2 * (3 * 6 * 9 + 6 * 6 * 9) * 64
    assert 10 * forward * 1.5 / 1e9 <= cost["gflop_per_image"] <= 10 * forward * 2.5 / 1e9
    # Activations: six 6x8x8 leaf outputs (conv, BN, ReLU twice) and 5 logits, float32,
    # counted 4 times per sample, times n = 10.
    assert cost["activation_mib_per_image"] == pytest.approx(4 * (6 * 6 * 64 + 5) * 4 * 10 / 2**20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mode="fast"), r"mode must be one of speed, fidelity, both; got 'fast'"),
        (dict(precisions=("fp64",)), r"precisions must be drawn from fp32, tf32, bf16, fp16; got 'fp64'"),
        (dict(repeats=0), r"repeats must be a positive integer; got 0"),
        (dict(settings={"n_samples": 4}), r"settings must be SmoothGradSettings; got dict"),
        (dict(grid=()), r"grid must be positive ints; got \(\)"),
        (dict(threshold=1.0), r"threshold must be in \(0, 1\); got 1.0"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kwargs)


def test_captum_gets_the_kernels_rows_per_pass(cnn):
    """Captum's NoiseTunnel is given at most ``max_rows`` noisy rows per forward pass, as sgcore's kernel
    (without it, 7 photos x 50 samples of EfficientNet-Lite0 ran a 24 GiB box out of memory)."""
    pytest.importorskip("captum")
    from sgcore.bench.kernel import captum_smoothgrad

    images = synthetic_images(3, 16)
    targets = torch.zeros(3, dtype=torch.long)
    rows: list[int] = []
    hook = cnn.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        torch.manual_seed(0)
        chunked = captum_smoothgrad(cnn, images, targets, n=8, sigma=0.1, max_rows=6)
    finally:
        hook.remove()
    assert max(rows) <= 6 and sum(rows) == 3 * 8
    assert chunked.shape == images.shape
