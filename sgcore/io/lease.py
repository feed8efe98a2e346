"""An exclusive, expiring, fenced claim on an output directory: ``_lease.json``.

One writer holds an output at a time (docs/design.md contracts 7 and 10). The
holder writes ``_lease.json`` (run id, host, pid, heartbeat time, time to
live, an *epoch* and a random *token*) and renews it every ``ttl / 4``
seconds; a second writer is refused with one line naming the holder. The
claim expires ``ttl`` seconds after its last heartbeat. Liveness is the
heartbeat alone: a holder whose pid is not visible here may live in another
pid namespace (containers on one host share the hostname), so its claim is
taken early only when it provably ran in this pid namespace on this boot
(both recorded in the lease) and its process is gone.

Fencing: every acquisition takes ``epoch = previous epoch + 1`` and a new
token; a release keeps the file (``released: true``) so the epoch never goes
back. Every commit into the output carries the holder's :class:`Fence`
(epoch, token) and is checked where it takes effect (:meth:`Fence.held`):

- local disks: every read-check-write of the lease, and every commit's final
  rename, runs under ``flock`` on the lease file (waits are bounded by
  ``LOCK_WAIT_S``), so a writer that lost the claim cannot make a file
  visible after the next holder took it;
- S3: conditional writes (``If-None-Match: *`` to create, ``If-Match: <ETag>``
  to renew or take over an expired claim): of two racing writers one gets
  ``412 Precondition Failed``; a commit reads the lease right before its PUT,
  and the manifest is written with ``If-Match`` on its last ETag;
- other stores (GCS, Azure, ``memory://``): write, then read back and check
  the run id; a commit checks the lease before its write.

Where a check and the write it guards are not one atomic step (object
stores), a stalled writer can still land a part after a takeover; readers,
resumes and the audit then refuse it, since its footer's fence is not the one
the manifest records (:mod:`sgcore.io.output`).
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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sgcore.errors import ConfigError
from sgcore.io._fs import is_local, join, url_to_fs
from sgcore.io._proc import pid_alive
from sgcore.io._retry import retry_call
from sgcore.io.output import LEASE_NAME, is_precondition_failed

DEFAULT_TTL_S = 120.0
# How long a lock on the lease file is waited for: a holder frozen inside its
# (millisecond) critical section must not hang every other run forever.
LOCK_WAIT_S = 10.0


def default_ttl() -> float:
    """The lease's time to live: ``SGCORE_LEASE_TTL_S`` when set (drills, fast takeovers), else 120 s."""
    raw = os.environ.get("SGCORE_LEASE_TTL_S")
    try:
        return float(raw) if raw else DEFAULT_TTL_S
    except ValueError:
        raise ConfigError(f"SGCORE_LEASE_TTL_S must be a number of seconds; got {raw!r}") from None


class OutputBusy(ConfigError):
    """Another run holds the output's lease; the message names it."""


class LeaseLost(RuntimeError):
    """Another run took the lease over (ours expired): this run commits nothing more."""


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]": unique per namespace and boot
    except OSError:
        return None


_BOOT_ID = _read_text("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, kw_only=True)
class LeaseInfo:
    """The content of ``_lease.json``."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    ttl: float
    epoch: int = 0
    token: str = ""
    released: bool = False
    pidns: str | None = None
    boot: str | None = None

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat

    def expired(self, now: float | None = None) -> bool:
        if self.released or self.age(now) > self.ttl:
            return True
        return self.same_pid_namespace() and not pid_alive(self.pid)

    def same_pid_namespace(self) -> bool:
        """Whether the holder provably ran in this pid namespace on this boot (its pid means ours)."""
        return (self.host == socket.gethostname() and self.pidns is not None and self.boot is not None
                and self.pidns == _pid_namespace() and self.boot == _BOOT_ID)

    def describe(self) -> str:
        return (f"run {self.run_id} on {self.host} (pid {self.pid}, last heartbeat "
                f"{max(self.age(), 0.0):.0f} s ago)")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LeaseInfo | None:
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError):
            return None  # an unreadable lease (half written by a dead holder) claims nothing


class _LeaseFile:
    """``_lease.json`` of one output: locked reads and (conditional) writes."""

    def __init__(self, output: str, storage_options: dict[str, Any] | None):
        self.output = output
        self.fs, path = url_to_fs(output, storage_options)
        path = path.rstrip("/")
        self.url = join(output, LEASE_NAME)
        self.path = f"{path}/{LEASE_NAME}" if path else LEASE_NAME

    @property
    def kind(self) -> str:
        fs = self.fs
        if is_local(fs):
            return "local"
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return "s3" if protocol in ("s3", "s3a") else "other"

    @contextlib.contextmanager
    def locked(self, wait: float | None = None) -> Iterator[Any]:
        """The lease file under ``flock`` (local disks; elsewhere yields None).

        Raises:
            TimeoutError: the lock stayed taken for ``wait`` seconds (default ``LOCK_WAIT_S``, read at
                the call: a frozen holder).
        """
        wait = LOCK_WAIT_S if wait is None else wait
        if self.kind != "local":
            yield None
            return
        import fcntl

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise TimeoutError(f"{self.url} stayed locked for {wait:.0f} s (its holder frozen?); "
                                           "try again") from None
                    time.sleep(0.005)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed while we waited: lock the new file
        try:
            yield fd
        finally:
            os.close(fd)  # closing drops the lock

    def read(self, handle: Any) -> tuple[LeaseInfo | None, Any]:
        """(the lease, its ETag on S3)."""
        if handle is not None:
            os.lseek(handle, 0, os.SEEK_SET)
            raw = b""
            while chunk := os.read(handle, 1 << 16):
                raw += chunk
            return (LeaseInfo.from_json(raw) if raw else None), None
        fs = self.fs
        try:
            if self.kind == "s3":
                etag = retry_call(lambda: fs.info(self.path, refresh=True)["ETag"], what=f"read {self.url}")
                raw = retry_call(lambda: fs.cat_file(self.path), what=f"read {self.url}")
                return LeaseInfo.from_json(raw), etag
            return LeaseInfo.from_json(retry_call(lambda: fs.cat_file(self.path), what=f"read {self.url}")), None
        except FileNotFoundError:
            return None, None

    def write(self, handle: Any, info: LeaseInfo, etag: Any) -> bool:
        """Writes ``info``; False when a conditional write lost a race."""
        data = info.to_json()
        if handle is not None:
            os.lseek(handle, 0, os.SEEK_SET)
            os.ftruncate(handle, 0)
            os.write(handle, data)
            os.fsync(handle)
            return True
        fs = self.fs
        if self.kind == "s3":
            retry_call(lambda: fs.makedirs(os.path.dirname(self.path), exist_ok=True), what=f"write {self.url}")
            try:
                if etag is None:
                    retry_call(lambda: fs.pipe_file(self.path, data, mode="create"), what=f"write {self.url}")
                else:
                    retry_call(lambda: fs.pipe_file(self.path, data, IfMatch=etag), what=f"write {self.url}")
            except (OSError, ValueError) as e:
                if is_precondition_failed(e):
                    return False
                raise
            fs.invalidate_cache(self.path)
            return True
        retry_call(lambda: fs.makedirs(os.path.dirname(self.path), exist_ok=True), what=f"write {self.url}")
        retry_call(lambda: fs.pipe_file(self.path, data), what=f"write {self.url}")
        back = LeaseInfo.from_json(retry_call(lambda: fs.cat_file(self.path), what=f"read {self.url}"))
        return back is not None and back.run_id == info.run_id and back.token == info.token

    def remove(self, handle: Any) -> None:
        if handle is not None:
            os.ftruncate(handle, 0)
            os.remove(self.path)  # a waiter sees another inode and opens the path again
            return
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm_file(self.path), what=f"remove {self.url}")


@dataclass(frozen=True, kw_only=True)
class Fence:
    """What a commit carries and checks: the holder's lease epoch and token (picklable).

    The driver hands it to every replica; :meth:`held` wraps the step that makes
    a file visible, :meth:`stamp` goes into the part's footer, the manifest and
    ``_SUCCESS``.
    """

    output: str
    epoch: int
    token: str
    run_id: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def stamp(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "token": self.token}

    def matches(self, info: LeaseInfo | None) -> bool:
        return info is not None and not info.released and info.epoch == self.epoch and info.token == self.token

    def lost(self, info: LeaseInfo | None) -> LeaseLost:
        holder = "nobody (the claim was removed)" if info is None else (
            f"{info.describe()}, epoch {info.epoch}{', released' if info.released else ''}")
        return LeaseLost(f"run {self.run_id} (lease epoch {self.epoch}) lost its claim on {self.output}: "
                         f"now {holder}")

    def check(self) -> None:
        """Raises :class:`LeaseLost` unless the lease is still ours."""
        with self.held():
            pass

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Runs the block while the lease is ours: under the lease file's lock on local disks.

        Raises:
            LeaseLost: another run holds (or released) the output now.
            TimeoutError: the lock stayed taken past ``LOCK_WAIT_S``.
        """
        lf = _LeaseFile(self.output, self.storage_options)
        with lf.locked() as handle:
            cur, _ = lf.read(handle)
            if not self.matches(cur):
                raise self.lost(cur)
            yield


class Lease:
    """The claim of one run on one output directory.

    Usage::

        with Lease(url, storage_options) as lease:   # OutputBusy if held
            ...                                      # heartbeats in a thread
            lease.check()                            # LeaseLost if taken over
            lease.fence                              # what every commit carries
    """

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None, *,
                 run_id: str | None = None, ttl: float | None = None, interval: float | None = None):
        ttl = default_ttl() if ttl is None else ttl
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds; got {ttl}")
        self.output = output
        self.storage_options = dict(storage_options or {})
        self._file = _LeaseFile(output, storage_options)
        self.fs = self._file.fs
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.token = uuid.uuid4().hex
        self.epoch = 0
        self.ttl = float(ttl)
        self.interval = interval if interval is not None else self.ttl / 4
        self.url = self._file.url
        self._path = self._file.path
        self._started = time.time()
        self._lost: str | None = None
        self._missing = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- public
    @property
    def fence(self) -> Fence:
        """This run's fence (valid once acquired)."""
        return Fence(output=self.output, epoch=self.epoch, token=self.token, run_id=self.run_id,
                     storage_options=self.storage_options)

    def acquire(self) -> None:
        """Takes the claim (free, released, expired, or already ours) at the next epoch.

        Raises:
            OutputBusy: another live run holds it, naming that run.
        """
        try:
            held = self._swap(lambda cur: cur is None or self._ours(cur) or cur.expired(), take=True)
        except TimeoutError as e:
            # The lock's holder hangs inside its critical section (frozen, a stalled disk).
            held = self._peek()
            if held is not None and held.expired() and self._file.kind == "local":
                held = self._steal(held)  # and its heartbeat stopped long ago: take the claim over
            elif held is None:
                raise OutputBusy(f"cannot claim {self.output}: {e}") from None
        if held is not None:
            raise OutputBusy(
                f"{self.output} is being written by {held.describe()}; wait for it to finish or "
                f"use another --output (a claim expires {held.ttl:.0f} s after its last heartbeat)"
            )

    def renew(self) -> None:
        """Refreshes the heartbeat; marks the lease lost when another run holds it."""
        held = self._swap(lambda cur: cur is not None and self._ours(cur) and not cur.released)
        if held is not None:
            self._lost = str(self.fence.lost(held))
            return
        # Absent or unreadable twice in a row (not a writer caught mid-write): removed.
        self._missing = self._missing + 1 if self.read() is None else 0
        if self._lost is None and self._missing >= 2:
            self._lost = f"the claim on {self.output} ({self.url}) was removed"

    def check(self) -> None:
        """Raises LeaseLost when the claim was taken over (heartbeats stopped too long)."""
        if self._lost is not None:
            raise LeaseLost(self._lost)

    def release(self, *, remove: bool = False) -> None:
        """Stops the heartbeat and marks the lease released if it is still ours.

        The file stays (``released: true``), so that the next holder's epoch is
        higher than every earlier one; ``remove`` deletes it instead (an output
        this run created and leaves empty).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._file.locked() as handle:
            cur, etag = self._file.read(handle)
            if cur is None or not self._ours(cur):
                return
            if remove:
                self._file.remove(handle)
            else:
                self._file.write(handle, replace(cur, released=True, heartbeat=time.time()), etag)

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="sgcore-lease", daemon=True)
        self._thread.start()

    def read(self) -> LeaseInfo | None:
        """The live or expired claim on the output; None when it is free (absent or released)."""
        try:
            with self._file.locked() as handle:
                cur = self._file.read(handle)[0]
        except TimeoutError:
            cur = self._peek()
        return None if cur is None or cur.released else cur

    def _steal(self, cur: LeaseInfo) -> LeaseInfo | None:
        """Takes an expired claim whose lock a frozen holder keeps: a new lease file (a new inode).

        The frozen process holds the lock of the old file; whatever it writes
        there when it thaws is invisible, and its next check (which opens the
        path again) finds this claim. Returns the holder when another run stole
        it at the same time and won.
        """
        from sgcore.io.output import temp_path

        self.epoch = cur.epoch + 1
        tmp = temp_path(self._path)
        with open(tmp, "wb") as f:
            f.write(self._info().to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        with self._file.locked() as handle:
            back = self._file.read(handle)[0]
        return None if back is not None and self._ours(back) else back

    def _peek(self) -> LeaseInfo | None:
        """The lease as it reads without the lock (only to name a holder that hangs while holding it)."""
        if self._file.kind != "local":
            return self._file.read(None)[0]
        try:
            fd = os.open(self._file.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return self._file.read(fd)[0]
        finally:
            os.close(fd)

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -------------------------------------------------------------- internal
    def _ours(self, cur: LeaseInfo) -> bool:
        return cur.run_id == self.run_id and cur.token == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again; expiry is ttl away
                pass

    def _info(self) -> LeaseInfo:
        return LeaseInfo(run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(),
                         started=self._started, heartbeat=time.time(), ttl=self.ttl, epoch=self.epoch,
                         token=self.token, pidns=_pid_namespace(), boot=_BOOT_ID)

    def _swap(self, may_write: Any, *, take: bool = False) -> LeaseInfo | None:
        """Writes our lease if ``may_write(current)``; returns the current holder otherwise.

        ``take``: an acquisition, at the epoch after the current one (unless the claim is ours).
        """
        for _ in range(5):
            with self._file.locked() as handle:
                cur, etag = self._file.read(handle)
                if not may_write(cur):
                    return cur
                if take and not (cur is not None and self._ours(cur)):
                    self.epoch = (cur.epoch if cur is not None else 0) + 1
                if self._file.write(handle, self._info(), etag):
                    return None
            # A conditional write lost a race: look again.
        cur = self.read()
        return cur if cur is not None and not self._ours(cur) else None


__all__ = ["DEFAULT_TTL_S", "Fence", "Lease", "LeaseInfo", "LeaseLost", "OutputBusy", "default_ttl",
           "is_precondition_failed"]
