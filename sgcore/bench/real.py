"""The real model in the benchmark: EfficientNet-Lite0 (ImageNet) on the bundled photographs.

``python -m jobs.benchmark --model lite0 ...`` takes the trained network of
:mod:`sgcore.models.zoo.efficientnet_lite0` (``sgcore[real]``) and the first
``--batch`` photographs of :data:`sgcore.demo.photos.PHOTOS`, decoded and
preprocessed as the job does (224 px, timm's data config).

:func:`pooled_calibration` is the calibration of :mod:`sgcore.attribution.calibration`
at a cost a CPU can pay on this model: per image it draws two pools of
``max(ns)`` Gaussian samples (independent seeds) and keeps each sample's input
gradient, so the map at every ``n`` is the mean of a pool's first ``n``
samples, with the split-half estimate of the kernel (alternating halves,
:func:`~sgcore.attribution.reliability.bootstrap_reliability`, seeded like the
kernel). A pool's first ``n`` samples are exactly what ``smoothgrad`` draws for
``n_samples=n`` and the pool's seed, so each map and its estimate are the
kernel's (``tests/bench/test_real.py`` checks it). The two pools are twins at
every ``n``. ``2·max(ns)`` samples per image instead of ``2·Σ ns``; the maps at
different ``n`` of one pool are nested (not independent), which leaves each
row's figures unbiased.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sgcore.attribution.postprocess import reduce_channels
from sgcore.attribution.ranks import spearman
from sgcore.attribution.reliability import bootstrap_reliability, expected_agreement, half_mask
from sgcore.attribution.smoothgrad import (
    SmoothGradResult,
    _input_gradient_fn,
    _input_gradients_only,
)
from sgcore.errors import ConfigError

REAL_MODELS = ("lite0",)
# Seeds of the two pools of image i: _POOL_SEED * (pool + 1) + i (the references use 7_000_000 + i).
_POOL_SEED = 10_000


def photo_inputs(count: int) -> tuple[nn.Module, torch.Tensor, list[str]]:
    """EfficientNet-Lite0 and the first ``count`` bundled photographs as model inputs ``(count, 3, 224, 224)``.

    Raises:
        ConfigError: more photographs asked for than are bundled.
        ImportError: ``sgcore[real]`` or scikit-image/scikit-learn missing (the message gives the fix).
    """
    from PIL import Image

    from sgcore.demo.photos import PHOTOS
    from sgcore.io import decode_image
    from sgcore.models import load_model
    from sgcore.models.zoo.efficientnet_lite0 import SPEC

    if count > len(PHOTOS):
        raise ConfigError(f"--batch {count}: --model lite0 has {len(PHOTOS)} bundled photographs; "
                          f"use --batch {len(PHOTOS)} or less")
    loaded = load_model(SPEC)
    pre = loaded.preprocess
    names = list(PHOTOS)[:count]
    rows = []
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(PHOTOS[name][0](), dtype=np.uint8)).convert("RGB").save(buf, format="PNG")
        crop, _ = decode_image(buf.getvalue(), **pre.decode_kwargs())
        rows.append(pre.normalize(torch.from_numpy(crop)[None]))
    return loaded.model, torch.cat(rows), names


def sample_gradients(model: nn.Module, image: torch.Tensor, target: int, *, n: int, seed: int,
                     noise_level: float = 0.15, chunk: int = 16) -> torch.Tensor:
    """The ``n`` per-sample input gradients ``(n, C, H, W)`` that ``smoothgrad(n_samples=n, seeds=[seed])``
    averages for one image ``(C, H, W)`` (Gaussian noise, the kernel's gradient pass, fp32)."""
    from sgcore.attribution._noise import standard_noise
    from sgcore.attribution.prepare import prefers_channels_last

    x = image.detach().to(torch.float32)
    sigma = noise_level * float(x.amax() - x.amin())
    eps = standard_noise(n, tuple(x.shape), seed, device=x.device, kind="gaussian")
    grad_fn = _input_gradient_fn(model, "fp32", x.device, prefers_channels_last(model), target)
    out = torch.empty_like(eps)
    targets = torch.full((chunk,), target, dtype=torch.long, device=x.device)
    with _input_gradients_only(model):
        for k0 in range(0, n, chunk):
            k1 = min(n, k0 + chunk)
            out[k0:k1] = grad_fn(x.unsqueeze(0) + sigma * eps[k0:k1], targets[: k1 - k0])
    return out


def map_of(grads: torch.Tensor, n: int, seed: int, reduction: str = "abs_sum") -> tuple[torch.Tensor, float, float]:
    """The kernel's fixed-n map of the first ``n`` samples, its reliability and reproducibility estimates."""
    g = grads[:n]
    in_a = half_mask(0, n, "gaussian", blocked=False, device=g.device)
    whole, half_a, half_b = g.mean(0), g[in_a].mean(0), g[~in_a].mean(0)
    m_a = torch.tensor([float(in_a.sum())], dtype=torch.float64)
    m_b = torch.tensor([float((~in_a).sum())], dtype=torch.float64)
    est = bootstrap_reliability(whole[None], half_a[None], half_b[None], m_a, m_b, reduction=reduction,
                                seeds=[seed])
    return whole, float(est.reliability[0]), float(est.reproducibility[0])


def pooled_calibration(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    reference: SmoothGradResult,
    ns: Sequence[int] = (16, 32, 64, 128, 256),
    noise_level: float = 0.15,
    reduction: str = "abs_sum",
    names: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Estimate against measured Spearman with ``reference`` and twin agreement, per ``n`` (module docstring).

    ``on_image`` is called with the result so far after each image (a long run leaves its table
    of the images done when it is stopped).

    Returns:
        The shape of :func:`sgcore.attribution.calibration.calibrate`'s result (``rows`` with
        ``estimate``, ``measured``, ``abs_error``, ``abs_error_vs_ref`` and the ``twin_*`` figures,
        ``points`` per map), plus per row ``flagged_seed_only`` (twin pairs that ``--compare``'s
        rule, measured < estimate − 0.06, would flag) and ``pairs``.
    """
    ns = sorted(set(ns))
    top = ns[-1]
    ref_maps = reduce_channels(reference.maps, reduction)
    ref_rel = reference.reliability.double()
    names = list(names) if names is not None else [str(i) for i in range(images.shape[0])]
    per_n: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    for i in range(images.shape[0]):
        pools = []
        for pool in range(2):
            seed = _POOL_SEED * (pool + 1) + i
            log(f"  {names[i]}: pool {pool + 1} of 2, {top} samples (seed {seed})")
            pools.append((seed, sample_gradients(model, images[i], int(targets[i]), n=top, seed=seed,
                                                 noise_level=noise_level)))
        for n in ns:
            got = [map_of(g, n, seed, reduction) for seed, g in pools]
            reduced = torch.stack([reduce_channels(m[None], reduction)[0] for m, _, _ in got])
            measured = spearman(reduced, ref_maps[i].expand_as(reduced)).double()
            twin = float(spearman(reduced[:1], reduced[1:])[0])
            floor = float(expected_agreement(got[0][1], got[0][2], got[1][1], got[1][2]))
            per_n[n].append({"image": names[i], "estimate": [g[1] for g in got], "reproducibility": [g[2] for g in got],
                             "measured": [float(m) for m in measured], "ref_rel": float(ref_rel[i]),
                             "twin_measured": twin, "twin_estimate": floor})
        del pools
        result = _summarize(per_n, ns, reference, log=log if i == images.shape[0] - 1 else lambda _: None)
        if on_image is not None:
            on_image(result)
    return result


def _summarize(per_n: dict[int, list[dict[str, Any]]], ns: Sequence[int], reference: SmoothGradResult, *,
               log: Callable[[str], None]) -> dict[str, Any]:
    from sgcore.audit.compare import DEFAULT_COMPARE_MARGIN

    ref_rel = reference.reliability.double()
    rows, points = [], []
    for n in ns:
        maps = per_n[n]
        est = [e for m in maps for e in m["estimate"]]
        meas = [v for m in maps for v in m["measured"]]
        err = [abs(e - v) for m in maps for e, v in zip(m["estimate"], m["measured"], strict=True)]
        err_ref = [abs(e * m["ref_rel"] - v) for m in maps for e, v in zip(m["estimate"], m["measured"], strict=True)]
        twin_meas = [m["twin_measured"] for m in maps]
        twin_est = [m["twin_estimate"] for m in maps]
        row = {"n": n, "estimate": statistics.fmean(est), "measured": statistics.fmean(meas),
               "abs_error": statistics.fmean(err), "abs_error_vs_ref": statistics.fmean(err_ref),
               "estimate_min": min(est), "estimate_max": max(est),
               "measured_min": min(meas), "measured_max": max(meas),
               "below_0_8": sum(e < 0.8 for e in est), "maps": len(est),
               "twin_estimate": statistics.fmean(twin_est), "twin_measured": statistics.fmean(twin_meas),
               "twin_abs_error": statistics.fmean(abs(a - b) for a, b in zip(twin_est, twin_meas, strict=True)),
               "twin_bias": statistics.fmean(a - b for a, b in zip(twin_est, twin_meas, strict=True)),
               "twin_product": statistics.fmean(m["estimate"][0] * m["estimate"][1] for m in maps),
               "flagged_seed_only": sum(b < a - DEFAULT_COMPARE_MARGIN
                                        for a, b in zip(twin_est, twin_meas, strict=True)),
               "pairs": len(maps)}
        rows.append(row)
        points += [{"n": n, "image": m["image"], "estimate": e, "measured": v}
                   for m in maps for e, v in zip(m["estimate"], m["measured"], strict=True)]
        log(f"  n={n}: estimate {row['estimate']:.4f} measured {row['measured']:.4f} |err| {row['abs_error']:.4f}; "
            f"twins {row['twin_measured']:.4f}, estimated {row['twin_estimate']:.4f}, "
            f"flagged {row['flagged_seed_only']} / {row['pairs']}")
    return {"reference_n": int(reference.n_samples.max()), "noise": "gaussian", "pooled": True,
            "reference_reliability": float(ref_rel.mean()), "rows": rows, "points": points,
            "per_map": {n: list(v) for n, v in per_n.items()}, "images_done": len(per_n[ns[0]])}


def to_markdown(result: dict[str, Any], model: str = "lite0") -> str:
    """One row per ``n`` of a :func:`pooled_calibration` result."""
    ref = result["reference_n"]
    lines = [
        f"| model | n | maps | estimate mean (min–max) | measured ρ vs n={ref} mean (min–max) "
        "| mean abs(est − meas) | mean abs(est·ρ_ref − meas) | maps estimated < 0.8 "
        "| twins: measured | twins: estimated | twin bias | seed-only pairs flagged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {model} | {r['n']} | {r['maps']} | {r['estimate']:.3f} ({r['estimate_min']:.3f}–{r['estimate_max']:.3f}) "
            f"| {r['measured']:.3f} ({r['measured_min']:.3f}–{r['measured_max']:.3f}) | {r['abs_error']:.3f} "
            f"| {r['abs_error_vs_ref']:.3f} | {r['below_0_8']} / {r['maps']} | {r['twin_measured']:.3f} "
            f"| {r['twin_estimate']:.3f} | {r['twin_bias']:+.3f} | {r['flagged_seed_only']} / {r['pairs']} |")
    return "\n".join(lines)
