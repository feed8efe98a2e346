"""Fault injection for resilience tests and drills (``JobConfig.inject_faults``, ``--inject-faults``).

A comma-separated list of ``<fault>:<marker>[@<attempt>]``. Before an actor
processes a shard it checks whether any image id of the shard contains
``marker``; if so (and the attempt matches, when given):

- ``exit:crash-me@0``  the actor process dies abruptly (``os._exit``) on the
  shard's first attempt, as if killed by the OOM killer or a spot reclaim;
- ``raise:poison``     processing the shard raises, on every attempt.

Off unless the job's config asks for it: nothing is read from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

KINDS = ("exit", "raise")


class InjectedFault(RuntimeError):
    """Raised by a ``raise:`` fault."""


def parse_faults(spec: str) -> list[tuple[str, str, int | None]]:
    """``(kind, marker, attempt or None)`` per item of ``spec``; ValueError names a bad item."""
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition(":")
        marker, _, at = where.partition("@")
        if kind not in KINDS or not marker or (at and not at.isdigit()):
            raise ValueError(f"inject_faults items must be exit:<marker>[@<attempt>] or raise:<marker>[@<attempt>]; "
                             f"got {item!r}")
        faults.append((kind, marker, int(at) if at else None))
    return faults


def _exit() -> None:
    os._exit(137)


def maybe_inject(spec: str, image_ids: Iterable[str], attempt: int, *, on_exit: Callable[[], None] = _exit) -> None:
    """Injects the faults of ``spec`` whose marker is in one of ``image_ids``.

    ``on_exit`` ends the replica for an ``exit:`` fault (the in-process backend ends its
    replica object, not the process).
    """
    ids = list(image_ids)
    for kind, marker, at in parse_faults(spec):
        if not any(marker in i for i in ids) or (at is not None and at != attempt):
            continue
        if kind == "exit":
            on_exit()
            return
        raise InjectedFault(f"injected fault ({kind}:{marker}{'' if at is None else f'@{at}'}) on attempt {attempt}")
