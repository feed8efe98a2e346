"""Wall time and peak memory of the strategy clustering of one class of N synthetic maps.

    python -m tests.audit.strategy_scale 10000 [--size 64] [--share 0.1]

Maps are drawn block by block (object blobs at random places, a share with a
corner mark) and turned into features as the audit's part tasks do, so no more
than one block of maps is held at once; then one class is clustered as its
Ray task does (the worst case: every map in one class). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from sgcore.audit.strategies import StrategyConfig, cluster_class, describe_clusters, map_features


def _block(rng: np.random.Generator, n: int, size: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = (rng.uniform(0.2 * size, 0.8 * size, (2, n, 1, 1))).astype(np.float32)
    r = rng.uniform(0.1 * size, 0.17 * size, (n, 1, 1)).astype(np.float32)
    maps = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    marked = rng.random(n) < share
    m = 0.86 * size
    mark = np.exp(-((xx - m) ** 2 + (yy - m) ** 2) / (2 * (0.04 * size) ** 2))
    maps[marked] = 0.3 * maps[marked] + 3.0 * mark
    maps += 0.2 * rng.random(maps.shape, dtype=np.float32)
    return maps, marked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--block", type=int, default=2000)
    args = p.parse_args(argv)
    config = StrategyConfig()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    blocks, marked = [], []
    for s in range(0, args.n, args.block):
        maps, mk = _block(rng, min(args.block, args.n - s), args.size, args.share)
        blocks.append(([f"{s + i}" for i in range(len(maps))], map_features(maps, config.resolution).astype(np.float16)))
        marked.append(mk)
    t1 = time.perf_counter()
    cs = cluster_class("synthetic", config, blocks)
    t2 = time.perf_counter()
    rows = describe_clusters(list(cs.mean_maps), np.bincount(cs.spray.labels).tolist(), cs.spray.conductance.tolist())
    marked_all = np.concatenate(marked)
    flagged = np.isin(cs.spray.labels, [r["cluster"] for r in rows if r["flagged"]])
    hits = int((flagged & marked_all).sum())
    print(json.dumps({
        "maps": args.n, "map_size": args.size, "features_s": round(t1 - t0, 1), "cluster_s": round(t2 - t1, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "clusters": cs.spray.k, "approximate_knn": cs.spray.approximate, "neighbors": cs.spray.neighbors,
        "recall": round(hits / max(int(marked_all.sum()), 1), 3), "precision": round(hits / max(int(flagged.sum()), 1), 3),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
