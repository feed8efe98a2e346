"""Submit a job to a Ray cluster, stream its logs, exit with its status.

    python -m jobs.submit --address http://127.0.0.1:8265 -- \\
        python -m jobs.smoothgrad --input s3://bucket/images/ --output s3://bucket/maps/

The repository (minus .venv, data/, outputs/, .git) is uploaded as the job's
working dir. Token authentication: the token is read the way ``ray job``
reads it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
Exit status: 0 SUCCEEDED, 1 FAILED, 2 STOPPED, 3 timed out.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from sgcore.pipeline.cluster import follow, job_client, runtime_env_for, submit

EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None,
                   help="dashboard URL (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS, as `ray job`)")
    p.add_argument("--working-dir", default=".", help="directory to upload (default: .)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload nothing: the cluster image already has the code")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the job (repeatable; not for secrets)")
    p.add_argument("--submission-id", default=None)
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait before giving up")
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
    client = job_client(args.address)
    runtime_env = runtime_env_for(None if args.no_working_dir else args.working_dir, env_vars=env)
    job_id = submit(client, shlex.join(command), runtime_env=runtime_env,
                    submission_id=args.submission_id,
                    entrypoint_num_cpus=args.entrypoint_num_cpus)
    print(f"submitted {job_id}", file=sys.stderr, flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        status = follow(client, job_id, timeout_s=args.timeout)
    except TimeoutError as e:
        print(f"{e}; it keeps running (ray job stop {job_id})", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (ray job stop {job_id})", file=sys.stderr)
        return 130
    print(f"job {job_id} {status}", file=sys.stderr)
    return EXIT[status]


if __name__ == "__main__":
    raise SystemExit(main())
