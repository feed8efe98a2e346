"""Fault injection for resilience tests and drills (``SGCORE_INJECT_FAULTS``).

A comma-separated list of ``<fault>:<marker>[@<attempt>]``. Before an actor
processes a shard it checks whether any image id of the shard contains
``marker``; if so (and the attempt matches, when given):

- ``exit:crash-me@0``  the actor process dies abruptly (``os._exit``) on the
  shard's first attempt, as if killed by the OOM killer or a spot reclaim;
- ``raise:poison``     processing the shard raises, on every attempt.

Off unless the variable is set in the workers' environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

ENV = "SGCORE_INJECT_FAULTS"


class InjectedFault(RuntimeError):
    """Raised by a ``raise:`` fault."""


def maybe_inject(image_ids: Iterable[str], attempt: int) -> None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    ids = list(image_ids)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition(":")
        marker, _, at = where.partition("@")
        if not any(marker in i for i in ids) or (at and int(at) != attempt):
            continue
        if kind == "exit":
            os._exit(137)
        if kind == "raise":
            raise InjectedFault(f"injected fault ({item}) on attempt {attempt}")
