"""Adaptive against fixed-n sampling at the same worst-decile reliability (issue 13's goal).

For one model, its images and one noise kind:

1. Fixed ``n`` (50, the paper's) for every image; each map's Spearman
   correlation with a reference map of the same image (``reference_n``
   Gaussian samples, seeds no test map uses: the calibration mode's
   :func:`sgcore.attribution.calibration.reference_maps`, shared by every
   noise kind) is *measured*; the bar is the worst decile (10th percentile)
   of those correlations.
2. The target reliability ``R`` of ``smoothgrad_adaptive`` is searched for
   the smallest ``R`` whose maps' measured worst decile is at least the bar.
   The search starts from the worst decile of the fixed-n maps' own
   reliability *estimates*: with a calibrated estimate, stopping every image
   once its estimate reaches that figure should put the adaptive maps'
   worst decile where the fixed maps' is. It is only a start, because the
   stopping rule selects maps whose noisy estimate has just crossed ``R``
   (they tend to sit below it), and the measured figure decides: a run that
   falls short raises ``R`` by its shortfall plus a tenth of ``1 − R``, a
   run that passes lowers it likewise, and once a failing and a passing
   ``R`` bracket the answer it is bisected, ``max_tries`` adaptive runs in
   all. A grid of fixed ``R`` values would cost as many runs and land less
   close to the smallest passing ``R``; every run tried is in the JSON.
   ``R`` is chosen on the same maps it is judged on: the ratio is the
   best this policy does on them, not a held-out figure.
3. Model evaluations (forward + input-gradient backward per noisy sample)
   are counted by a forward hook on the model, rows per call, and checked
   against the ``n_samples`` the kernels return; images/s of the fixed and
   the chosen adaptive run are timed interleaved in this process (order
   alternating, medians of ``repeats``), both with the reliability estimate
   on, as the job computes it for every row.

Both measured figures are against the same finite reference, so both are
attenuated by its own reliability alike (``corr(map, ref) ≈ ρ_map · ρ_ref``,
see :mod:`sgcore.attribution.calibration`); the comparison stays fair.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from sgcore.attribution.adaptive import smoothgrad_adaptive
from sgcore.attribution.calibration import reference_maps
from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.attribution.smoothgrad import SmoothGradResult, smoothgrad
from sgcore.settings import NOISES

NOISE_KINDS: tuple[str, ...] = NOISES
# Seeds of the test maps (the references use 7_000_000 + i).
_TEST_SEED = 20_000
_R_MIN, _R_MAX = 0.05, 0.9995


def worst_decile(values: torch.Tensor | Sequence[float]) -> float:
    """The 10th percentile, linearly interpolated (numpy's default), NaNs ignored.

    Raises:
        ValueError: no finite value.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        raise ValueError("worst_decile needs at least one value that is not NaN; got none")
    return float(torch.quantile(v, 0.1))


@contextlib.contextmanager
def count_evaluations(model: nn.Module) -> Iterator[list[int]]:
    """Counts the rows (noisy samples) that go through ``model``'s forward; yields ``[count]``."""
    counter = [0]

    def hook(_module: nn.Module, args: tuple, _output: object) -> None:
        counter[0] += int(args[0].shape[0])

    handle = model.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def compare(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    noise: str,
    reference: SmoothGradResult,
    fixed_n: int = 50,
    min_samples: int = 16,
    max_samples: int = 512,
    round_samples: int = 16,
    max_tries: int = 6,
    repeats: int = 3,
    noise_level: float = 0.15,
    reduction: str = "abs_sum",
    max_batch: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Fixed ``fixed_n`` against adaptive sampling for one noise kind (module docstring).

    Args:
        images: ``(B, C, H, W)`` model inputs; targets ``(B,)``.
        reference: ``reference_maps`` of the same images, targets and settings.

    Returns:
        A JSON-ready dict: ``fixed`` and ``adaptive`` (the chosen run:
        ``target``, ``evaluations``, ``n_samples`` per image, ``worst_decile``,
        ``mean``), ``reached`` (whether an ``R`` met the bar), ``tries``,
        ``evaluation_ratio`` (fixed / adaptive), ``images_per_s`` of both and
        ``speed_ratio`` (adaptive / fixed).
    """
    batch = images.shape[0]
    seeds = torch.arange(batch) + _TEST_SEED
    ref_maps = reduce_channels(reference.maps, reduction)
    common: dict[str, Any] = dict(noise_level=noise_level, noise=noise, max_batch=max_batch,
                                  reliability_reduction=reduction, seeds=seeds)

    def fixed_run() -> SmoothGradResult:
        got = smoothgrad(model, images, targets, n_samples=fixed_n, return_reliability=True, **common)
        if not isinstance(got, SmoothGradResult):
            raise RuntimeError("smoothgrad(return_reliability=True) returned no reliability")
        return got

    def adaptive_run(target: float) -> SmoothGradResult:
        return smoothgrad_adaptive(model, images, targets, target_reliability=target, min_samples=min_samples,
                                   max_samples=max_samples, round_samples=round_samples, **common)

    def measure(got: SmoothGradResult, evaluations: int) -> dict[str, Any]:
        measured = spearman(reduce_channels(got.maps, reduction), ref_maps)
        n = [int(k) for k in got.n_samples]
        if evaluations != sum(n):
            raise RuntimeError(f"the model ran {evaluations} samples where the kernel reports {sum(n)}")
        return {"evaluations": evaluations, "n_samples": n, "worst_decile": worst_decile(measured),
                "mean": float(measured.mean()), "measured": [float(m) for m in measured],
                "estimate": [float(e) for e in got.reliability]}

    with count_evaluations(model) as count:
        fixed = measure(fixed_run(), count[0])
    bar = fixed["worst_decile"]
    start = worst_decile(fixed["estimate"])
    log(f"  {noise}: fixed n={fixed_n}: {fixed['evaluations']} evaluations, worst decile {bar:.4f} "
        f"(estimates' worst decile {start:.4f})")

    tries: list[dict[str, Any]] = []
    fail: dict[str, Any] | None = None  # the highest R that fell short
    passed: dict[str, Any] | None = None  # the lowest R that met the bar
    target = min(max(start, _R_MIN), _R_MAX)
    for _ in range(max_tries):
        with count_evaluations(model) as count:
            run = {"target": target, **measure(adaptive_run(target), count[0])}
        run["passes"] = run["worst_decile"] >= bar
        tries.append(run)
        log(f"    R={target:.4f}: {run['evaluations']} evaluations, worst decile {run['worst_decile']:.4f} "
            f"({'meets' if run['passes'] else 'below'} the bar)")
        if run["passes"]:
            passed = run if passed is None or target < passed["target"] else passed
        else:
            fail = run if fail is None or target > fail["target"] else fail
        if passed is not None and fail is not None:
            if passed["target"] - fail["target"] <= 0.002:
                break
            target = (passed["target"] + fail["target"]) / 2
        elif passed is not None:
            target -= max(run["worst_decile"] - bar, 0.1 * (1 - target))
        else:
            if min(run["n_samples"]) >= max_samples:
                break  # every map already ran to max_samples: a higher R cannot help
            target += max(bar - run["worst_decile"], 0.0) + 0.1 * (1 - target)
        target = min(max(target, _R_MIN), _R_MAX)
        if any(abs(t["target"] - target) < 1e-9 for t in tries):
            break
    chosen = passed if passed is not None else max(tries, key=lambda t: t["worst_decile"])

    # Side by side: the same process, interleaved, alternating which goes first.
    adaptive_run(chosen["target"])  # warm both paths once more before timing
    seconds: dict[str, list[float]] = {"fixed": [], "adaptive": []}
    for rep in range(repeats):
        order = ("fixed", "adaptive") if rep % 2 == 0 else ("adaptive", "fixed")
        for name in order:
            t0 = time.perf_counter()
            fixed_run() if name == "fixed" else adaptive_run(chosen["target"])
            seconds[name].append(time.perf_counter() - t0)
    per_s = {k: batch / statistics.median(v) for k, v in seconds.items()}
    return {
        "noise": noise, "images": batch, "fixed_n": fixed_n, "min_samples": min_samples,
        "max_samples": max_samples, "round_samples": round_samples, "bar": bar, "start_target": start,
        "fixed": fixed, "adaptive": chosen, "reached": passed is not None, "tries": tries,
        "evaluation_ratio": fixed["evaluations"] / chosen["evaluations"],
        "seconds": seconds, "images_per_s": per_s, "speed_ratio": per_s["adaptive"] / per_s["fixed"],
    }


def run_adaptive_bench(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    reference_n: int = 4096,
    noises: Sequence[str] = NOISE_KINDS,
    noise_level: float = 0.15,
    reduction: str = "abs_sum",
    max_batch: int | None = None,
    reference: SmoothGradResult | None = None,
    log: Callable[[str], None] = lambda _: None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``compare`` for every noise kind against one shared reference; ``kwargs`` go to ``compare``.

    ``reference``: ``reference_maps`` made earlier (of ``reference_n`` samples), else made here.

    Returns:
        ``{"reference_n", "reference_reliability", "results": [compare(...), ...]}``.
    """
    ref = reference
    if ref is None:
        log(f"reference: gaussian, n={reference_n}, {images.shape[0]} images")
        ref = reference_maps(model, images, targets, reference_n=reference_n, noise_level=noise_level,
                             reduction=reduction, max_batch=max_batch)
    results = [compare(model, images, targets, noise=noise, reference=ref, noise_level=noise_level,
                       reduction=reduction, max_batch=max_batch, log=log, **kwargs) for noise in noises]
    return {"reference_n": reference_n, "reference_reliability": float(ref.reliability.double().mean()),
            "results": results}


def to_markdown(report: dict[str, Any], model: str = "") -> str:
    """One table row per noise kind of a ``run_adaptive_bench`` report."""
    ref = report["reference_n"]
    lines = [
        f"| model | noise | images | fixed n: evaluations | fixed: worst-decile ρ vs n={ref} "
        "| adaptive R | adaptive n min / median / max | adaptive: evaluations | adaptive: worst-decile ρ "
        "| evaluations fixed / adaptive | images/s fixed | images/s adaptive | speed adaptive / fixed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        f, a = r["fixed"], r["adaptive"]
        n = a["n_samples"]
        reached = "" if r["reached"] else " (bar not reached)"
        lines.append(
            f"| {model} | {r['noise']} | {r['images']} | {r['fixed_n']}: {f['evaluations']} | {f['worst_decile']:.4f} "
            f"| {a['target']:.4f}{reached} | {min(n)} / {statistics.median(n):g} / {max(n)} | {a['evaluations']} "
            f"| {a['worst_decile']:.4f} | {r['evaluation_ratio']:.2f}× | {r['images_per_s']['fixed']:.2f} "
            f"| {r['images_per_s']['adaptive']:.2f} | {r['speed_ratio']:.2f}× |"
        )
    return "\n".join(lines)
