"""The strategy section of the audit report: SpRAy clusters per class, their flags in
words, example overlays of the flagged clusters first, and the per-image columns
``strategy`` and ``strategy_flagged``.

The clustering is :mod:`sgcore.audit.strategies`; :class:`StrategyFeed` turns each part's maps
into features in the audit's one pass (on Ray, each block goes to the object store, so the
driver holds references, not features) and clusters each class afterwards, on Ray as one task
per class unless the audit runs in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sgcore.audit import plots
from sgcore.audit.strategies import (
    DISTINCT_RATIO,
    OFF_OBJECT_RATIO,
    SEPARATE,
    SEPARATE_RATIO,
    SEPARATE_SPOT_RATIO,
    SMALL_SHARE,
    SPOT_AREA,
    SPOT_DENSITY,
    SPOT_RATIO,
    ClassStrategies,
    StrategyConfig,
    _cluster_task,
    cluster_class,
    describe_clusters,
    part_features,
)
from sgcore.errors import InputError
from sgcore.results import PartRows

SECTION_TITLE = "Strategies (SpRAy clusters per class)"


def strategy_classes(index: Any, by: str) -> list[str]:
    """Classes of the index's ok rows, by predicted name (else index) or by label."""
    from sgcore.audit.strategies import row_strategy_classes

    return sorted({k for k in row_strategy_classes(index, by) if k is not None})  # type: ignore[arg-type]


class StrategyFeed:
    """Each part's features grouped by class; :meth:`cluster` clusters every class.

    Args:
        on_ray: keep the blocks in Ray's object store and cluster on Ray (Ray must be connected).
    """

    def __init__(self, config: StrategyConfig, *, on_ray: bool) -> None:
        self.config, self.on_ray = config, on_ray
        self.blocks: dict[str, list[Any]] = {}

    def add(self, rows: PartRows, start: int) -> None:
        if not len(rows.meta):
            return
        put = _ray_put() if self.on_ray else (lambda v: v)
        for name, block in part_features(rows.meta, rows.maps, self.config).items():
            self.blocks.setdefault(name, []).append(put(block))

    def cluster(self) -> list[ClassStrategies]:
        """One :class:`ClassStrategies` per class, classes sorted by name."""
        classes = sorted(self.blocks)
        if not self.on_ray:
            return [cluster_class(name, self.config, self.blocks[name]) for name in classes]
        import ray

        task = ray.remote(num_cpus=1)(_cluster_task)
        return list(ray.get([task.remote(name, self.config, *self.blocks[name]) for name in classes]))


def _ray_put() -> Callable[[Any], Any]:
    import ray

    return ray.put


def strategy_section(
    report: Any,
    summary: dict[str, Any],
    per_image: list[dict[str, Any]],
    feed: StrategyFeed,
    *,
    examples_for: Callable[[list[str]], tuple[list[np.ndarray], list[np.ndarray]]],
    log: Any = print,
) -> dict[str, Any]:
    """Clusters, describes and reports every class; fills ``summary["strategies"]``.

    Args:
        per_image: the per-image rows (``image_id`` and, with ground truth,
            ``mass_in_mask``/``mask_area``); gains ``strategy_class`` (the class
            it was clustered in), ``strategy`` and ``strategy_flagged``.
        feed: the features of the audit's pass.
        examples_for: image ids -> (images ``(H, W, 3)`` in [0, 1], maps ``(H, W)``).

    Returns:
        The section (a report section object).
    """
    config = feed.config
    log(f"audit: strategy clusters (SpRAy) of {len(feed.blocks)} classes by {config.by} class")
    found = feed.cluster()
    by_id = {row["image_id"]: row for row in per_image}
    for row in per_image:
        row["strategy_class"] = None
        row["strategy"] = None
        row["strategy_flagged"] = False
    out: list[dict[str, Any]] = []
    for cs in found:
        out.append(_describe(cs, by_id, config))
    summary["strategies"] = out
    flagged = [(c["name"], k) for c in out for k in c["clusters"] if k["flagged"]]
    n_flagged_images = sum(k["images"] for _, k in flagged)
    title = SECTION_TITLE + (
        f": {len(flagged)} flagged cluster(s), {n_flagged_images} images" if flagged else ": nothing flagged"
    )
    s = report.section(title)
    if flagged:  # a finding only where something is flagged
        finding = (f"{len(flagged)} strategy cluster(s) flagged as possible shortcuts: "
                   + "; ".join(f"{name} cluster {k['cluster']} ({k['images']} images: {k['why'][0]})"
                               for name, k in flagged))
        if hasattr(s, "finding"):  # the report's first screen of findings, where it has one
            s.finding(finding)
        else:
            s.text(finding)
    else:
        s.text(f"No strategy cluster flagged in {len(out)} classes.")
    s.text(
        f"Each class ({'predicted' if config.by == 'predicted' else 'labelled'}) is clustered on its maps "
        f"(Lapuschkin et al. 2019): each absolute map is area-averaged to {config.resolution}x{config.resolution} "
        "cells, scaled to unit mass and square-rooted (distances are then Hellinger distances of where the "
        "saliency lies); a k-nearest-neighbour graph with locally scaled Gaussian affinities; the normalized "
        f"Laplacian's eigengap chooses up to {config.max_clusters} clusters; k-means on the spectral embedding. "
        "Cluster 0 is the class's largest. A cluster is flagged when its mass is off the object (no more than "
        f"the object's area share, or under {OFF_OBJECT_RATIO:.0%} of the rest of the class's), when half of "
        f"its extra mass over the rest of the class lies within {SPOT_AREA:.0%} of the image and it puts at "
        f"least {SPOT_RATIO:.0f}x what the class's other clusters typically (median) put there (at least {SEPARATE_SPOT_RATIO:.0f}x, and {SPOT_DENSITY:.0f}x a "
        "position-blind map's, when the cluster is separate: distinctness, one minus its conductance over what "
        f"a random set of its size would lose, at least {SEPARATE:.2f}, or its conductance for its size at most "
        f"{SEPARATE_RATIO:.0%} of the class's other clusters'), or when it is small (at most {SMALL_SHARE:.0%} "
        f"of the class) and distinct (its affinity leaving it, for its size, at most {DISTINCT_RATIO:.0%} of the "
        "other clusters'). per_image.csv has each image's strategy and strategy_flagged."
    )
    for name, k in flagged:
        ids = k["examples"]
        s.text(f"{name}, cluster {k['cluster']} ({k['images']} images, {100 * k['share']:.0f}% of the class): "
               + "; ".join(k["why"]) + ".")
        try:
            images, maps = examples_for(ids)
        except InputError as e:
            s.text(f"examples not shown ({e}).")
            continue
        s.figure(f"strategy_{_safe(name)}_{k['cluster']}",
                 plots.map_grid(maps, ids, images=images, columns=4),
                 f"{name}, flagged cluster {k['cluster']}: the {len(ids)} images nearest its centre.")
    least = max(config.min_images, 3)  # fewer make one cluster (see spray)
    small = [cls for cls in out if cls["images"] < least]
    if small:
        s.text(f"Too few images to cluster (fewer than {least}), no clusters: "
               + ", ".join(f"{cls['name']} ({cls['images']})" for cls in small) + ".")
    for cls, cs in zip(out, found, strict=True):
        if cls["images"] < least:
            continue
        s.text(f"{cls['name']}: {cls['images']} images, {len(cls['clusters'])} cluster(s) "
               f"(eigengap; kNN k={cls['neighbors']}, {'approximate' if cls['approximate'] else 'exact'}).")
        s.table([_table_row(k) for k in cls["clusters"]],
                ["cluster", "images", "share", "flagged", "why", "mass_in_object", "border_share",
                 "distinctness", "differs_from_main", "gains_most"])
        if len(cs.image_ids) >= 3:
            s.figure(f"strategies_{_safe(cls['name'])}",
                     embedding_figure(cs, [k["flagged"] for k in cls["clusters"]]),
                     f"{cls['name']}: spectral embedding coloured by cluster (flagged marked !), and each "
                     "cluster's mean map.")
    return out  # type: ignore[return-value]


def _describe(cs: ClassStrategies, by_id: dict[str, dict[str, Any]], config: StrategyConfig) -> dict[str, Any]:
    labels = cs.spray.labels
    k = cs.spray.k
    counts = np.bincount(labels, minlength=k)
    mio = np.full(k, np.nan)
    area = np.full(k, np.nan)
    have_truth = False
    for c in range(k):
        rows = [by_id.get(cs.image_ids[i], {}) for i in np.flatnonzero(labels == c)]
        scored = [r for r in rows if "mass_in_mask" in r]
        if scored and 2 * len(scored) >= len(rows):
            have_truth = True
            mio[c] = float(np.mean([r["mass_in_mask"] for r in scored]))
            area[c] = float(np.mean([r["mask_area"] for r in scored]))
    clusters = describe_clusters(
        list(cs.mean_maps), counts.tolist(), cs.spray.conductance.tolist(),
        mass_in_object=mio if have_truth else None, object_area=area if have_truth else None,
        border_width=config.border_width, class_name=cs.name,
    )
    for c, row in enumerate(clusters):
        row["examples"] = cs.examples[c]
    for image_id, c in zip(cs.image_ids, labels.tolist(), strict=True):
        if image_id in by_id:
            by_id[image_id]["strategy_class"] = cs.name
            by_id[image_id]["strategy"] = int(c)
            by_id[image_id]["strategy_flagged"] = bool(clusters[c]["flagged"])
    return {
        "name": cs.name,
        "images": len(cs.image_ids),
        "eigenvalues": cs.spray.eigenvalues.tolist(),
        "neighbors": cs.spray.neighbors,
        "approximate": cs.spray.approximate,
        "clusters": clusters,
    }


def _table_row(k: dict[str, Any]) -> dict[str, Any]:
    return {**k, "flagged": "yes" if k["flagged"] else "", "why": "; ".join(k["why"])}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)


def embedding_figure(cs: ClassStrategies, flagged: list[bool]) -> bytes:
    """Scatter of the 2-D spectral embedding by cluster, beside each cluster's mean map."""
    plt = plots._plt()
    k = cs.spray.k
    fig, axes = plt.subplots(1, k + 1, figsize=(3.4 + 1.7 * k, 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [2] + [1] * k})
    ax = axes[0, 0]
    colours = plt.get_cmap("tab10")
    e = cs.spray.embedding
    for c in range(k):
        sel = cs.spray.labels == c
        ax.scatter(e[sel, 0], e[sel, 1], s=10, color=colours(c % 10),
                   label=f"{c}{' !' if flagged[c] else ''} (n={int(sel.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{cs.name}: spectral embedding", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    for c in range(k):
        a = axes[0, c + 1]
        a.imshow(cs.mean_maps[c], cmap="inferno")
        a.axis("off")
        a.set_title(f"cluster {c}{' !' if flagged[c] else ''}", fontsize=8, color="red" if flagged[c] else "black")
    return plots._png(fig)
