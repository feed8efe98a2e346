"""SmoothGrad maps for every image of a dataset.

    python -m jobs.smoothgrad --input s3://bucket/images --output s3://bucket/maps
    python -m jobs.smoothgrad            # the embedded demo, end to end, offline
"""

from __future__ import annotations

import argparse
import sys

from sgcore.cli import (
    DEMO_DATA,
    DEMO_OUTPUT,
    DEMO_SHARD_SIZE,
    add_job_arguments,
    config_from_args,
    make_parser,
    run_cli,
)
from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m jobs.smoothgrad", __doc__)
    add_job_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def job() -> int:
        from sgcore.pipeline import JobFailed, run_job

        if args.input is None and args.output is None:
            from sgcore.demo import ensure_demo_data

            print(f"[sgcore] demo: dataset under {DEMO_DATA}/ (generated on the first run), results in {DEMO_OUTPUT}/")
            # smaller shards than the default, so that progress shows on 240 images
            shard_size = DEMO_SHARD_SIZE if args.shard_size == parser.get_default("shard_size") else args.shard_size
            config = config_from_args(JobConfig, args, input=str(ensure_demo_data(DEMO_DATA)), output=DEMO_OUTPUT,
                                      shard_size=shard_size)
        elif args.input is None or args.output is None:
            raise ConfigError("--input and --output go together (omit both to run the demo)")
        else:
            config = config_from_args(JobConfig, args)
        try:
            result = run_job(config)
        except JobFailed as e:
            print(f"error: {redact_text(str(e))}", file=sys.stderr)
            return 1
        print(f"[sgcore] done: {result.summary()}")
        if not result.success:
            noun = "shard" if result.shards_failed == 1 else "shards"
            print(f"[sgcore] {result.shards_failed} {noun} failed: {', '.join(result.failed_shards)}",
                  file=sys.stderr)
            return 1
        return 0

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
