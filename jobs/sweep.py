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
import json

from sgcore.cli import DEMO_OUTPUT, run_cli
from sgcore.settings import AGGREGATES, BASES, NOISES, REDUCTIONS


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", help=f"results directory to take images/model from (e.g. {DEMO_OUTPUT})")
    p.add_argument("--input", help="image folder URL (without --results), or a new root for the results' images")
    p.add_argument("--model", help="model (default: the manifest's, else demo)")
    p.add_argument("--weights", help="weights (default: the manifest's, else default)")
    p.add_argument("--report", default="outputs/sweep", help="output directory")
    p.add_argument("--images", type=int, default=4, help="how many images")
    p.add_argument("--noise-levels", type=_floats, default=None, help="comma-separated, e.g. 0,0.1,0.2,0.5")
    p.add_argument("--sample-counts", type=_ints, default=None, help="comma-separated, e.g. 1,10,50,100")
    p.add_argument("--convergence-counts", type=_ints, default=None, help="comma-separated n for the curve")
    p.add_argument("--reference-samples", type=int, default=500, help="n of the reference map")
    p.add_argument("--convergence-noise", type=float, help="noise level of the curve (default: the run's)")
    for flag, choices in (("--aggregate", AGGREGATES), ("--base", BASES), ("--noise", NOISES),
                          ("--reduction", REDUCTIONS)):
        p.add_argument(flag, choices=choices, help="SmoothGrad setting of every map (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage-options", type=json.loads, default={}, help="JSON object for fsspec; never logged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.audit import SweepConfig, run_sweep

        if args.results is None and args.input is None:
            args.results = DEMO_OUTPUT
        values = {k: v for k, v in vars(args).items() if k in SweepConfig.__dataclass_fields__ and v is not None}
        summary = run_sweep(SweepConfig(**values), log=lambda m: print(f"[sgcore] {m}", flush=True))
        print(f"[sgcore] n for Spearman >= 0.95: {summary['convergence']['n_for_spearman_0.95']}")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
