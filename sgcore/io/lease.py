"""An exclusive, expiring claim on an output directory: ``_lease.json``.

One writer holds an output at a time (DESIGN.md contract 7). The holder
writes ``_lease.json`` (run id, host, pid, heartbeat time, time to live) and
renews it every ``ttl / 4`` seconds; a second writer is refused with one line
naming the holder. The claim expires ``ttl`` seconds after its last
heartbeat, or at once when its holder ran on this host and its process is
gone (a killed job is resumed without waiting).

How exclusive it is depends on the store:

- local disks: every read-check-write of the lease runs under ``flock`` on
  the lease file, so two jobs on one machine (or on a POSIX-locking NFS)
  cannot both take it;
- S3: conditional writes (``If-None-Match: *`` to create, ``If-Match: <ETag>``
  to renew or take over an expired claim): of two racing writers one gets
  ``412 Precondition Failed`` and is refused;
- other stores (GCS, Azure, ``memory://``): write, then read back and check
  the run id; a race in the same few milliseconds could let both start, and
  the commit-time check of each part's config hash against the manifest's is
  what then keeps a second config out of the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sgcore.errors import ConfigError
from sgcore.io._fs import is_local, join, url_to_fs
from sgcore.io._retry import retry_call
from sgcore.io.output import LEASE_NAME

DEFAULT_TTL_S = 120.0


class OutputBusy(ConfigError):
    """Another run holds the output's lease; the message names it."""


class LeaseLost(RuntimeError):
    """Another run took the lease over (ours expired); stop committing."""


@dataclass(frozen=True, kw_only=True)
class LeaseInfo:
    """The content of ``_lease.json``."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    ttl: float

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat

    def expired(self, now: float | None = None) -> bool:
        if self.age(now) > self.ttl:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
        return (f"run {self.run_id} on {self.host} (pid {self.pid}, last heartbeat "
                f"{max(self.age(), 0.0):.0f} s ago)")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LeaseInfo | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None  # an unreadable lease (half written by a dead holder) claims nothing


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Lease:
    """The claim of one run on one output directory.

    Usage::

        with Lease(url, storage_options) as lease:   # OutputBusy if held
            ...                                      # heartbeats in a thread
            lease.check()                            # LeaseLost if taken over
    """

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None, *,
                 run_id: str | None = None, ttl: float = DEFAULT_TTL_S, interval: float | None = None):
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds; got {ttl}")
        self.output = output
        self.fs, path = url_to_fs(output, storage_options)
        path = path.rstrip("/")
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.ttl = float(ttl)
        self.interval = interval if interval is not None else self.ttl / 4
        self.url = join(output, LEASE_NAME)
        self._path = f"{path}/{LEASE_NAME}" if path else LEASE_NAME
        self._started = time.time()
        self._token: Any = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- public
    def acquire(self) -> None:
        """Takes the claim (free, expired, or already ours).

        Raises:
            OutputBusy: another live run holds it, naming that run.
        """
        held = self._swap(lambda cur: cur is None or cur.run_id == self.run_id or cur.expired())
        if held is not None:
            raise OutputBusy(
                f"{self.output} is being written by {held.describe()}; wait for it to finish or "
                f"use another --output (a claim expires {held.ttl:.0f} s after its last heartbeat, "
                f"at once when its process on {held.host} is gone)"
            )

    def renew(self) -> None:
        """Refreshes the heartbeat; marks the lease lost when another run holds it."""
        held = self._swap(lambda cur: cur is not None and cur.run_id == self.run_id)
        if held is not None:
            self._lost = f"another run took over {self.output}: {held.describe()}"
        elif self._lost is None and self.read() is None:
            self._lost = f"the claim on {self.output} ({self.url}) was removed"

    def check(self) -> None:
        """Raises LeaseLost when the claim was taken over (heartbeats stopped too long)."""
        if self._lost is not None:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        """Stops the heartbeat and removes the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._locked() as handle:
            cur, _ = self._read(handle)
            if cur is not None and cur.run_id == self.run_id:
                self._remove(handle)

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="sgcore-lease", daemon=True)
        self._thread.start()

    def read(self) -> LeaseInfo | None:
        with self._locked() as handle:
            return self._read(handle)[0]

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -------------------------------------------------------------- internal
    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again; expiry is ttl away
                pass

    def _info(self) -> LeaseInfo:
        return LeaseInfo(run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(),
                         started=self._started, heartbeat=time.time(), ttl=self.ttl)

    def _swap(self, may_write: Any) -> LeaseInfo | None:
        """Writes our lease if ``may_write(current)``; returns the current holder otherwise."""
        for _ in range(5):
            with self._locked() as handle:
                cur, token = self._read(handle)
                if not may_write(cur):
                    return cur
                if self._write(handle, self._info(), token):
                    return None
            # A conditional write lost a race: look again.
        cur = self.read()
        return cur if cur is not None and cur.run_id != self.run_id else None

    # Store access: local files under flock, S3 with conditional PUTs, the rest best effort.
    @property
    def _kind(self) -> str:
        fs = self.fs
        if is_local(fs):
            return "local"
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return "s3" if protocol in ("s3", "s3a") else "other"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        if self._kind != "local":
            yield None
            return
        import fcntl

        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        while True:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self._path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # released and unlinked while we waited: lock the new file
        try:
            yield fd
        finally:
            os.close(fd)  # closing drops the lock

    def _read(self, handle: Any) -> tuple[LeaseInfo | None, Any]:
        if handle is not None:
            os.lseek(handle, 0, os.SEEK_SET)
            raw = b""
            while chunk := os.read(handle, 1 << 16):
                raw += chunk
            return (LeaseInfo.from_json(raw) if raw else None), None
        fs = self.fs
        try:
            if self._kind == "s3":
                etag = retry_call(lambda: fs.info(self._path, refresh=True)["ETag"], what=f"read {self.url}")
                raw = retry_call(lambda: fs.cat_file(self._path), what=f"read {self.url}")
                return LeaseInfo.from_json(raw), etag
            return LeaseInfo.from_json(retry_call(lambda: fs.cat_file(self._path), what=f"read {self.url}")), None
        except FileNotFoundError:
            return None, None

    def _write(self, handle: Any, info: LeaseInfo, token: Any) -> bool:
        data = info.to_json()
        if handle is not None:
            os.lseek(handle, 0, os.SEEK_SET)
            os.ftruncate(handle, 0)
            os.write(handle, data)
            os.fsync(handle)
            return True
        fs = self.fs
        if self._kind == "s3":
            retry_call(lambda: fs.makedirs(os.path.dirname(self._path), exist_ok=True), what=f"write {self.url}")
            try:
                if token is None:
                    retry_call(lambda: fs.pipe_file(self._path, data, mode="create"), what=f"write {self.url}")
                else:
                    retry_call(lambda: fs.pipe_file(self._path, data, IfMatch=token), what=f"write {self.url}")
            except (OSError, ValueError) as e:
                if "Precondition" in str(e) or "412" in str(e) or isinstance(e, FileExistsError):
                    return False
                raise
            fs.invalidate_cache(self._path)
            return True
        retry_call(lambda: fs.makedirs(os.path.dirname(self._path), exist_ok=True), what=f"write {self.url}")
        retry_call(lambda: fs.pipe_file(self._path, data), what=f"write {self.url}")
        back = LeaseInfo.from_json(retry_call(lambda: fs.cat_file(self._path), what=f"read {self.url}"))
        return back is not None and back.run_id == info.run_id

    def _remove(self, handle: Any) -> None:
        if handle is not None:
            os.ftruncate(handle, 0)
            os.remove(self._path)  # a waiter sees another inode and opens the path again
            return
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm_file(self._path), what=f"remove {self.url}")


__all__ = ["DEFAULT_TTL_S", "Lease", "LeaseInfo", "LeaseLost", "OutputBusy"]
