"""A fault-injection filesystem: ``flaky://`` wraps another fsspec filesystem.

For tests of retries and error rows only. It fails a deterministic share of
paths: each chosen path fails its first ``failures`` calls of a given kind
(``cat_file``, ``pipe_file``, ``open``) in each process, then works. Because it is
configured entirely through storage options, it behaves the same inside Ray
workers (separate processes), which rebuild it from the job config::

    url_to_fs("flaky:///tmp/data", {"fail_fraction": 0.5, "failures": 2, "error": "slowdown"})

``failures=-1`` makes the chosen paths fail for ever (a permanent outage);
``until=<epoch seconds>`` makes them fail until that time, then work (an outage
of a known length, the same in every process).
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from typing import Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

ERRORS = ("timeout", "connection", "slowdown", "server", "notfound", "permission")
OPS = ("cat_file", "pipe_file", "open")


class FlakyFileSystem(AbstractFileSystem):
    """Wraps ``target_protocol`` and injects errors; see the module docstring.

    Args:
        target_protocol: the real filesystem (default: local files).
        target_options: its storage options.
        fail_fraction: share of paths that misbehave, chosen by a hash of (seed, path).
        failures: calls of one kind that fail per path and process; -1 for always.
        error: ``timeout``, ``connection``, ``slowdown`` (throttling), ``server`` (5xx),
            ``notfound`` or ``permission``.
        ops: which calls fail.
        seed: changes which paths are chosen.
        until: with it, chosen paths fail on every call until this ``time.time()``,
            then work (``failures`` is ignored).
    """

    protocol: ClassVar[tuple[str, ...]] = ("flaky",)  # type: ignore[misc]
    root_marker = "/"

    def __init__(
        self,
        *,
        target_protocol: str = "file",
        target_options: dict[str, Any] | None = None,
        fail_fraction: float = 0.5,
        failures: int = 1,
        error: str = "timeout",
        ops: tuple[str, ...] | list[str] = OPS,
        seed: int = 0,
        until: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= fail_fraction <= 1.0:
            raise ValueError(f"fail_fraction must be in [0, 1]; got {fail_fraction}")
        if error not in ERRORS:
            raise ValueError(f"error must be one of {', '.join(ERRORS)}; got {error!r}")
        bad = [op for op in ops if op not in OPS]
        if bad:
            raise ValueError(f"ops must be among {', '.join(OPS)}; got {bad}")
        self.target = fsspec.filesystem(target_protocol, **(target_options or {}))
        self.fail_fraction = float(fail_fraction)
        self.failures = int(failures)
        self.error = error
        self.ops = tuple(ops)
        self.seed = int(seed)
        self.until = None if until is None else float(until)
        self.calls: dict[tuple[str, str], int] = {}
        self.injected = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------- injection
    def chosen(self, path: str) -> bool:
        """Whether ``path`` is one of the misbehaving ones."""
        digest = hashlib.sha256(f"{self.seed}:{self._strip_protocol(path)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64 < self.fail_fraction

    def _maybe_fail(self, op: str, path: str) -> None:
        if op not in self.ops or not self.chosen(path):
            return
        with self._lock:
            n = self.calls.get((op, path), 0)
            self.calls[(op, path)] = n + 1
            if self.until is not None:
                if time.time() >= self.until:
                    return
            elif self.failures >= 0 and n >= self.failures:
                return
            self.injected += 1
        where = f"flaky://{path}"
        if self.error == "timeout":
            raise TimeoutError(f"simulated timeout on {op} {where}")
        if self.error == "connection":
            raise ConnectionResetError(errno.ECONNRESET, f"simulated connection reset on {op} {where}")
        if self.error == "slowdown":
            raise OSError(errno.EBUSY, f"SlowDown: please reduce your request rate ({op} {where})")
        if self.error == "server":
            raise OSError(errno.EREMOTEIO, f"InternalError (HTTP 500) on {op} {where}")
        if self.error == "notfound":
            raise FileNotFoundError(errno.ENOENT, f"simulated missing object {where}")
        raise PermissionError(errno.EACCES, f"simulated access denied to {where}")

    # ------------------------------------------------------------ delegation
    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any) -> bytes:
        path = self._strip_protocol(path)
        self._maybe_fail("cat_file", path)
        return self.target.cat_file(path, start=start, end=end, **kw)

    def pipe_file(self, path: str, value: bytes, **kw: Any) -> None:
        path = self._strip_protocol(path)
        self._maybe_fail("pipe_file", path)
        self.target.pipe_file(path, value, **kw)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        path = self._strip_protocol(path)
        self._maybe_fail("open", path)
        return self.target.open(path, mode, **kw)

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        out = self.target.ls(self._strip_protocol(path), detail=detail, **kw)
        return out

    def info(self, path: str, **kw: Any) -> dict[str, Any]:
        return self.target.info(self._strip_protocol(path), **kw)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.target.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mkdir(self, path: str, create_parents: bool = True, **kw: Any) -> None:
        self.target.mkdir(self._strip_protocol(path), create_parents=create_parents, **kw)

    def rm_file(self, path: str) -> None:
        self.target.rm_file(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        self.target.rm_file(self._strip_protocol(path))

    def rmdir(self, path: str) -> None:
        self.target.rmdir(self._strip_protocol(path))


def register() -> None:
    """Makes ``flaky://`` known to fsspec in this process (idempotent)."""
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


__all__ = ["ERRORS", "OPS", "FlakyFileSystem", "register"]
