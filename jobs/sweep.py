"""SmoothGrad's noise level x sample count grid and convergence curve for a few images.

    python -m jobs.sweep --results outputs/demo --report outputs/sweep
    python -m jobs.sweep --input data/demo/images --model demo --report outputs/sweep

Writes REPORT/index.html (figures in img/) and REPORT/summary.json, to pick
--noise-level and --n-samples for a dataset (Smilkov et al. 2017, Figs. 3-4).
The maps use the aggregate, base map, noise and channel reduction the results'
manifest recorded, unless flags say otherwise.
"""

from __future__ import annotations

import argparse

from sgcore.cli import (
    DEMO_OUTPUT,
    add_model_arguments,
    add_smoothgrad_arguments,
    add_storage_arguments,
    config_from_args,
    make_parser,
    run_cli,
)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("python -m jobs.sweep", __doc__)
    p.add_argument("--results", help=f"results directory to take images/model from (default: {DEMO_OUTPUT} "
                                     "when --input is not given either)")
    p.add_argument("--input", help="image folder URL (without --results), or a new root for the results' images "
                                   "(default: the results' recorded sources)")
    p.add_argument("--report", default="outputs/sweep", help="output directory")
    add_storage_arguments(p)
    add_model_arguments(p, what="the manifest's, else demo and default")
    g = p.add_argument_group("grid (cost: images x the sum of the sample counts, per noise level, plus the "
                             "reference map and the convergence curve)")
    g.add_argument("--images", type=int, default=4, help="how many images")
    g.add_argument("--noise-levels", type=_floats, help="comma-separated, e.g. 0,0.1,0.2,0.5 "
                                                        "(default: 0,0.05,0.1,0.15,0.2,0.3,0.5)")
    g.add_argument("--sample-counts", type=_ints, help="comma-separated, e.g. 1,10,50,100 (default: 1,5,10,25,50,100)")
    g.add_argument("--convergence-counts", type=_ints,
                   help="comma-separated n for the curve (default: 1,2,5,10,20,50,100)")
    g.add_argument("--reference-samples", type=int, default=500, help="n of the reference map (the costliest map)")
    g.add_argument("--convergence-noise", type=float, help="noise level of the curve (default: the run's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image choice")
    add_smoothgrad_arguments(p, only=["aggregate", "base", "noise", "reduction"],
                             title="SmoothGrad settings of every map")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.audit import SweepConfig, run_sweep

        demo = {"results": DEMO_OUTPUT} if args.results is None and args.input is None else {}
        summary = run_sweep(config_from_args(SweepConfig, args, **demo), log=lambda m: print(f"[sgcore] {m}", flush=True))
        print(f"[sgcore] n for Spearman >= 0.95: {summary['convergence']['n_for_spearman_0.95']}")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
