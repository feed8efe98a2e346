"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022,
"A Consistent and Efficient Evaluation Strategy for Attribution Methods", arXiv:2202.00449).

Pixels are removed in saliency order, most relevant first (MoRF) or least
relevant first (LeRF), and replaced by *noisy linear imputation*: each
removed pixel is the weighted mean of its 8 neighbours (1/6 for the four
direct ones, 1/12 for the diagonals, renormalized at the image border), a
sparse linear system over all removed pixels at once, plus Gaussian noise.
Unlike a constant fill, the imputed values carry next to no information about
where the removed pixels were, so the model's score drop measures what those
pixels held, not the shape of the hole (the paper's "class information
leakage"). A faithful map makes the MoRF curve fall fast and the LeRF curve
stay high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

_NEIGHBOURS = (
    ((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6), ((0, 1), 1 / 6),
    ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12),
)  # fmt: skip

DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``image`` ``(C, H, W)`` with the ``removed`` ``(H, W)`` pixels imputed from their neighbours.

    Args:
        image: float array ``(C, H, W)``.
        removed: bool ``(H, W)``, True where a pixel is removed.
        noise: standard deviation of the Gaussian noise added to imputed values
            (in the image's units; the paper uses 0.01 on [0, 1] pixels).
        rng: generator of the noise (None: no noise drawn when ``noise == 0``).

    Returns:
        A new ``(C, H, W)`` float64 array.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    if removed.shape != (h, w):
        raise ValueError(f"removed must be (H, W) = {(h, w)}; got {removed.shape}")
    out = np.array(image, dtype=np.float64, copy=True)
    ys, xs = np.nonzero(removed)
    m = len(ys)
    if m == 0:
        return out
    var = np.full((h, w), -1, np.int64)
    var[ys, xs] = np.arange(m)
    rows, cols, vals = [], [], []
    rhs = np.zeros((m, c))
    total = np.zeros(m)
    flat = out.reshape(c, -1)
    for (dy, dx), weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        i = np.flatnonzero(inside)
        total[i] += weight
        j = var[ny[i], nx[i]]
        unknown = j >= 0
        rows.append(i[unknown])
        cols.append(j[unknown])
        vals.append(np.full(int(unknown.sum()), -weight))
        known = i[~unknown]
        rhs[known] += weight * flat[:, ny[known] * w + nx[known]].T
    # total_i * x_i - sum_{removed j} w_ij x_j = sum_{kept j} w_ij v_j
    a = sparse.csc_matrix(
        (np.concatenate([total, *vals]), (np.concatenate([np.arange(m), *rows]), np.concatenate([np.arange(m), *cols]))),
        shape=(m, m),
    )
    solution = spsolve(a, rhs)
    solution = solution.reshape(m, c)
    if noise > 0:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(solution.shape)
    flat[:, ys * w + xs] = solution.T
    return out


@dataclass(frozen=True, kw_only=True)
class RoadResult:
    """ROAD curves.

    Attributes:
        fractions: ``(K,)`` share of pixels removed at each point.
        morf: ``(B, K)`` target probability, most relevant pixels removed first.
        lerf: ``(B, K)`` the same, least relevant first.
        morf_correct, lerf_correct: ``(B, K)`` whether the prediction is still the target.
    """

    fractions: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    morf_correct: np.ndarray
    lerf_correct: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean curves' areas (trapezoid over the fractions) and the LeRF - MoRF gap (higher: more faithful)."""
        f = self.fractions
        morf = float(np.trapezoid(self.morf.mean(0), f)) if len(f) > 1 else float(self.morf.mean())
        lerf = float(np.trapezoid(self.lerf.mean(0), f)) if len(f) > 1 else float(self.lerf.mean())
        return {"road_morf_auc": morf, "road_lerf_auc": lerf, "road_gap": lerf - morf,
                "road_morf_accuracy": float(self.morf_correct.mean()),
                "road_lerf_accuracy": float(self.lerf_correct.mean())}


@torch.no_grad()
def road(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    orders: Sequence[Literal["morf", "lerf"]] = ("morf", "lerf"),
) -> RoadResult:
    """ROAD curves of ``model`` on ``images`` ``(B, C, H, W)`` (model input space) for ``maps`` ``(B, H, W)``.

    ``noise`` is scaled by each image's value range, as SmoothGrad's sigma is:
    the paper's 0.01 on [0, 1] pixels. The noise of image ``b`` comes from
    ``(seed, b)``, so a rerun gives the same curves.
    """
    b = images.shape[0]
    if maps.shape != (b, *images.shape[2:]):
        raise ValueError(f"maps must be (B, H, W) = {(b, *images.shape[2:])}; got {tuple(maps.shape)}")
    x = images.detach().cpu().double().numpy()
    saliency = maps.detach().cpu().double().abs().numpy().reshape(b, -1)
    pixels = saliency.shape[1]
    out = {o: np.zeros((b, len(fractions))) for o in orders}
    correct = {o: np.zeros((b, len(fractions)), bool) for o in orders}
    device = images.device
    for order in orders:
        for i in range(b):
            # Stable order; ties keep pixel order, so MoRF and LeRF are exact reverses.
            rank = np.argsort(-saliency[i] if order == "morf" else saliency[i], kind="stable")
            scale = float(x[i].max() - x[i].min()) or 1.0
            rng = np.random.default_rng([seed, i, 0 if order == "morf" else 1])
            batch = []
            for f in fractions:
                removed = np.zeros(pixels, bool)
                removed[rank[: int(round(f * pixels))]] = True
                batch.append(noisy_linear_imputation(x[i], removed.reshape(x.shape[2:]), noise=noise * scale, rng=rng))
            inp = torch.from_numpy(np.stack(batch)).to(device=device, dtype=images.dtype)
            prob = torch.softmax(model(inp).float(), dim=1)
            out[order][i] = prob[:, int(targets[i])].cpu().numpy()
            correct[order][i] = (prob.argmax(1) == int(targets[i])).cpu().numpy()
    empty = np.zeros((b, len(fractions)))
    return RoadResult(fractions=np.asarray(fractions, np.float64), morf=out.get("morf", empty),
                      lerf=out.get("lerf", empty), morf_correct=correct.get("morf", empty.astype(bool)),
                      lerf_correct=correct.get("lerf", empty.astype(bool)))
