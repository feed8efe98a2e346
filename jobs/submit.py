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
import os
import re
import shlex
import sys

from sgcore.cli import make_parser
from sgcore.pipeline.cluster import follow, job_client, runtime_env_for, submit

EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}
CANNOT_SUBMIT = 2
NO_STATUS = 3


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
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- command to run on the cluster")  # positional: no default
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
    if args.address:
        # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit
        # address; here the flag the user typed wins (this process only).
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            os.environ.pop(var, None)
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        runtime_env = runtime_env_for(None if args.no_working_dir else args.working_dir, env_vars=env)
    except ValueError as e:
        print(f"error: --working-dir: {e}", file=sys.stderr)
        return CANNOT_SUBMIT
    try:
        client = job_client(args.address)
        job_id = submit(client, shlex.join(command), runtime_env=runtime_env,
                        submission_id=args.submission_id,
                        entrypoint_num_cpus=args.entrypoint_num_cpus)
    except Exception as e:
        print(f"error: {_cannot_submit(e, address)}", file=sys.stderr)
        return CANNOT_SUBMIT
    print(f"submitted {job_id}", file=sys.stderr, flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        status = follow(client, job_id, timeout_s=args.timeout)
    except TimeoutError as e:
        print(f"{e}; it keeps running (ray job stop {job_id})", file=sys.stderr)
        return NO_STATUS
    except ConnectionError as e:
        print(f"lost the Ray dashboard while waiting ({_first_line(e)}); job {job_id} may still be "
              f"running (ray job status {job_id})", file=sys.stderr)
        return NO_STATUS
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (ray job stop {job_id})", file=sys.stderr)
        return 130
    print(f"job {job_id} {status}", file=sys.stderr)
    return EXIT[status]


def _cannot_submit(e: Exception, address: str | None) -> str:
    """One line saying why the job could not be submitted, and the fix."""
    where = f"the Ray dashboard at {address}" if address else "the Ray dashboard"
    if type(e).__name__ == "AuthenticationError":  # ray.exceptions; matched by name, no import
        return (f"{where} rejected the token ({_first_line(getattr(e, 'message', e))}): set "
                "RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head) or "
                "RAY_AUTH_TOKEN_PATH")
    if isinstance(e, ConnectionError):
        if not address:
            found = _first_line(e).split(". ")[0].rstrip(".")  # "Could not find any running Ray instance"
            return f"no --address and no RAY_ADDRESS ({found}): pass --address http://<head>:8265"
        return f"cannot reach {where}{_os_reason(e)}; check --address and that the cluster is up"
    return f"could not submit to {where}: {type(e).__name__}: {_first_line(e)}"


def _os_reason(e: BaseException) -> str:
    """' (Errno 111 Connection refused)' from the HTTP error under Ray's ConnectionError, if any."""
    cause = e.__cause__ or e.__context__
    found = re.search(r"\[Errno (-?\d+)\] ([^'\")\]]+)", str(cause or e))
    return f" ([Errno {found.group(1)}] {found.group(2).strip()})" if found else ""


def _first_line(e: object) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
