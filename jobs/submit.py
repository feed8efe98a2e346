"""Submit a job to a Ray cluster, stream its logs, exit with its status.

    python -m jobs.submit --address http://127.0.0.1:8265 -- \\
        python -m jobs.smoothgrad --input s3://bucket/images/ --output s3://bucket/maps/

The repository (minus .venv, data/, outputs/, .git) is uploaded as the job's
working dir. Token authentication: the token is read the way ``ray job``
reads it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
Exit status: 0 the job SUCCEEDED; 1 it FAILED or was STOPPED; 2 it could not be
submitted (bad arguments, dashboard unreachable, token refused: one line on
stderr says which); 3 --timeout ran out or the dashboard stopped answering while
waiting (the job keeps running).
"""

from __future__ import annotations

import argparse

from sgcore.cli import make_parser


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("python -m jobs.submit", __doc__)
    p.add_argument("--address", default=None,
                   help="dashboard URL; wins over RAY_ADDRESS (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="directory to upload (default: .)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload nothing: the cluster image already has the code")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the job (repeatable; not for secrets)")
    p.add_argument("--submission-id", default=None, help="the job's id (default: one Ray picks)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the driver command (default: none reserved)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait before giving up (default: wait until it ends)")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- command to run on the cluster")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not command:
        parser.error("give the command after --, e.g. -- python -m jobs.smoothgrad --help")
    env = dict(kv.split("=", 1) for kv in args.env if "=" in kv)
    if len(env) != len(args.env):
        parser.error(f"--env must be KEY=VALUE; got {args.env}")
    from sgcore.pipeline.submit import submit_and_follow

    return submit_and_follow(command, address=args.address, env=env,
                             working_dir=None if args.no_working_dir else args.working_dir,
                             submission_id=args.submission_id, entrypoint_num_cpus=args.entrypoint_num_cpus,
                             wait=not args.no_wait, timeout=args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
