"""Calibration of the reliability estimate against long reference maps.

For each image: a reference map of ``reference_n`` samples drawn with seeds
that no test map uses; test maps at each ``n`` with ``repeats`` independent
seed sets, each returning its split-half reliability estimate. The measured
figure is the Spearman correlation of the test map with the reference.

The reference is itself a Monte Carlo estimate, so the measured correlation is
attenuated by the reference's own reliability ``ρ_ref`` (under the additive
noise model, ``corr(map, ref) = ρ_map · ρ_ref``). Both are reported: the
estimate as is (``abs_error``) and the estimate times the reference's own
estimated reliability (``abs_error_vs_ref``), which is the figure that
predicts the measured correlation.

With ``repeats ≥ 2`` the repeats at one ``n`` are twins (same image and
settings, independent noise): their measured Spearman with each other is
set beside what their reproducibility estimates predict
(:func:`~sgcore.attribution.reliability.expected_agreement`; for twins the
reproducibility itself), the figure ``jobs.audit --compare`` takes its noise
floor from. It costs no extra map.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.attribution.reliability import expected_agreement
from sgcore.attribution.smoothgrad import SmoothGradResult, smoothgrad

# Seeds of the reference maps: far from any test seed.
_REFERENCE_SEED = 7_000_000


def calibrate(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ns: Sequence[int] = (16, 32, 64, 128),
    reference_n: int = 4096,
    repeats: int = 2,
    noise: str = "gaussian",
    noise_level: float = 0.15,
    reduction: str = "abs_sum",
    max_batch: int | None = None,
    reference: SmoothGradResult | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Estimated against measured reliability per ``n`` (module docstring).

    Returns:
        ``{"reference_n", "reference_reliability", "rows": [{"n", "estimate",
        "measured", "abs_error", "abs_error_vs_ref"}, ...], "points": [...]}``;
        ``estimate`` and ``measured`` are means over images × repeats, the
        errors means of per-map absolute differences.
    """
    batch = images.shape[0]
    kw: dict[str, Any] = dict(noise_level=noise_level, max_batch=max_batch,
                              return_reliability=True, reliability_reduction=reduction)
    ref = reference
    if ref is None:
        log(f"reference: gaussian, n={reference_n}, {batch} images")
        ref = reference_maps(model, images, targets, reference_n=reference_n, noise_level=noise_level,
                             reduction=reduction, max_batch=max_batch)
    ref_maps = reduce_channels(ref.maps, reduction)
    ref_rel = ref.reliability.double()
    rows, points = [], []
    for n in ns:
        est, meas, err, err_ref = [], [], [], []
        twins: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for rep in range(repeats):
            seeds = torch.arange(batch) + 10_000 * (rep + 1) + n
            got = smoothgrad(model, images, targets, n_samples=n, seeds=seeds, noise=noise, **kw)
            if not isinstance(got, SmoothGradResult):
                raise RuntimeError("smoothgrad(return_reliability=True) returned no reliability")
            measured = spearman(reduce_channels(got.maps, reduction), ref_maps)
            e = got.reliability.double()
            twins.append((reduce_channels(got.maps, reduction), e, got.reproducibility.double()))
            for i in range(batch):
                est.append(float(e[i]))
                meas.append(float(measured[i]))
                err.append(abs(float(e[i]) - float(measured[i])))
                err_ref.append(abs(float(e[i] * ref_rel[i]) - float(measured[i])))
                points.append({"n": n, "estimate": float(e[i]), "measured": float(measured[i])})
        row = {"n": n, "estimate": statistics.fmean(est), "measured": statistics.fmean(meas),
               "abs_error": statistics.fmean(err), "abs_error_vs_ref": statistics.fmean(err_ref)}
        if len(twins) >= 2:
            (map_a, rel_a, rep_a), (map_b, rel_b, rep_b) = twins[:2]
            agree = spearman(map_a, map_b).double().cpu().numpy()
            floor = expected_agreement(rel_a.cpu().numpy(), rep_a.cpu().numpy(), rel_b.cpu().numpy(),
                                       rep_b.cpu().numpy())
            row.update(twin_estimate=float(floor.mean()), twin_measured=float(agree.mean()),
                       twin_abs_error=float(abs(floor - agree).mean()),
                       twin_product=float((rel_a * rel_b).mean()))
        rows.append(row)
        log(f"  {noise} n={n}: estimate {row['estimate']:.4f} measured {row['measured']:.4f} "
            f"|err| {row['abs_error']:.4f} (x ref {row['abs_error_vs_ref']:.4f})"
            + (f"; twins {row['twin_measured']:.4f}, estimated {row['twin_estimate']:.4f} "
               f"|err| {row['twin_abs_error']:.4f}" if "twin_measured" in row else ""))
    return {"reference_n": reference_n, "noise": noise, "reference": ref,
            "reference_reliability": float(ref_rel.mean()), "rows": rows, "points": points}


def reference_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, reference_n: int,
                   noise_level: float = 0.15, reduction: str = "abs_sum",
                   max_batch: int | None = None) -> SmoothGradResult:
    """Gaussian maps of ``reference_n`` samples with seeds no test map uses (share them across noise kinds)."""
    ref = smoothgrad(model, images, targets, n_samples=reference_n, noise_level=noise_level,
                     seeds=torch.arange(images.shape[0]) + _REFERENCE_SEED, max_batch=max_batch,
                     return_reliability=True, reliability_reduction=reduction)
    if not isinstance(ref, SmoothGradResult):
        raise RuntimeError("smoothgrad(return_reliability=True) returned no reliability")
    return ref


def to_markdown(results: list[dict[str, Any]]) -> str:
    """One table row per (model, noise, n) of ``calibrate`` results tagged with ``model``."""
    lines = [
        "| model | noise | n | images × repeats | estimate (mean) | measured vs reference (mean) "
        "| mean abs(estimate − measured) | mean abs(estimate·ρ_ref − measured) "
        "| twins: measured (mean) | twins: estimated (mean) | twins: mean abs error | twins: ρ_a·ρ_b (mean) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for row in res["rows"]:
            count = sum(1 for p in res["points"] if p["n"] == row["n"])
            twin = " | ".join(f"{row[k]:.4f}" if k in row else "—"
                              for k in ("twin_measured", "twin_estimate", "twin_abs_error", "twin_product"))
            lines.append(
                f"| {res.get('model', '')} | {res['noise']} | {row['n']} | {count} | {row['estimate']:.4f} "
                f"| {row['measured']:.4f} | {row['abs_error']:.4f} | {row['abs_error_vs_ref']:.4f} | {twin} |"
            )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Estimate against measured correlation, one point per map, one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the calibration plot needs matplotlib: pip install 'sgcore[plots]'") from e
    models = sorted({r.get("model", "") for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for res in (r for r in results if r.get("model", "") == model):
            xs = [p["measured"] for p in res["points"]]
            ys = [p["estimate"] for p in res["points"]]
            ax.scatter(xs, ys, s=10, alpha=0.6, label=res["noise"])
        ax.plot([0.5, 1.0], [0.5, 1.0], "k--", lw=1)
        ax.set_xlabel(f"measured Spearman vs n={results[0]['reference_n']} reference")
        ax.set_ylabel("estimated reliability")
        ax.set_title(f"{model}: n = 16, 32, 64, 128")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_cost(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *,
                     n_samples: int = 50, repeats: int = 5) -> dict[str, float]:
    """Kernel seconds with and without the estimate, interleaved, medians of ``repeats``."""
    seeds = torch.arange(images.shape[0])
    smoothgrad(model, images, targets, n_samples=4, seeds=seeds, return_reliability=True)  # warm-up
    plain, rated = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        smoothgrad(model, images, targets, n_samples=n_samples, seeds=seeds)
        t1 = time.perf_counter()
        smoothgrad(model, images, targets, n_samples=n_samples, seeds=seeds, return_reliability=True)
        rated.append(time.perf_counter() - t1)
        plain.append(t1 - t0)
    p, r = statistics.median(plain), statistics.median(rated)
    return {"n_samples": n_samples, "images": images.shape[0], "seconds_plain": p,
            "seconds_with_reliability": r, "share": (r - p) / r}
