"""Audit the SmoothGrad maps of a results directory and write an HTML report.

    python -m jobs.audit --results s3://bucket/maps --report audit/
    python -m jobs.audit                  # audits outputs/demo (after python -m jobs.smoothgrad)

Writes REPORT/index.html (figures beside it, in img/) and REPORT/summary.json:
per-class statistics, localization against object masks (or --boxes), the cascading
randomization sanity check, deletion/insertion faithfulness, and with
--compare a ranking of how much the maps changed between two runs.
"""

from __future__ import annotations

import argparse

from sgcore.cli import (
    DEMO_OUTPUT,
    add_model_arguments,
    add_ray_arguments,
    add_smoothgrad_arguments,
    add_storage_arguments,
    config_from_args,
    make_parser,
    run_cli,
)


def build_parser() -> argparse.ArgumentParser:
    from sgcore.audit.config import CASCADES, QUICK, default_of

    def default(name: str) -> str:  # the config's default, said in the help; the flag itself defaults to None
        return f"(default: {default_of(name)}" + (f"; --quick: {QUICK[name]})" if name in QUICK else ")")

    p = make_parser("python -m jobs.audit", __doc__)
    p.add_argument("--results", default=DEMO_OUTPUT, help="results directory (the job's --output)")
    p.add_argument("--report", default="outputs/audit", help="output directory of the report")
    p.add_argument("--input", help="re-read images from INPUT/<image_id> (default: their recorded source)")
    p.add_argument("--allow-partial", action="store_true", help="audit results without _SUCCESS")
    add_storage_arguments(p)
    add_model_arguments(p)
    add_smoothgrad_arguments(p, only=["n_samples"], title="maps recomputed by the sanity and faithfulness checks")

    c = p.add_argument_group("checks (the sanity and faithfulness checks are the costly part: they recompute "
                             "maps on the actor pool)")
    c.add_argument("--no-sanity", dest="sanity", action="store_false",
                   help="skip the cascading randomization sanity check (the costliest: (weight layers + 1) "
                        "x n-samples forward and backward passes per sample image)")
    c.add_argument("--no-faithfulness", dest="faithfulness", action="store_false",
                   help="skip the deletion/insertion faithfulness curves (costly: about 4 x (steps + 1) "
                        "forward passes per sample image, by saliency and at random)")
    c.add_argument("--road-pic", action=argparse.BooleanOptionalAction,
                   help="with faithfulness, ROAD and PIC too (costly on a CPU: PIC rebuilds each image by "
                        f"interpolation at 15 thresholds) {default('road_pic')}")
    c.add_argument("--literature", action=argparse.BooleanOptionalAction,
                   help="also compare gradient, guided backprop, SmoothGrad, SmoothGrad^2 and VarGrad: a "
                        "randomization cascade by block per method and their deletion/insertion and ROAD "
                        "scores, with a blurred-map control (costly: (blocks + 1) x (n-samples + 2) passes "
                        f"per sample image) {default('literature')}")
    c.add_argument("--no-localization", dest="localization", action="store_false",
                   help="skip the saliency-inside-the-object scores (cheap: reads the stored maps and masks)")
    c.add_argument("--sample", type=int, help=f"images for the sanity and faithfulness checks {default('sample')}")
    c.add_argument("--steps", type=int, help=f"points per deletion/insertion curve {default('steps')}")
    c.add_argument("--cascade", choices=CASCADES,
                   help="what the sanity check randomizes per step: each weight layer, or each block (stage: "
                        "timm's blocks.N, torchvision's layerN) of the network; auto: blocks for deep networks "
                        f"{default('cascade')}")
    c.add_argument("--seed", type=int,
                   help=f"seed of the image sample and of the randomized weights {default('seed')}")
    c.add_argument("--examples", type=int, help=f"most/least concentrated examples per class {default('examples')}")
    c.add_argument("--masks", help="object masks at MASKS/<image_id> (default: a masks/ folder beside images/)")
    c.add_argument("--boxes", metavar="FILE",
                   help="object boxes instead of masks: CSV or Parquet (any fsspec URL) with columns image_id, "
                        "x0, y0, x1, y1 in original image pixels; several rows per image are their union "
                        "(default: masks)")
    c.add_argument("--pointing-tolerance", type=int,
                   help=f"pixels of slack in the pointing game {default('pointing_tolerance')}")
    c.add_argument("--quick", action="store_true",
                   help="a cheap first look: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " where not given, in this process unless --num-actors or --address is given")
    c.add_argument("--chunk-size", type=int,
                   help=f"images per work item of the heavy checks (the unit of retry and resume) {default('chunk_size')}")
    c.add_argument("--max-retries", type=int,
                   help=f"attempts after the first for a chunk whose replica died {default('max_retries')}")
    c.add_argument("--compare", metavar="URL2",
                   help="second results directory to compare maps with (default: no comparison)")
    c.add_argument("--compare-margin", type=float,
                   help="with --compare, a map changed significantly when its Spearman with the other run's falls "
                        f"this far below what the two maps' own Monte Carlo noise allows {default('compare_margin')}")
    c.add_argument("--reliability-threshold", type=float,
                   help="maps whose estimated reliability (Spearman with their converged map) is below this are "
                        "counted as unreliable, and the report says which figures rest on them "
                        f"{default('reliability_threshold')}")
    g = p.add_argument_group("strategies (SpRAy clusters per class; cheap: reads the stored maps)")
    g.add_argument("--no-strategies", dest="strategies", action="store_false",
                   help="skip the strategy clusters (SpRAy) per class")
    g.add_argument("--strategy-by", choices=("predicted", "label"),
                   help=f"cluster the maps of each predicted class or of each label {default('strategy_by')}")
    g.add_argument("--max-strategies", type=int,
                   help=f"most strategy clusters per class; the eigengap chooses within {default('max_strategies')}")
    g.add_argument("--strategy-resolution", type=int,
                   help=f"maps are area-averaged to NxN cells before clustering {default('strategy_resolution')}")
    add_ray_arguments(p, gpus_per_actor=default_of("gpus_per_actor"),
                      num_actors_help="replicas (default: as many as the cluster fits, one CPU kept for decoding; 0: in this process, no Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.audit import AuditConfig, run_audit

        summary = run_audit(config_from_args(AuditConfig, args), log=lambda m: print(f"[sgcore] {m}", flush=True))
        print(f"[sgcore] {headline(summary)}", flush=True)
        return 0

    return run_cli(job)


def headline(summary: dict) -> str:
    """One line of the figures that matter, for the console; the rest is in the report."""
    images = summary["images"]
    parts = [f"audited {images['ok']} of {images.get('rows', images['ok'])} images"
             + (f" ({images['errors']} error rows: see the report)" if images.get("errors") else "")]
    if sanity := summary.get("sanity"):
        parts.append(f"sanity: spearman_abs {sanity[0]['spearman_abs']:.2f} ({sanity[0]['layer']} randomized) "
                     f"-> {sanity[-1]['spearman_abs']:.2f} (fully randomized)")
    if (loc := summary.get("localization")) and "mass_in_mask" in loc:
        what = loc.get("ground_truth", "masks")  # masks, or boxes with --boxes
        parts.append(f"saliency inside the {what} {loc['mass_in_mask']:.2f} vs their area {loc['mask_area']:.2f}")
    if f := summary.get("faithfulness"):
        parts.append(f"deletion AUC {f['deletion_auc']:.2f} vs {f['deletion_auc_random']:.2f} random, "
                     f"insertion {f['insertion_auc']:.2f} vs {f['insertion_auc_random']:.2f}")
    if rel := summary.get("reliability"):
        parts.append(f"{rel['below']} of {rel['images']} maps below reliability {rel['threshold']:g} "
                     f"(median {rel['quantiles']['p50']:.2f})")
    if (cmp := summary.get("compare")) and cmp.get("judged"):
        parts.append(f"compare: {cmp['significant']} of {cmp['judged']} maps changed beyond Monte Carlo noise")
    if (strategies := summary.get("strategies")) is not None:
        flagged = [f"{c['name']} #{k['cluster']} ({k['images']})" for c in strategies for k in c["clusters"] if k["flagged"]]
        parts.append(f"flagged strategies: {', '.join(flagged)}" if flagged else "no strategy flagged")
    return " | ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
