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
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
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
    log(f"reference: gaussian, n={reference_n}, {batch} images")
    ref = smoothgrad(model, images, targets, n_samples=reference_n,
                     seeds=torch.arange(batch) + _REFERENCE_SEED, **kw)
    if not isinstance(ref, SmoothGradResult):
        raise RuntimeError("smoothgrad(return_reliability=True) returned no reliability")
    ref_maps = reduce_channels(ref.maps, reduction)
    ref_rel = ref.reliability.double()
    rows, points = [], []
    for n in ns:
        est, meas, err, err_ref = [], [], [], []
        for rep in range(repeats):
            seeds = torch.arange(batch) + 10_000 * (rep + 1) + n
            got = smoothgrad(model, images, targets, n_samples=n, seeds=seeds, noise=noise, **kw)
            if not isinstance(got, SmoothGradResult):
                raise RuntimeError("smoothgrad(return_reliability=True) returned no reliability")
            measured = spearman(reduce_channels(got.maps, reduction), ref_maps)
            e = got.reliability.double()
            for i in range(batch):
                est.append(float(e[i]))
                meas.append(float(measured[i]))
                err.append(abs(float(e[i]) - float(measured[i])))
                err_ref.append(abs(float(e[i] * ref_rel[i]) - float(measured[i])))
                points.append({"n": n, "estimate": float(e[i]), "measured": float(measured[i])})
        rows.append({"n": n, "estimate": statistics.fmean(est), "measured": statistics.fmean(meas),
                     "abs_error": statistics.fmean(err), "abs_error_vs_ref": statistics.fmean(err_ref)})
        log(f"  {noise} n={n}: estimate {rows[-1]['estimate']:.4f} measured {rows[-1]['measured']:.4f} "
            f"|err| {rows[-1]['abs_error']:.4f} (x ref {rows[-1]['abs_error_vs_ref']:.4f})")
    return {"reference_n": reference_n, "noise": noise,
            "reference_reliability": float(ref_rel.mean()), "rows": rows, "points": points}
