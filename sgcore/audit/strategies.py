"""Strategy clusters per class: Spectral Relevance Analysis (SpRAy).

Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and assessing what
machines really learn" (Nature Communications 10:1096): cluster the
attribution maps of each class; each cluster is one way the model decides,
and a cluster whose maps sit off the object, or on a small spot the class's
other maps ignore, is a candidate shortcut (a watermark, a tag, a border).

How a map becomes a point (:func:`map_features`): the absolute map is
area-averaged to ``R x R`` cells, scaled to unit mass (where the saliency
lies, not how much there is: a model's score scale varies from image to
image) and square-rooted, so that the Euclidean distance between two points
is the Hellinger distance of the two mass distributions -- bounded, and less
dominated by the few strongest pixels than the plain L2 of the maps.

Clustering (:func:`spray`): a k-nearest-neighbour graph (exact up to
``exact_below`` maps, approximate above with pynndescent, Dong et al. 2011),
Gaussian affinities with the local scaling of Zelnik-Manor & Perona 2004,
the symmetric normalized Laplacian (regularized, Amini et al. 2013), the
number of clusters at its largest eigengap (von Luxburg 2007) within
``[2, max_clusters]``, and k-means on
the row-normalized spectral embedding (Ng, Jordan & Weiss 2001).

Cost for ``n`` maps of a class with ``d = R^2`` features and ``k`` neighbours:
features O(n H W); exact kNN O(n^2 d) time and O(n k) memory (blocked);
approximate kNN about O(n^1.14 d) (the NN-descent paper's measurement);
the eigenproblem O(n k) per Lanczos iteration on the sparse graph; k-means
O(n c^2) per iteration for ``c`` clusters. Memory is O(n (d + k)).

Scale (:func:`run_strategies`): each part file is read and turned into
features by a Ray task, which returns one block per class; each class is
then clustered by its own Ray task from those blocks, so the driver holds
neither maps nor features, only object references and the cluster ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sgcore.errors import ConfigError

StrategyBy = Literal["predicted", "label"]

# Flag thresholds; the report states each flag's figures against them in words.
# Flags compare a cluster with the rest of its class (the other clusters pooled):
# the largest cluster can itself be the shortcut when the other images spread
# over several clusters.
SMALL_SHARE = 1 / 3  # "small": at most this share of the class's images
# How apart a cluster is: its conductance (the share of its neighbour affinity
# that leaves it) over the share a random set of its size would lose (1 - share).
# ``distinctness`` is one minus that: 0 as connected as a random set of images,
# 1 a separate part of the neighbour graph.
# "distinct": that ratio is at most this fraction of the same ratio of the
# class's other clusters (their median; with three clusters or more: the two
# sides of a two-way split share one cut, so their ratios are alike).
# Relative, because the absolute figure falls with the number of maps.
DISTINCT_RATIO = 0.25
# "a small region": half of its extra mass over the rest lies in this share of the
# image -- a tag or a watermark, not an object (on 16x16 cells a 6x6-pixel tag on
# 64x64 images is 1-2%; a cluster of objects at one place spreads over 4-6%)
SPOT_AREA = 0.03
SPOT_RATIO = 4.0  # "that the rest does not use": at least 4x the other clusters' median mass there
# "a separate cluster on a small spot": separate -- distinctness at least
# SEPARATE (under 2% of the affinity a random set of its size would lose leaves
# it), or, with three clusters or more, its ratio at most SEPARATE_RATIO of the
# other clusters' median -- with half of its extra mass over the rest within
# SPOT_AREA of the image, at least SEPARATE_SPOT_RATIO times the rest's
# mass there and SPOT_DENSITY times a position-blind map's (the spot's area).
# Looser on the spot than the spot rule above, because the separation already
# says its maps differ: a gradient map of a model that reads a tag often looks
# at the tag's place on untagged images too, which lowers the ratio to the rest.
SEPARATE = 0.98
SEPARATE_RATIO = 0.5
SEPARATE_SPOT_RATIO = 2.0
SPOT_DENSITY = 4.0
OFF_OBJECT_RATIO = 0.5  # "off the object": less than half the rest's mass on the object
REGULARIZATION = 0.01  # tau of the regularized Laplacian, as a share of the mean degree

REGIONS: tuple[str, ...] = (
    "top-left corner", "top edge", "top-right corner",
    "left edge", "centre", "right edge",
    "bottom-left corner", "bottom edge", "bottom-right corner",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Settings of the strategy clustering.

    Attributes:
        by: group images by their ``"predicted"`` class (what the model
            decided, the default) or their ``"label"``.
        resolution: maps are area-averaged to ``resolution x resolution`` cells.
        max_clusters: most clusters per class (the eigengap picks within it).
        neighbors: k of the kNN graph (None: ``round(sqrt(n))`` within [5, 30]).
        exact_below: classes with fewer maps get an exact kNN graph; larger
            ones an approximate one (pynndescent).
        examples: example overlays per cluster.
        min_images: classes with fewer images are one cluster.
        border_width: border band, as a fraction of the side.
        seed: seed of k-means, the eigensolver start and the approximate kNN.
    """

    by: StrategyBy = "predicted"
    resolution: int = 16
    max_clusters: int = 8
    neighbors: int | None = None
    exact_below: int = 4000
    examples: int = 8
    min_images: int = 10
    border_width: float = 0.125
    seed: int = 0

    def __post_init__(self) -> None:
        if self.by not in ("predicted", "label"):
            raise ConfigError(f"strategy_by must be 'predicted' or 'label'; got {self.by!r}")
        for name, low in (("resolution", 2), ("max_clusters", 1), ("exact_below", 0), ("examples", 0),
                          ("min_images", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
        if self.neighbors is not None and (
            isinstance(self.neighbors, bool) or not isinstance(self.neighbors, int) or self.neighbors < 2
        ):
            raise ConfigError(f"neighbors must be an integer >= 2; got {self.neighbors!r}")
        if not 0.0 < self.border_width < 0.5:
            raise ConfigError(f"border_width must be in (0, 0.5); got {self.border_width}")


# --------------------------------------------------------------------------- features


def _bin_edges(n: int, r: int) -> np.ndarray:
    return np.linspace(0, n, r + 1).round().astype(np.int64)


def downsample(maps: np.ndarray, resolution: int) -> np.ndarray:
    """Area average of ``(N, H, W)`` maps to ``(N, R, R)`` (cells of nearly equal size)."""
    maps = np.abs(np.asarray(maps, dtype=np.float32))
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W); got shape {maps.shape}")
    n, h, w = maps.shape
    r = resolution
    if h < r or w < r:
        raise ValueError(f"maps of {h}x{w} are smaller than the strategy resolution {r}; lower it")
    ey, ex = _bin_edges(h, r), _bin_edges(w, r)
    sums = np.add.reduceat(np.add.reduceat(maps, ey[:-1], axis=1), ex[:-1], axis=2)
    area = np.diff(ey)[:, None] * np.diff(ex)[None, :]
    return (sums / area).astype(np.float32)


def map_features(maps: np.ndarray, resolution: int = 16) -> np.ndarray:
    """``(N, R*R)`` float32 points: sqrt of the unit-mass, area-averaged absolute map.

    A map with no mass becomes the uniform distribution (it says nothing about
    where the model looked).
    """
    cells = downsample(maps, resolution).reshape(len(maps), -1).astype(np.float64)
    total = cells.sum(axis=1, keepdims=True)
    uniform = np.full_like(cells, 1.0 / cells.shape[1])
    mass = np.where(total > 0, cells / np.where(total > 0, total, 1.0), uniform)
    return np.sqrt(mass).astype(np.float32)


# --------------------------------------------------------------------------- clustering


@dataclass(frozen=True, kw_only=True)
class Spray:
    """Clusters of one class's maps.

    Attributes:
        labels: ``(N,)`` cluster of each map; 0 is the largest cluster, ids by size.
        k: number of clusters.
        eigenvalues: smallest eigenvalues of the normalized Laplacian, ascending.
        embedding: ``(N, 2)`` spectral embedding for plots (zeros when ``N < 3``).
        conductance: ``(k,)`` share of each cluster's affinity that leaves it.
        neighbors: k of the kNN graph; ``approximate``: whether it was approximate.
    """

    labels: np.ndarray
    k: int
    eigenvalues: np.ndarray
    embedding: np.ndarray
    conductance: np.ndarray
    neighbors: int
    approximate: bool
    spectral: np.ndarray = field(repr=False)  # (N, k) row-normalized embedding, for examples


def knn(features: np.ndarray, k: int, *, exact_below: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Indices and distances ``(N, k)`` of each point's k nearest other points.

    Exact (blocked brute force) below ``exact_below`` points, else pynndescent.
    """
    n = len(features)
    k = min(k, n - 1)
    if n <= exact_below:
        x = features.astype(np.float32)
        sq = (x * x).sum(axis=1)
        idx = np.empty((n, k), np.int64)
        dist = np.empty((n, k), np.float32)
        block = max(1, 2**22 // max(n, 1))
        for s in range(0, n, block):
            d2 = sq[s : s + block, None] + sq[None, :] - 2.0 * (x[s : s + block] @ x.T)
            rows = np.arange(d2.shape[0])
            d2[rows, s + rows] = np.inf  # not its own neighbour
            part = np.argpartition(d2, k - 1, axis=1)[:, :k]
            pd = np.take_along_axis(d2, part, axis=1)
            order = np.argsort(pd, axis=1, kind="stable")
            idx[s : s + block] = np.take_along_axis(part, order, axis=1)
            dist[s : s + block] = np.sqrt(np.maximum(np.take_along_axis(pd, order, axis=1), 0.0))
        return idx, dist, False
    try:
        from pynndescent import NNDescent
    except ImportError as e:
        raise ImportError(
            f"strategy clusters of {n} maps (more than {exact_below}) use an approximate kNN graph, "
            "which needs pynndescent: pip install 'sgcore[strategies]'"
        ) from e
    index = NNDescent(features, n_neighbors=k + 1, random_state=seed, n_jobs=1, low_memory=True)
    idx, dist = index.neighbor_graph
    # Drop each point itself (first, normally; anywhere when duplicates tie).
    keep = idx != np.arange(n)[:, None]
    out_i = np.empty((n, k), np.int64)
    out_d = np.empty((n, k), np.float32)
    for r in range(n):
        out_i[r] = idx[r][keep[r]][:k]
        out_d[r] = dist[r][keep[r]][:k]
    return out_i, out_d, True


def affinity(idx: np.ndarray, dist: np.ndarray) -> Any:
    """Symmetric sparse affinity, ``exp(-d_ij^2 / (s_i s_j))`` with s_i the distance to the 7th neighbour."""
    from scipy import sparse

    n, k = idx.shape
    scale = dist[:, min(6, k - 1)].astype(np.float64)
    floor = max(float(np.median(scale)) * 1e-3, 1e-12)
    scale = np.maximum(scale, floor)
    w = np.exp(-(dist.astype(np.float64) ** 2) / (scale[:, None] * scale[idx]))
    a = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return a.maximum(a.T).tocsr()


def spray(
    features: np.ndarray,
    *,
    max_clusters: int = 8,
    neighbors: int | None = None,
    exact_below: int = 4000,
    min_images: int = 10,
    seed: int = 0,
) -> Spray:
    """Spectral clustering of one class's map features (see the module docstring).

    Args:
        features: ``(N, D)`` from :func:`map_features`.
        max_clusters: upper bound of the eigengap's choice.
        neighbors: k of the kNN graph (None: ``round(sqrt(N))`` within [5, 30]).
        exact_below: exact kNN up to this many points.
        min_images: fewer points make one cluster.
        seed: seed of the eigensolver start, k-means and the approximate kNN.
    """
    n = len(features)
    if n < max(min_images, 3):
        return Spray(labels=np.zeros(n, np.int64), k=1, eigenvalues=np.zeros(1), embedding=np.zeros((n, 2)),
                     conductance=np.zeros(1), neighbors=0, approximate=False, spectral=np.zeros((n, 1)))
    k_nn = neighbors or int(np.clip(round(np.sqrt(n)), 5, 30))
    idx, dist, approximate = knn(features, k_nn, exact_below=exact_below, seed=seed)
    a = affinity(idx, dist)
    degree = np.asarray(a.sum(axis=1)).ravel()
    # Regularized spectral clustering (Amini et al. 2013; Qin & Rohe 2013) with a
    # small tau: tau/n is added to every affinity. A group of maps with no edge to
    # the rest (a very distinct strategy) is then a small, simple eigenvalue instead
    # of a repeated zero, which Lanczos can miss.
    tau = REGULARIZATION * float(degree.mean())
    inv_sqrt = 1.0 / np.sqrt(degree + tau)
    from scipy import sparse

    n_eig = min(max_clusters + 1, n - 1)
    if n <= 600:
        m = inv_sqrt[:, None] * (a.toarray() + tau / n) * inv_sqrt[None, :]
        mu, vec = np.linalg.eigh(m)
        mu, vec = mu[::-1][:n_eig], vec[:, ::-1][:, :n_eig]
    else:
        from scipy.sparse.linalg import LinearOperator, eigsh

        s_a = sparse.diags(inv_sqrt) @ a @ sparse.diags(inv_sqrt)

        def matvec(v: np.ndarray) -> np.ndarray:
            v = v.reshape(n, -1)
            return s_a @ v + (tau / n) * inv_sqrt[:, None] * (inv_sqrt @ v)[None, :]

        op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).random(n)
        mu, vec = eigsh(op, k=n_eig, which="LA", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n))
        order = np.argsort(mu)[::-1]
        mu, vec = mu[order], vec[:, order]
    lam = np.clip(1.0 - mu, 0.0, 2.0)
    gaps = np.diff(lam)  # gaps[j] = lam[j+1] - lam[j]: the gap after j+1 clusters
    # Within [2, max_clusters]: on a continuum of maps (objects anywhere in the image)
    # the first gap is often the largest, which would hide a small strategy; a split
    # that finds nothing different simply gets no flag.
    low = 2 if max_clusters >= 2 and len(gaps) >= 2 else 1
    k = int(np.argmax(gaps[low - 1 : max_clusters])) + low if len(gaps) else 1
    spectral = vec[:, :k] / np.maximum(np.linalg.norm(vec[:, :k], axis=1, keepdims=True), 1e-12)
    if k == 1:
        raw = np.zeros(n, np.int64)
    else:
        from sklearn.cluster import KMeans

        raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(spectral).astype(np.int64)
    sizes = np.bincount(raw, minlength=k)
    rank = np.empty(k, np.int64)
    rank[np.lexsort((np.arange(k), -sizes))] = np.arange(k)
    labels = rank[raw]
    k = int(labels.max()) + 1
    # Random-walk eigenvectors 2 and 3 (the first is constant): the plot's coordinates.
    embedding = (vec[:, 1:3] * inv_sqrt[:, None]) if vec.shape[1] >= 3 else np.zeros((n, 2))
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, k))
    within = np.asarray((onehot.T @ a @ onehot).diagonal()).ravel()
    volume = np.asarray(onehot.T @ degree).ravel()
    conductance = 1.0 - within / np.maximum(volume, 1e-300)
    return Spray(labels=labels, k=k, eigenvalues=lam, embedding=embedding, conductance=conductance,
                 neighbors=int(idx.shape[1]), approximate=approximate, spectral=spectral)


# --------------------------------------------------------------------------- describing clusters


def region_shares(mass: np.ndarray) -> dict[str, float]:
    """Mass of an ``(R, R)`` unit-mass map in each of the 3x3 regions of :data:`REGIONS`."""
    r = mass.shape[0]
    e = _bin_edges(r, 3)
    out = {}
    for i in range(3):
        for j in range(3):
            out[REGIONS[3 * i + j]] = float(mass[e[i] : e[i + 1], e[j] : e[j + 1]].sum())
    return out


def border_band(r: int, width: float) -> np.ndarray:
    """``(R, R)`` bool band of ``max(1, round(width * R))`` cells along the edges."""
    b = max(1, round(width * r))
    band = np.ones((r, r), bool)
    band[b : r - b, b : r - b] = False
    return band


def spot(mass: np.ndarray, share: float = 0.5) -> np.ndarray:
    """``(R, R)`` bool: the fewest cells that hold ``share`` of ``mass``."""
    flat = mass.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    count = int(np.searchsorted(np.cumsum(flat[order]), share * flat.sum())) + 1
    out = np.zeros(flat.shape, bool)
    out[order[:count]] = True
    return out.reshape(mass.shape)


def _where(cells: np.ndarray) -> str:
    """The region of :data:`REGIONS` that holds most of the cells."""
    shares = region_shares(cells.astype(np.float64) / max(int(cells.sum()), 1))
    return max(shares, key=lambda name: shares[name])


def describe_clusters(
    mean_maps: Sequence[np.ndarray],
    counts: Sequence[int],
    conductance: Sequence[float],
    *,
    mass_in_object: Sequence[float] | None = None,
    object_area: Sequence[float] | None = None,
    border_width: float = 0.125,
    class_name: str | None = None,
) -> list[dict[str, Any]]:
    """Statistics, flags and reasons of one class's clusters (cluster 0 is the largest).

    Args:
        mean_maps: ``(R, R)`` mean unit-mass map of each cluster.
        counts: images per cluster.
        conductance: share of each cluster's affinity that leaves it.
        mass_in_object: mean saliency mass inside the object (mask or box) per
            cluster, NaN where its images have none; None: no ground truth.
        object_area: mean object area (share of the image) per cluster.
        border_width: border band, as a fraction of the side.
        class_name: the class, for the reasons' wording.

    Returns:
        One dict per cluster: ``cluster, images, share, flagged, why`` (a list
        of sentences), ``border_share``, ``regions`` (3x3 grid), ``differs_from_main``
        (total variation distance of its mean map from the largest cluster's,
        in [0, 1]), ``gains_most`` (the region where it has the most mass more
        than the largest cluster), ``spot_area``/``spot_region``/``spot_mass``/
        ``rest_on_spot`` (the fewest cells holding half of its mass in excess
        of the rest of the class, and both mean maps' mass there),
        ``others_on_spot`` (the other clusters' median mass there, with three
        clusters or more, else ``rest_on_spot``: the spot rules' baseline),
        ``distinctness`` (see :data:`DISTINCT_RATIO`; NaN for a class's only
        cluster) and ``mass_in_object``/``object_area`` when known.
    """
    counts_arr = np.asarray(counts, np.float64)
    total = max(float(counts_arr.sum()), 1.0)
    maps = np.stack([np.asarray(m, np.float64) / max(float(np.sum(m)), 1e-300) for m in mean_maps])
    main = maps[0]
    r = main.shape[0]
    band = border_band(r, border_width)
    main_regions = region_shares(main)
    weighted = maps * counts_arr[:, None, None]
    mio_all = None if mass_in_object is None else np.asarray(mass_in_object, np.float64)
    shares = counts_arr / total
    # Conductance over what a random set of the cluster's size would lose: 0 for a
    # separate part of the graph, about 1 for a random set.
    relative = np.asarray(conductance, np.float64) / np.maximum(1.0 - shares, 1e-12)
    maps_of = f"'{class_name}' maps" if class_name is not None else "maps of the class"
    out = []
    for c in range(len(maps)):
        mass, count = maps[c], int(counts_arr[c])
        share = count / total
        others = total - count
        rest = (weighted.sum(axis=0) - weighted[c]) / others if others > 0 else None
        regions = region_shares(mass)
        gains = {name: regions[name] - main_regions[name] for name in REGIONS}
        other_clusters = np.delete(relative, c)
        typical = float(np.median(other_clusters)) if len(other_clusters) else float("nan")
        distinct = 1.0 - float(relative[c]) if len(maps) > 1 else float("nan")
        separate = distinct >= SEPARATE or (len(maps) >= 3 and relative[c] <= SEPARATE_RATIO * typical)
        row: dict[str, Any] = {
            "cluster": c,
            "images": count,
            "share": share,
            "border_share": float(mass[band].sum()),
            "regions": regions,
            "differs_from_main": 0.5 * float(np.abs(mass - main).sum()),
            "gains_most": max(gains, key=lambda name: gains[name]),
            "conductance": float(conductance[c]),
            "distinctness": distinct,
        }
        why: list[str] = []
        if rest is not None:
            excess = np.maximum(mass - rest, 0.0)
            cells = spot(excess) if excess.sum() > 0 else np.zeros_like(excess, bool)
            own, pooled = float(mass[cells].sum()), float(rest[cells].sum())
            # What the class's other clusters typically put there (their median, with three
            # clusters or more): a shortcut's images split over two clusters would otherwise
            # raise each other's baseline.
            on_spot = [float(maps[j][cells].sum()) for j in range(len(maps)) if j != c]
            theirs = float(np.median(on_spot)) if len(maps) >= 3 else pooled
            whose = "the class's other clusters typically (median)" if len(maps) >= 3 else "the class's other maps"
            row.update(spot_area=float(cells.mean()), spot_region=_where(cells) if cells.any() else None,
                       spot_mass=own, rest_on_spot=pooled, others_on_spot=theirs)
            if cells.any() and cells.mean() <= SPOT_AREA and own >= SPOT_RATIO * theirs:
                ratio = f"{own / theirs:.0f}x" if theirs > 0 else "far more than"
                why.append(f"concentrated where the rest of the class does not look: {100 * own:.0f}% of its "
                           f"saliency lies in {100 * cells.mean():.1f}% of the image ({row['spot_region']}), "
                           f"{ratio} the {100 * theirs:.1f}% {whose} put there")
            elif (cells.any() and separate and cells.mean() <= SPOT_AREA
                  and own >= SEPARATE_SPOT_RATIO * theirs and own >= SPOT_DENSITY * cells.mean()):
                why.append(f"{count} of {int(total)} {maps_of} put {100 * own:.0f}% of their saliency in "
                           f"{100 * cells.mean():.1f}% of the image ({row['spot_region']}), where {whose} "
                           f"put {100 * theirs:.0f}%; a separate cluster (conductance "
                           f"{float(conductance[c]):.2f}, distinctness {distinct:.2f}"
                           + ("" if distinct >= SEPARATE else f", the class's other clusters' median "
                              f"{1 - typical:.2f}") + ")")
        if mio_all is not None and object_area is not None and np.isfinite(mio_all[c]):
            mio, area = float(mio_all[c]), float(object_area[c])
            row["mass_in_object"], row["object_area"] = mio, area
            known = [j for j in range(len(maps)) if j != c and np.isfinite(mio_all[j])]
            rest_mio = (float(np.average(mio_all[known], weights=counts_arr[known]))
                        if known and counts_arr[known].sum() > 0 else float("nan"))
            if mio <= area:
                why.append(f"off the object: {100 * mio:.0f}% of its saliency lies on the object, no more than "
                           f"the object's {100 * area:.0f}% share of the image")
            elif np.isfinite(rest_mio) and mio < OFF_OBJECT_RATIO * rest_mio:
                why.append(f"off the object: {100 * mio:.0f}% of its saliency lies on the object, under half "
                           f"the {100 * rest_mio:.0f}% of the class's other images")
        if (0 < share <= SMALL_SHARE and len(maps) >= 3 and typical > 0
                and relative[c] <= DISTINCT_RATIO * typical):
            apart = (f"{100 * float(conductance[c]):.1f}% of its neighbour affinity leaves it, "
                     f"{typical / relative[c]:.0f}x less (for its size) than the class's other clusters"
                     if relative[c] > 0.01 * typical else "almost none of its neighbour affinity leaves it "
                     "(a separate part of the neighbour graph)")
            why.append(f"small and distinct: {100 * share:.0f}% of the class's images, and {apart}")
        row["flagged"] = bool(why)
        row["why"] = why
        out.append(row)
    return out


# --------------------------------------------------------------------------- per class, at scale


@dataclass(frozen=True, kw_only=True)
class ClassStrategies:
    """One class's clusters, as returned by a clustering task (no maps).

    Attributes:
        name: the class.
        image_ids: its images, in the order of ``labels``.
        spray: the clustering.
        mean_maps: ``(k, R, R)`` mean unit-mass map per cluster.
        examples: per cluster, up to ``examples`` image ids nearest its centre.
    """

    name: str
    image_ids: list[str]
    spray: Spray
    mean_maps: np.ndarray
    examples: list[list[str]]


def cluster_class(name: str, config: StrategyConfig, blocks: Iterable[tuple[list[str], np.ndarray]]) -> ClassStrategies:
    """Clusters one class from its feature blocks ``(image_ids, (n, R*R) features)``."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for block_ids, feats in blocks:
        ids.extend(block_ids)
        parts.append(np.asarray(feats, np.float32))
    r = config.resolution
    features = np.concatenate(parts) if parts else np.zeros((0, r * r), np.float32)
    result = spray(features, max_clusters=config.max_clusters, neighbors=config.neighbors,
                   exact_below=config.exact_below, min_images=config.min_images, seed=config.seed)
    mass = features.astype(np.float64) ** 2
    mean_maps = np.stack([mass[result.labels == c].mean(axis=0).reshape(r, r) for c in range(result.k)]) \
        if len(features) else np.zeros((1, r, r))
    examples = []
    for c in range(result.k):
        members = np.flatnonzero(result.labels == c)
        centre = result.spectral[members].mean(axis=0)
        d = np.linalg.norm(result.spectral[members] - centre, axis=1)
        pick = members[np.lexsort((members, d))][: config.examples]
        examples.append([ids[i] for i in pick])
    return ClassStrategies(name=name, image_ids=ids, spray=result, mean_maps=mean_maps, examples=examples)


def part_features(meta: Any, maps: np.ndarray, config: StrategyConfig) -> dict[str, tuple[list[str], np.ndarray]]:
    """One part's features grouped by class: ``{class: (image_ids, (n, R*R) float16)}``.

    float16 halves what travels between tasks; its ~3 significant digits are
    far finer than the clustering distinguishes.
    """
    keys = row_strategy_classes(meta, config.by)
    ids = meta.column("image_id").to_pylist()
    feats = map_features(maps, config.resolution).astype(np.float16) if len(ids) else np.zeros((0, 0), np.float16)
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in sorted({k for k in keys if k is not None}):
        sel = [i for i, k in enumerate(keys) if k == name]
        out[name] = ([ids[i] for i in sel], feats[sel])
    return out


def row_strategy_classes(meta: Any, by: StrategyBy) -> list[str | None]:
    """The class each row is grouped by: predicted class name (else index), or its label (None: no label)."""
    n = len(meta)

    def col(name: str) -> list:
        return meta.column(name).to_pylist() if name in meta.column_names else [None] * n

    if by == "label":
        return [None if v is None else str(v) for v in col("label")]
    return [str(name) if name is not None else (None if p is None else str(p))
            for name, p in zip(col("predicted_name"), col("predicted"), strict=True)]


def _features_task(results: Any, part: str, config: StrategyConfig, classes: list[str]) -> tuple:
    from sgcore.results import read_part

    meta, maps = read_part(results, part)
    grouped = part_features(meta, maps, config) if maps is not None and len(meta) else {}
    empty: tuple[list[str], np.ndarray] = ([], np.zeros((0, config.resolution ** 2), np.float16))
    out = tuple(grouped.get(name, empty) for name in classes)
    return out if len(classes) > 1 else out[0]  # one return value is the value itself, not a 1-tuple


def _cluster_task(name: str, config: StrategyConfig, *blocks: tuple[list[str], np.ndarray]) -> ClassStrategies:
    return cluster_class(name, config, blocks)


def run_strategies(
    results: Any,
    classes: list[str],
    config: StrategyConfig,
    *,
    num_actors: int | None = None,
    address: str | None = None,
) -> list[ClassStrategies]:
    """Clusters every class of ``results``; on Ray unless ``num_actors == 0``.

    Args:
        results: an opened results directory (:func:`sgcore.audit.open_results_dir`).
        classes: the classes to cluster (e.g. the predicted names of the index).
        config: clustering settings.
        num_actors: 0 runs in this process (features of a class then pass
            through its memory); otherwise Ray tasks with one CPU each.
        address: Ray address (None: ``RAY_ADDRESS``, else a fresh local Ray).

    Returns:
        One :class:`ClassStrategies` per class, in the order of ``classes``.
    """
    if not classes:
        return []
    if num_actors == 0:
        blocks: dict[str, list[tuple[list[str], np.ndarray]]] = {name: [] for name in classes}
        for part in results.parts:
            got = _features_task(results, part, config, classes)
            for name, block in zip(classes, got if len(classes) > 1 else (got,), strict=True):
                if block[0]:
                    blocks[name].append(block)
        return [cluster_class(name, config, blocks[name]) for name in classes]
    import ray

    from sgcore.pipeline.cluster import connect_ray

    owns_ray = connect_ray(address)
    try:
        features = ray.remote(num_cpus=1)(_features_task).options(num_returns=len(classes))
        cluster = ray.remote(num_cpus=1)(_cluster_task)
        refs = [features.remote(results, part, config, classes) for part in results.parts]
        per_part = [r if isinstance(r, list) else [r] for r in refs]
        tasks = [cluster.remote(name, config, *[p[c] for p in per_part]) for c, name in enumerate(classes)]
        return list(ray.get(tasks))
    finally:
        if owns_ray:
            ray.shutdown()
