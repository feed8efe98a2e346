"""The audit against the literature on the real model: the tables of the README, reproduced.

EfficientNet-Lite0 with its ImageNet weights (``sgcore[real]``) on the bundled
photographs (:data:`sgcore.demo.photos.PHOTOS`) at 224 px, each explained for
its predicted class:

- ``cascade``: Adebayo et al.'s randomization cascade by block for the
  gradient, SmoothGrad and guided backprop (:func:`sgcore.audit.literature.method_cascade`);
- ``removal``: deletion/insertion and ROAD for SmoothGrad², VarGrad,
  SmoothGrad, the gradient and the blurred-SmoothGrad control
  (:func:`sgcore.audit.literature.removal_scores`).

Run::

    python -m sgcore.bench.literature cascade --photos chelsea,coffee,rocket,astronaut --n-samples 8
    python -m sgcore.bench.literature removal --photos chelsea,coffee,rocket,astronaut --n-samples 16

It prints Markdown tables. On a 2-core CPU the first takes about 20 minutes,
the second about 20 (ROAD's imputation is most of it).
"""

from __future__ import annotations

import argparse
import io
import time

import torch

SPEC = "py:sgcore.models.zoo.efficientnet_lite0:build"


def _inputs(names: list[str], preprocess) -> torch.Tensor:  # noqa: ANN001 - a Preprocess
    from PIL import Image

    from sgcore.demo.photos import PHOTOS
    from sgcore.io import decode_image

    batch = []
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(PHOTOS[name][0]()).save(buf, format="PNG")
        crop, _ = decode_image(buf.getvalue(), **preprocess.decode_kwargs())
        batch.append(preprocess.normalize(torch.from_numpy(crop)[None]))
    return torch.cat(batch)


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sgcore.attribution import prepare_model
    from sgcore.audit import literature as lit
    from sgcore.demo.photos import PHOTOS
    from sgcore.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("cascade", "removal"))
    p.add_argument("--photos", default="chelsea,coffee,rocket,astronaut",
                   help=f"comma-separated, from {', '.join(PHOTOS)}")
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=16, help="points per deletion/insertion curve minus one")
    args = p.parse_args(argv)
    names = [n for n in args.photos.split(",") if n]
    loaded = load_model(SPEC)
    model = loaded.model.eval()
    x = _inputs(names, loaded.preprocess)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print("photos: " + ", ".join(f"{n} -> {loaded.categories[t]}" for n, t in zip(names, targets.tolist(),
                                                                                  strict=True)))
    seeds = torch.arange(len(names), dtype=torch.int64) + 7
    t0 = time.perf_counter()

    def prepare(m: torch.nn.Module) -> torch.nn.Module:
        return prepare_model(m, example=x[:1], quiet=True)

    if args.what == "cascade":
        r = lit.method_cascade(model, x, targets, n_samples=args.n_samples, seeds=seeds, prepare=prepare,
                               on_step=lambda d, t: print(f"  map set {d}/{t} {time.perf_counter() - t0:.0f} s",
                                                          flush=True))
        print(_table(r.rows(), ["randomized_down_to", *r.spearman]))
        print("ordering (mean Spearman over the cascade, most decorrelated first): "
              + ", ".join(f"{k} {v:.3f}" for k, v in r.ordering()))
    else:
        net = prepare(model)
        maps = lit.method_maps(net, x, targets, methods=lit.REMOVAL_METHODS, n_samples=args.n_samples, seeds=seeds)
        sigma = lit.default_blur_sigma(*x.shape[2:])
        maps[lit.BLURRED] = lit.blur_maps(maps["smoothgrad"], sigma)
        rows = lit.removal_rows(lit.removal_scores(net, x, targets, maps, steps=args.steps))
        print(_table(rows, ["method", "deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_gap"]))
        print(f"({lit.BLURRED}: SmoothGrad blurred, sigma {sigma:g} px; ranks: "
              + "; ".join(f"{m}: " + ", ".join(r["method"] for r in sorted(rows, key=lambda r: r[f"rank_{m}"]))
                          for m in ("deletion_auc", "insertion_auc", "road_gap")) + ")")
    print(f"{len(names)} photos, n = {args.n_samples}, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
