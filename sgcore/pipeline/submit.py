"""Submit a command to a Ray cluster's job API, stream its logs, map its status to an exit code.

What ``python -m jobs.submit`` does once its flags are parsed. Every way of
failing to submit (dashboard unreachable, no address, token refused, bad
working dir) is one line naming the cause and the fix.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Sequence

from sgcore.pipeline.cluster import follow, job_client, runtime_env_for, submit
from sgcore.redact import redact_text

EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}
CANNOT_SUBMIT = 2
NO_STATUS = 3


def submit_and_follow(command: Sequence[str], *, address: str | None = None, working_dir: str | None = ".",
                      env: dict[str, str] | None = None, submission_id: str | None = None,
                      entrypoint_num_cpus: float | None = None, wait: bool = True,
                      timeout: float | None = None) -> int:
    """Submits ``command`` and (``wait``) follows it to its end.

    Args:
        address: the dashboard URL; it wins over ``RAY_ADDRESS`` (None: Ray's
            own lookup, ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS``).
        working_dir: directory uploaded as the job's working dir; None uploads nothing.

    Returns:
        0 the job SUCCEEDED (or was submitted, without ``wait``), 1 FAILED or
        STOPPED, 2 it could not be submitted, 3 no final status (timeout, lost
        dashboard; the job keeps running), 130 detached by Ctrl-C.
    """
    if address:
        # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit
        # address; here the flag the user typed wins (this process only).
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            os.environ.pop(var, None)
    shown = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        runtime_env = runtime_env_for(working_dir, env_vars=env or {})
    except ValueError as e:
        print(f"error: --working-dir: {e}", file=sys.stderr)
        return CANNOT_SUBMIT
    entrypoint = shlex.join(command)
    if redact_text(entrypoint) != entrypoint:
        # The job's own output is redacted, but Ray keeps the entrypoint as given.
        print("warning: the command holds credentials inside a URL; Ray keeps the command in its job "
              "table and dashboard (ray job list), out of sgcore's reach: prefer credentials from the "
              "cluster's environment", file=sys.stderr)
    try:
        client = job_client(address)
        job_id = submit(client, entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                        entrypoint_num_cpus=entrypoint_num_cpus)
    except Exception as e:
        print(f"error: {cannot_submit(e, shown)}", file=sys.stderr)
        return CANNOT_SUBMIT
    print(f"submitted {job_id}", file=sys.stderr, flush=True)
    if not wait:
        print(job_id)
        return 0
    try:
        status = follow(client, job_id, timeout_s=timeout)
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


def cannot_submit(e: Exception, address: str | None) -> str:
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
