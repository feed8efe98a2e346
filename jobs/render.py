"""Draw a results directory's maps as overlay PNGs or one contact sheet.

    python -m jobs.render --results outputs/demo --out overlays/ --limit 8 --sheet
    python -m jobs.render --results s3://bucket/maps --out overlays/ --ids cat/1.jpg --view gray

Views: heat (the map over the photo in dimmed grey, a colour bar, the model's centre
crop outlined), gray (the authors' view: |map| clipped at its 99th percentile) and
diverging (signed maps of --reduction sum, blue-white-red).
"""

from __future__ import annotations

import argparse
import json

from sgcore.cli import DEMO_OUTPUT, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=DEMO_OUTPUT, help="results directory (the job's --output) (default: %(default)s)")
    p.add_argument("--out", default="outputs/overlays", help="folder for the PNGs (default: %(default)s)")
    p.add_argument("--ids", nargs="+", metavar="IMAGE_ID", help="images to draw (default: the first --limit ok rows)")
    p.add_argument("--limit", type=int, default=16, help="ok rows drawn when no --ids are given (default: %(default)s)")
    p.add_argument("--view", choices=("heat", "gray", "diverging"), default="heat", help="rendering (default: %(default)s)")
    p.add_argument("--sheet", action="store_true", help="one contact sheet (sheet.VIEW.png) instead of one PNG each")
    p.add_argument("--columns", type=int, default=4, help="columns of the contact sheet (default: %(default)s)")
    p.add_argument("--storage-options", type=json.loads, default={}, help="JSON object for fsspec; never logged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.render import write_overlays

        written = write_overlays(args.results, args.out, image_ids=args.ids, limit=args.limit, view=args.view,
                                 sheet=args.sheet, columns=args.columns, storage_options=args.storage_options)
        print(f"[sgcore] wrote {len(written)} PNG(s) to {args.out}", flush=True)
        return 0

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
