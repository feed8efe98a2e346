"""Recall and precision of the strategy flags on a planted shortcut, end to end in memory:
train a demo CNN on a split with the shortcut, explain a fresh split, cluster each predicted class."""

from __future__ import annotations

import numpy as np
import torch

from sgcore import reduce_channels, smoothgrad
from sgcore.audit.strategies import describe_clusters, map_features, spray
from sgcore.demo import DEMO_CLASSES, Shortcut, TrainConfig, make_split, train_demo_model
from sgcore.models import DEMO_PREPROCESS


def shortcut_recall_precision(
    shortcut: Shortcut, *, n_train: int, epochs: int, n_eval: int, eval_seed: int, n_samples: int = 10,
    resolution: int = 16,
) -> dict:
    torch.manual_seed(0)
    model = train_demo_model(TrainConfig(n_per_class=n_train, epochs=epochs, seed=11, shortcut=shortcut))
    split = make_split(n_per_class=n_eval, seed=eval_seed, shortcut=shortcut)
    x = DEMO_PREPROCESS.normalize(torch.from_numpy(split.images))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = []
    for s in range(0, len(x), 64):
        m = smoothgrad(model, x[s : s + 64], predicted[s : s + 64], n_samples=n_samples,
                       seeds=torch.arange(s, min(s + 64, len(x))))
        maps.append(reduce_channels(m).numpy())
    maps = np.concatenate(maps)
    masks = split.masks
    mass = np.abs(maps)
    mio = (mass * masks).sum((1, 2)) / np.maximum(mass.sum((1, 2)), 1e-30)
    area = masks.mean((1, 2))
    c = DEMO_CLASSES.index(shortcut.class_name)
    sel = np.flatnonzero(predicted.numpy() == c)
    result = spray(map_features(maps[sel], resolution))
    counts = np.bincount(result.labels, minlength=result.k)
    mean_maps = [(map_features(maps[sel], resolution)[result.labels == k].astype(float) ** 2).mean(0)
                 .reshape(resolution, resolution) for k in range(result.k)]
    rows = describe_clusters(
        mean_maps, counts.tolist(), result.conductance.tolist(),
        mass_in_object=[mio[sel][result.labels == k].mean() for k in range(result.k)],
        object_area=[area[sel][result.labels == k].mean() for k in range(result.k)],
    )
    flagged = np.isin(result.labels, [r["cluster"] for r in rows if r["flagged"]])
    marked = split.marked[sel]
    all_marked = int(split.marked.sum())
    hits = int((flagged & marked).sum())
    return {
        "marked": all_marked,
        "predicted_as_class": int(len(sel)),
        "recall": hits / max(all_marked, 1),
        "precision": hits / max(int(flagged.sum()), 1),
        "clusters": rows,
        "accuracy_marked": float((predicted.numpy()[split.marked] == c).mean()),
    }
