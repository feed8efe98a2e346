"""Whether a process id names a live process: the one rule the lease and the actors share."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process in this pid namespace.

    A zombie (exited, not yet reaped by its parent) is dead: it runs no code,
    renews no lease and commits nothing. Someone else's process (``EPERM``)
    is alive. Where ``/proc`` cannot be read the answer is the signal's alone.
    The pid means something only in the pid namespace it was taken in; callers
    check that first (``LeaseInfo.same_pid_namespace``, the actor's node id).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists, it may still be a zombie
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
