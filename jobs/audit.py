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
import json

from sgcore.cli import DEMO_OUTPUT, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=DEMO_OUTPUT, help="results directory (the job's --output)")
    p.add_argument("--report", default="outputs/audit", help="output directory of the report")
    p.add_argument("--model", help="override the manifest's model")
    p.add_argument("--weights", help="override the manifest's weights")
    p.add_argument("--input", help="re-read images from INPUT/<image_id> instead of their recorded source")
    p.add_argument("--masks", help="object masks at MASKS/<image_id> (default: a masks/ folder beside images/)")
    p.add_argument("--boxes", metavar="FILE",
                   help="object boxes instead of masks: CSV or Parquet (any fsspec URL) with columns image_id, "
                        "x0, y0, x1, y1 in original image pixels; several rows per image are their union")
    p.add_argument("--compare", metavar="URL2", help="second results directory to compare maps with")
    p.add_argument("--sample", type=int, default=64, help="images for the sanity and faithfulness checks")
    p.add_argument("--n-samples", type=int, help="SmoothGrad samples when recomputing maps (default: the run's)")
    p.add_argument("--steps", type=int, default=32, help="points per deletion/insertion curve")
    p.add_argument("--examples", type=int, default=3, help="most/least concentrated examples per class")
    p.add_argument("--pointing-tolerance", type=int, default=0, help="pixels of slack in the pointing game")
    p.add_argument("--no-sanity", dest="sanity", action="store_false")
    p.add_argument("--no-faithfulness", dest="faithfulness", action="store_false")
    p.add_argument("--no-localization", dest="localization", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-actors", type=int, help="Ray actors (default: one per CPU; 0: in this process, no Ray)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor; > 0 recomputes maps on CUDA (also with --num-actors 0), 0 on the CPU")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a fresh local Ray; "
                                     "'auto' joins the cluster of `ray start`)")
    p.add_argument("--allow-partial", action="store_true", help="audit results without _SUCCESS")
    p.add_argument("--storage-options", type=json.loads, default={}, help="JSON object for fsspec; never logged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.audit import AuditConfig, run_audit

        config = AuditConfig(**{k: v for k, v in vars(args).items() if k in AuditConfig.__dataclass_fields__})
        summary = run_audit(config, log=lambda m: print(f"[sgcore] {m}", flush=True))
        print(f"[sgcore] {headline(summary)}", flush=True)
        return 0

    return run_cli(job)


def headline(summary: dict) -> str:
    """One line of the figures that matter, for the console; the rest is in the report."""
    parts = [f"audited {summary['images']['ok']} images"]
    if sanity := summary.get("sanity"):
        parts.append(f"sanity: spearman_abs {sanity[0]['spearman_abs']:.2f} ({sanity[0]['layer']} randomized) "
                     f"-> {sanity[-1]['spearman_abs']:.2f} (fully randomized)")
    if (loc := summary.get("localization")) and "mass_in_mask" in loc:
        what = loc.get("ground_truth", "masks")  # masks, or boxes with --boxes
        parts.append(f"saliency inside the {what} {loc['mass_in_mask']:.2f} vs their area {loc['mask_area']:.2f}")
    if f := summary.get("faithfulness"):
        parts.append(f"deletion AUC {f['deletion_auc']:.2f} vs {f['deletion_auc_random']:.2f} random, "
                     f"insertion {f['insertion_auc']:.2f} vs {f['insertion_auc_random']:.2f}")
    return " | ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
