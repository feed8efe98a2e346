"""Figures for the audit report, as PNG bytes (matplotlib, headless Agg).

matplotlib is imported lazily: it is only needed to write a report
(``pip install 'sgcore[plots]'``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sgcore.attribution import clip_percentile


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("audit reports need matplotlib: pip install 'sgcore[plots]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def display(m: np.ndarray, q: float = 99.0) -> np.ndarray:
    """``|m|`` scaled to [0, 1] with its ``q``-th percentile at 1 (the paper's view)."""
    return clip_percentile(torch.from_numpy(np.asarray(m, dtype=np.float32)), q).numpy()


def sanity_curve(steps: list[dict[str, Any]]) -> bytes:
    """Similarity to the trained maps as layers are randomized top-down."""
    plt = _plt()
    names = ["trained", *[s["layer"] for s in steps]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4))
    low = -0.25
    for key, label in (("spearman_abs", "Spearman (abs)"), ("spearman_signed", "Spearman (signed)"), ("ssim", "SSIM")):
        y = [1.0, *[s[key] for s in steps]]
        err = [0.0, *[s.get(f"{key}_std", 0.0) for s in steps]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        low = min(low, *(v - e - 0.05 for v, e in zip(y, err, strict=True) if np.isfinite(v)))
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(max(low, -1.05), 1.05)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_ylabel("similarity to trained-model maps")
    ax.set_xlabel("cascading randomization (top layer first)")
    ax.legend()
    ax.set_title("Model-parameter randomization (Adebayo et al. 2018)")
    return _png(fig)


def perturbation_curves(curves: dict[str, np.ndarray]) -> bytes:
    """Mean deletion/insertion curves, saliency order against random order."""
    return _png(perturbation_figure(curves))


def perturbation_figure(curves: dict[str, np.ndarray]) -> Any:
    """The figure of :func:`perturbation_curves`; the y axis fits the curves (probabilities of an
    untrained model sit near 1/classes, where a fixed 0-1 axis would draw them flat)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    means = [np.asarray(v).mean(axis=0) for v in curves.values()]
    top = max((float(np.nanmax(m)) for m in means if m.size), default=1.0)
    top = min(1.02, max(top * 1.1, 1e-3))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for key, style in ((kind, "-"), (f"{kind}_random", "--")):
            c = np.asarray(curves[key])
            x = np.linspace(0, 1, c.shape[-1])
            label = "saliency order" if key == kind else "random order"
            ax.plot(x, c.mean(axis=0), style, label=label)
        ax.set_title(kind.capitalize())
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("target probability")
        ax.set_ylim(0, top)
        ax.legend()
    return fig


def map_grid(
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    images: Sequence[np.ndarray] | None = None,
    columns: int = 6,
    size: float = 1.8,
) -> bytes:
    """A grid of maps with titles and a colour bar; with ``images``, each pick in two views.

    Maps alone: ``|map|`` scaled by its own 99th percentile, inferno. With
    images: on top the heat overlay (the map in inferno over the image in dimmed
    grey), below it the authors' view (99th-percentile clipped grayscale map).
    """
    from sgcore import render

    plt = _plt()
    n = max(1, len(maps))
    cols = min(columns, n)
    blocks = (n + cols - 1) // cols
    per = 2 if images is not None else 1
    fig, axes = plt.subplots(blocks * per, cols, figsize=(size * cols + 0.9, (size + 0.15) * blocks * per + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(len(maps)):
        r, c = divmod(k, cols)
        top_ax = axes[r * per, c]
        if images is not None:
            blended, _ = render.heat_blend(np.asarray(images[k]), np.asarray(maps[k], np.float32))
            top_ax.imshow(blended)
            axes[r * per + 1, c].imshow(render.map_view(maps[k], "gray"))
        else:
            top_ax.imshow(display(maps[k]), cmap="inferno", vmin=0, vmax=1)
        top_ax.set_title(titles[k], fontsize=8)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap="inferno"), ax=axes.ravel().tolist(),
                       fraction=0.025, pad=0.02)
    bar.set_label("|map| / its 99th percentile", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _png(fig)


def sweep_figure(grid: np.ndarray, noise_levels: Sequence[float], counts: Sequence[int], title: str) -> bytes:
    """One image's maps, rows = noise levels, columns = sample counts (the paper's Fig. 3/4)."""
    plt = _plt()
    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 0.8, 1.5 * rows + 0.5), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(display(grid[i, j]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"n={counts[j]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{100 * noise_levels[i]:.0f}%", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def convergence_curve(counts: Sequence[int], relative_l2: np.ndarray, spearman: np.ndarray, reference: int, *,
                      estimated: np.ndarray | None = None, expected: np.ndarray | None = None) -> bytes:
    """Mean distance to the reference map against n (log-log), with 1/sqrt(n).

    With ``estimated`` (the maps' reliability estimates) and ``expected``
    (what they predict for the Spearman with the reference), both
    ``(len(counts), N)``, the right panel shows them beside the measurement.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    n = np.asarray(counts, dtype=np.float64)
    err = relative_l2.mean(axis=1)
    axes[0].loglog(n, err, "o-", label="measured")
    axes[0].loglog(n, err[0] / np.sqrt(n / n[0]), "--", color="grey", label="1/sqrt(n)")
    axes[0].set_xlabel("samples n")
    axes[0].set_ylabel(f"relative L2 to n={reference} map")
    axes[0].legend()
    axes[1].semilogx(n, spearman.mean(axis=1), "o-", label=f"measured, with the n={reference} map")
    if expected is not None:
        axes[1].semilogx(n, _nanmean_rows(expected), "s--", label="predicted by the estimates")
    if estimated is not None:
        axes[1].semilogx(n, _nanmean_rows(estimated), "^:", label="estimated, with the converged map")
    axes[1].set_xlabel("samples n")
    axes[1].set_ylabel("Spearman")
    axes[1].set_ylim(min(0.0, float(spearman.mean(axis=1).min())), 1.02)
    if expected is not None or estimated is not None:
        axes[1].legend(fontsize=8)
    fig.suptitle("Convergence of SmoothGrad with the number of samples")
    return _png(fig)


def scatter(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str, diagonal: bool = True) -> bytes:
    """A scatter plot, with y = x for reference."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(x, y, s=10, alpha=0.6)
    if diagonal:
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="y = x (position-blind)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def histogram(values: np.ndarray, *, xlabel: str, title: str) -> bytes:
    """A histogram of per-image values."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    # Values equal up to rounding (every map unchanged: Spearman 1 ± 1e-16)
    # leave numpy no room for 30 bins: widen the range to something visible.
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    pad = max(0.0, 1e-6 - (hi - lo)) / 2 + 1e-9
    ax.hist(v, bins=30, range=(lo - pad, hi + pad))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title)
    return _png(fig)


def distributions(groups: dict[str, list[float]], *, xlabel: str, title: str, threshold: float | None = None) -> bytes:
    """One horizontal box plot per group (e.g. per class), with an optional threshold line."""
    plt = _plt()
    names = sorted(groups)
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.35 * max(1, len(names))))
    ax.boxplot([np.asarray(groups[n], dtype=np.float64) for n in names], vert=False, widths=0.6)
    ax.set_yticks(range(1, len(names) + 1), [f"{n} ({len(groups[n])})" for n in names])
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig)


def _nanmean_rows(v: np.ndarray) -> np.ndarray:
    """Per row, the mean of the finite values (NaN where a row has none: nothing is plotted there)."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    return np.where(ok.any(axis=1), np.where(ok, v, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1), np.nan)
