"""The output directory: its names, atomic commits, committed parts, clearing, the manifest.

Everything that reads or writes a job's ``--output`` goes through here. The
layout (docs/design.md contract 5) under the output URL::

    part-<shard>.parquet     one per input shard; its footer (key PART_METADATA_KEY) holds
                             config_hash, status ("committed" or "failed"), content, shard,
                             rows, ok, errors
    maps/part-<shard>.npz    only with --format npz: the maps, keyed by the rows' map_key
    _manifest.json           a Manifest (schema below)
    _lease.json              the claim of the run writing now, or released (sgcore.io.lease)
    _SUCCESS                 written last, only when every shard is committed: the run's fence
    .<name>.tmp-<hex>        a local commit in progress (TEMP_GLOB)

Every name that is not data starts with ``_`` or ``.``, so pyarrow, pandas,
polars, DuckDB and Ray Data skip it in a directory read. Object stores commit
with one PUT; local disks write a ``.``-prefixed temporary file and rename it,
so a reader never sees half a part, and the next run removes what a writer
killed mid-commit left (:meth:`OutputDir.remove_temp_files`, under the lease).

A part is *committed* for a config when its footer carries that config hash,
its counts and the status ``committed``, and (when both are known) the content
identity of its input files matches the listing's: a resume skips exactly
those (:meth:`OutputDir.committed_parts`). A ``failed`` part holds error rows
for a shard that failed every attempt and is redone by the next run.

The manifest (``_manifest.json``; :class:`Manifest`, JSON with sorted keys)
describes the whole output and every invocation that wrote to it:

- ``status``: ``running``, ``complete`` (every shard committed), ``failed``
  (some shard failed every attempt; they are listed in ``failed_shards``) or
  ``stopped`` (the run raised, e.g. ``--max-error-rate``, or was stopped by
  SIGTERM or Ctrl-C: the run's ``stopped_by`` names the signal).
- ``config`` (``JobConfig.public_dict()``: no storage options, which may hold
  secrets; every URL in the manifest has its credentials redacted, see
  :mod:`sgcore.redact`), ``config_hash``, ``preprocess`` (``Preprocess.to_dict()``) and
  ``model`` (the model's source and the sha256 of its files, sidecar included, and under
  ``labels`` that of the ``--labels`` table): what made the maps.
- ``created``, ``sgcore_version``, ``versions``, ``git_revision``: of the run
  that created the output; ``finished``: when the latest run ended (absent
  while the first run is under way).
- ``plan``: ``shards``, ``images`` and ``fingerprint`` (a hash of which images
  go in which shard).
- ``shards``: one :class:`ShardEntry` per shard: ``images``, ``first`` (its
  first member) and ``status`` (``pending``, ``running``, ``committed``,
  ``failed``); once run: ``attempts``, ``failures``, ``rows``/``ok``/``errors``,
  ``seconds``, ``node``/``pid``/``device``, ``finished`` and ``run`` (1-based
  index into ``runs``) as recorded by the run that wrote its part; a resume
  keeps them for the shards it skips. A key the run did not record is absent.
  The commit of its part (:data:`COMMIT_KEYS`): ``epoch`` and ``token`` (the
  writer's lease fence, also in the part's footer), ``size``, ``sha256``,
  ``stamp`` (local ``mtime_ns`` or the object's ETag) and ``content`` (the
  input identity, as in the footer): readers and resumes count a part only
  when its footer's fence is this one; a resume takes a part whose listed size
  and stamp are the recorded ones from this record, without reading it.
- ``epoch``, ``token``: the fence of the run that wrote the manifest (each run
  entry holds its own too); ``_SUCCESS`` holds the same, as JSON.
- ``runs``: one :class:`RunEntry` per invocation that reached the plan,
  appended across resumes of the same config (``--overwrite`` starts a new
  list): ``started``, ``finished``, ``status``, ``seconds``, ``shards`` (run by
  it), ``shards_skipped``, ``shards_failed``, ``failed_shards``,
  ``rows``/``ok``/``errors`` (written by it), ``actors`` (peak pool size),
  ``actors_lost``, ``driver_max_rss_mb``, ``worker_max_rss_mb``,
  ``git_revision``, ``versions``; ``gpus_per_actor`` and
  ``gpus_per_actor_requested`` when it started replicas, ``stopped_by`` when a
  signal stopped it.
- ``failed_shards`` and ``totals`` (:class:`Totals`) are derived from the
  above whenever the manifest is written (and ignored when it is read):
  ``rows``/``ok``/``errors`` over all parts, ``shards``, ``shards_committed``,
  ``shards_failed``; and over all runs: ``runs``, ``seconds`` (summed),
  ``actors`` (largest pool), ``actors_lost`` (summed),
  ``driver_max_rss_mb``/``worker_max_rss_mb`` (peaks).

``Manifest.from_json(m.to_json()) == m``, and a manifest this module wrote
reads back to the same bytes; a key it does not know is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import platform
import posixpath
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from importlib import metadata as _metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from sgcore.io._fs import is_local, join, read_bytes, url_to_fs
from sgcore.io._retry import RetryPolicy, retry_call
from sgcore.redact import redact_value

if TYPE_CHECKING:
    from fsspec.spec import AbstractFileSystem

    from sgcore.io import ShardSpec

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
LEASE_NAME = "_lease.json"
MAPS_DIR = "maps"
# Metadata key in each part's Parquet footer: config hash, status, counts.
PART_METADATA_KEY = b"sgcore"
# A part's footer status: processed (skipped on resume), or error rows of a
# shard that failed every attempt (redone on resume).
PART_STATUSES = ("committed", "failed")
# What the manifest records of each part's commit: the writer's fence and the bytes.
# ``content``: the identity of the shard's input files it was made from (also in the footer).
COMMIT_KEYS = ("epoch", "token", "size", "sha256", "stamp", "content")
# Footers read at once by a resume, for the parts its manifest does not record.
FOOTER_READERS = 16
_PART_PREFIX, _PART_SUFFIX, _NPZ_SUFFIX = "part-", ".parquet", ".npz"
PART_GLOB = f"{_PART_PREFIX}*{_PART_SUFFIX}"
NPZ_GLOB = f"{MAPS_DIR}/{_PART_PREFIX}*{_NPZ_SUFFIX}"
# A local commit's temporary file: "." first, so that every Parquet reader skips it.
TEMP_GLOB = ".*.tmp-*"
_PACKAGES = ("sgcore", "torch", "torchvision", "ray", "pyarrow", "fsspec", "s3fs", "numpy", "pillow")


# --------------------------------------------------------------------------- names


def part_name(shard_id: str) -> str:
    """Deterministic file name of a shard's rows: a retry overwrites it."""
    return f"{_PART_PREFIX}{shard_id}{_PART_SUFFIX}"


def shard_of(name: str) -> str | None:
    """The shard id of a part's name or URL (``.../part-<shard>.parquet``), None for another file."""
    base = posixpath.basename(name)
    if base.startswith(_PART_PREFIX) and base.endswith(_PART_SUFFIX):
        return base[len(_PART_PREFIX):-len(_PART_SUFFIX)]
    return None


def npz_name(shard_id: str) -> str:
    """The shard's maps with ``--format npz``, relative to the output."""
    return f"{MAPS_DIR}/{_PART_PREFIX}{shard_id}{_NPZ_SUFFIX}"


def part_url(output: str, shard_id: str) -> str:
    return join(output, part_name(shard_id))


def npz_url(output: str, shard_id: str) -> str:
    return join(output, npz_name(shard_id))


def temp_path(path: str) -> str:
    """``dir/.name.tmp-<uuid>`` for the final ``dir/name``: hidden from every Parquet reader."""
    parent, name = posixpath.split(path)
    return posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")


def is_temp(name: str) -> bool:
    """Whether ``name`` (a path or a base name) is a commit's temporary file."""
    base = posixpath.basename(name)
    return base.startswith(".") and ".tmp-" in base


# --------------------------------------------------------------------------- commits


def write_bytes(
    url: str,
    data: bytes,
    storage_options: dict[str, Any] | None = None,
    *,
    policy: RetryPolicy | None = None,
    fence: Any = None,
) -> str | None:
    """Writes ``data`` to ``url`` atomically (temp + rename locally, one PUT remotely).

    Transient errors (timeouts, 5xx, throttling) are retried with backoff
    (:mod:`sgcore.io._retry`); a permanent one fails at once.

    Args:
        fence: the writer's :class:`sgcore.io.lease.Fence`: the file becomes
            visible only while the writer holds the output's lease (locally the
            rename runs under the lease file's lock; elsewhere the lease is
            checked right before each PUT).

    Returns:
        With a ``fence``, the file's stamp as a listing shows it (local
        ``mtime_ns``, the object's ETag), else None.

    Raises:
        OSError: naming ``url``, after the retries (its subclasses kept:
            ``PermissionError`` for refused credentials, ...).
        LeaseLost: with a ``fence``, the writer lost the output; nothing was written.
    """
    fs, path = url_to_fs(url, storage_options)
    parent = posixpath.dirname(path)
    held = fence.held if fence is not None else contextlib.nullcontext

    def once() -> str | None:
        if is_local(fs):
            os.makedirs(parent, exist_ok=True)
            tmp = temp_path(path)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                stamp = str(os.stat(tmp).st_mtime_ns)  # a rename keeps it
                with held():
                    os.replace(tmp, path)
                return stamp
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with held():
            fs.pipe_file(path, data)
        if fence is None:
            return None
        with contextlib.suppress(OSError, KeyError):
            return _etag(fs.info(path, refresh=True))
        return None

    try:
        return retry_call(once, what=f"write {url}", policy=policy)
    except OSError as e:
        if str(e).startswith(f"write {url}:"):  # retry_call's message names it already
            raise
        try:
            named = type(e)(f"cannot write {url}: {e}")
        except Exception:  # an OSError subclass with its own constructor
            named = OSError(f"cannot write {url}: {e}")
        raise named from e


def _etag(info: Mapping[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


def is_precondition_failed(e: BaseException) -> bool:
    """Whether a conditional write was refused (S3 412, or fsspec's ``mode="create"`` on an existing key)."""
    return isinstance(e, FileExistsError) or "Precondition" in str(e) or "412" in str(e)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fence_of(meta: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """(epoch, token) recorded in a footer, a shard entry or ``_SUCCESS``; None when unfenced."""
    if not meta or not meta.get("token"):
        return None
    return int(meta.get("epoch") or 0), str(meta["token"])


def _record_holds(entry: Any, record: Mapping[str, Any], listed: tuple[int | None, str | None],
                  content: str | None, fences: set[tuple[int, str]]) -> bool:
    """Whether a manifest's commit record vouches for the listed part without reading it.

    It must be a committed shard's record, by a run the manifest lists, of the
    same size and stamp as the listing shows (a later write changes the stamp:
    the ETag of other bytes, a new ``mtime_ns``), and of the same input
    content as the plan's (when both are known; else the footer decides).
    """
    size, stamp = listed
    return (entry.status == "committed" and entry.rows is not None and fence_of(record) in fences
            and size is not None and size == record.get("size")
            and bool(stamp) and stamp == record.get("stamp")
            and (not content or record.get("content") == content))


def part_footer(shard_id: str, *, config_hash: str, status: str, content: str | None, rows: int, ok: int,
                fence: Any = None) -> dict[str, Any]:
    """A part's footer (key :data:`PART_METADATA_KEY`): the one schema this module reads back.

    ``config_hash`` (what decides the rows), ``status`` (one of :data:`PART_STATUSES`),
    ``content`` (the shard's input identity), the counts ``shard``, ``rows``, ``ok`` and
    ``errors``, and with a lease ``fence`` (:class:`sgcore.io.lease.Fence`) its ``epoch``
    and ``token``: :meth:`OutputDir.committed_parts` counts a part by these.

    Raises:
        ValueError: ``status`` is not one of :data:`PART_STATUSES`.
    """
    if status not in PART_STATUSES:
        raise ValueError(f"status must be one of {', '.join(PART_STATUSES)}; got {status!r}")
    return {"config_hash": config_hash, "status": status, "content": content,
            "shard": shard_id, "rows": rows, "ok": ok, "errors": rows - ok,
            **(fence.stamp() if fence is not None else {})}


def commit_record(footer: Mapping[str, Any], part: bytes, stamp: str | None) -> dict[str, Any]:
    """What the manifest keeps of a part just written (:data:`COMMIT_KEYS`): the footer's
    fence and ``content``, the part's size and sha256, and ``stamp``, what ``write_bytes`` returned."""
    return {"epoch": footer.get("epoch"), "token": footer.get("token"), "size": len(part),
            "sha256": sha256_hex(part), "stamp": stamp, "content": footer.get("content")}


def read_part_metadata(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The sgcore footer of a part, or None when it is absent/unreadable."""
    fs, path = url_to_fs(url, storage_options)

    def read() -> dict[bytes, bytes]:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f).metadata or {}

    try:
        meta = retry_call(read, what=f"read {url}")
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(PART_METADATA_KEY)
    return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- the manifest


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """The sgcore checkout's commit, when it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class _Record:
    """JSON for a dataclass: its fields, less the ``_OPTIONAL`` ones that are None."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                if not (f.name in self._OPTIONAL and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, what: str) -> Any:
        return _build(cls, data, what)


def _build(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """``cls(**data)``, refusing what is not a JSON object, an unknown key or a missing one."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object; got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as e:  # a required key is missing
        raise ValueError(f"{what}: {e}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(kw_only=True)
class ShardEntry(_Record):
    """One shard in the manifest; what a run recorded of it (None: not recorded, absent in JSON)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"attempts", "failures", "rows", "ok", "errors", "seconds", "run", "node", "pid", "device", "finished",
         "epoch", "token", "size", "sha256", "stamp", "content"})

    images: int
    first: str
    status: str = "pending"
    attempts: int | None = None
    failures: list[str] | None = None
    rows: int | None = None
    ok: int | None = None
    errors: int | None = None
    seconds: float | None = None
    run: int | None = None
    node: str | None = None
    pid: int | None = None
    device: str | None = None
    finished: float | None = None
    # The commit of its part: the writer's fence, and the bytes as written.
    epoch: int | None = None
    token: str | None = None
    size: int | None = None
    sha256: str | None = None
    stamp: str | None = None
    content: str | None = None

    def record_commit(self, commit: Mapping[str, Any] | None) -> None:
        """Takes a part's commit record (``write_part``'s: epoch, token, size, sha256, stamp)."""
        for key in COMMIT_KEYS:
            setattr(self, key, (commit or {}).get(key))

    def commit(self) -> dict[str, Any] | None:
        """The commit record, or None when the run that wrote the part recorded none."""
        return {k: getattr(self, k) for k in COMMIT_KEYS} if self.token else None

    def add_failure(self, reason: str) -> None:
        self.failures = [*(self.failures or []), reason[:500]]


@dataclass(kw_only=True)
class RunEntry(_Record):
    """One invocation that wrote to the output; completed when it ends."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"gpus_per_actor", "gpus_per_actor_requested", "stopped_by", "epoch", "token"})

    started: str
    finished: str | None = None
    status: str = "running"
    seconds: float | None = None
    shards: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    failed_shards: list[str] = field(default_factory=list)
    rows: int = 0
    ok: int = 0
    errors: int = 0
    actors: int = 0
    actors_lost: int = 0
    driver_max_rss_mb: float | None = None
    worker_max_rss_mb: float | None = None
    git_revision: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    gpus_per_actor: float | None = None
    gpus_per_actor_requested: float | None = None
    stopped_by: str | None = None
    epoch: int | None = None
    token: str | None = None

    @classmethod
    def begin(cls, started: str, *, shards: int, skipped: int, fence: Any = None) -> RunEntry:
        """This invocation's entry, with the code it runs (git revision, package versions).

        ``fence``: the run's lease fence; its epoch and token identify what the run commits.
        """
        stamp = fence.stamp() if fence is not None else {}
        return cls(started=started, shards=shards, shards_skipped=skipped, git_revision=git_revision(),
                   versions=package_versions(), epoch=stamp.get("epoch"), token=stamp.get("token"))


@dataclass(frozen=True, kw_only=True)
class Totals(_Record):
    """The whole output: counts over every part, work over every run."""

    rows: int
    ok: int
    errors: int
    shards: int
    shards_committed: int
    shards_failed: int
    runs: int
    seconds: float
    actors: int
    actors_lost: int
    driver_max_rss_mb: float
    worker_max_rss_mb: float


@dataclass(kw_only=True)
class Plan(_Record):
    """The shard plan the output was written for."""

    shards: int
    images: int
    fingerprint: str


@dataclass(kw_only=True)
class Manifest(_Record):
    """``_manifest.json`` as a value; the module docstring is its schema."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"finished", "epoch", "token"})
    _DERIVED: ClassVar[tuple[str, ...]] = ("failed_shards", "totals")

    config: dict[str, Any]
    config_hash: str
    preprocess: dict[str, Any]
    plan: Plan
    model: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    created: str = field(default_factory=now)
    finished: str | None = None
    sgcore_version: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    git_revision: str | None = None
    shards: dict[str, ShardEntry] = field(default_factory=dict)
    runs: list[RunEntry] = field(default_factory=list)
    epoch: int | None = None
    token: str | None = None

    @property
    def fenced(self) -> bool:
        """Whether the manifest was written under a fenced lease (older ones were not)."""
        return bool(self.token)

    def run_fences(self) -> set[tuple[int, str]]:
        """The (epoch, token) of every run this manifest lists: who may have committed its parts."""
        return {f for r in self.runs if (f := fence_of(r.to_dict())) is not None}

    @classmethod
    def begin(cls, *, config: dict[str, Any], config_hash: str, preprocess: dict[str, Any],
              model: dict[str, Any], fingerprint: str, shards: Sequence[ShardSpec],
              committed: Mapping[str, Mapping[str, Any]], previous: Manifest | None,
              run: RunEntry) -> Manifest:
        """The manifest of a run: ``run`` appended to ``previous``'s runs (same config, a resume).

        Args:
            shards: the plan; a shard in ``committed`` (id -> its part's footer)
                keeps what ``previous`` recorded of it, with the footer's counts;
                every other shard starts ``pending``.
            previous: the output's manifest of this config, or None (a new output,
                another config, ``--overwrite``).
        """
        old_shards = previous.shards if previous is not None else {}
        entries: dict[str, ShardEntry] = {}
        for s in shards:
            entry = ShardEntry(images=s.size, first=s.members[0])
            if s.shard_id in committed:
                footer = committed[s.shard_id]
                kept = old_shards.get(s.shard_id) or entry
                entry = replace(kept, images=s.size, first=s.members[0], status="committed",
                                rows=footer["rows"], ok=footer["ok"], errors=footer["errors"])
                if "commit" in footer:
                    entry.record_commit(footer["commit"])
            entries[s.shard_id] = entry
        plan = Plan(shards=len(shards), images=sum(s.size for s in shards), fingerprint=fingerprint)
        if previous is None:  # the output starts here, with this run's code
            return cls(config=config, config_hash=config_hash, preprocess=preprocess, model=model,
                       plan=plan, sgcore_version=run.versions.get("sgcore"), created=run.started,
                       versions=dict(run.versions), git_revision=run.git_revision, shards=entries,
                       runs=[run], epoch=run.epoch, token=run.token)
        return cls(config=config, config_hash=config_hash, preprocess=preprocess, model=model, plan=plan,
                   sgcore_version=previous.sgcore_version, created=previous.created,
                   versions=dict(previous.versions), git_revision=previous.git_revision, shards=entries,
                   runs=[*previous.runs, run], epoch=run.epoch, token=run.token)

    @property
    def failed_shards(self) -> list[str]:
        return sorted(sid for sid, e in self.shards.items() if e.status == "failed")

    def totals(self) -> Totals:
        """The whole output: counts over every part, work over every run."""
        done = [e for e in self.shards.values() if e.status in PART_STATUSES]
        runs = self.runs

        def peak(key: str) -> float:
            return max((getattr(r, key) or 0.0 for r in runs), default=0.0)

        return Totals(
            rows=sum(e.rows or 0 for e in done),
            ok=sum(e.ok or 0 for e in done),
            errors=sum(e.errors or 0 for e in done),
            shards=len(self.shards),
            shards_committed=sum(e.status == "committed" for e in done),
            shards_failed=sum(e.status == "failed" for e in done),
            runs=len(runs),
            seconds=round(sum(r.seconds or 0.0 for r in runs), 2),
            actors=max((r.actors or 0 for r in runs), default=0),
            actors_lost=sum(r.actors_lost or 0 for r in runs),
            driver_max_rss_mb=peak("driver_max_rss_mb"),
            worker_max_rss_mb=peak("worker_max_rss_mb"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["failed_shards"] = self.failed_shards
        out["totals"] = self.totals().to_dict()
        return out

    def to_json(self) -> bytes:
        # Every URL, message and name in it with credentials redacted: the manifest is shared.
        return json.dumps(redact_value(self.to_dict()), indent=2, sort_keys=True, default=str).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, what: str = MANIFEST_NAME) -> Manifest:
        """Parses a manifest; ``failed_shards`` and ``totals`` are derived, not read.

        Raises:
            ValueError: a key missing, unknown or of the wrong shape, naming ``what``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{what} must be a JSON object; got {type(data).__name__}")
        plain = {k: v for k, v in data.items() if k not in cls._DERIVED}
        try:
            plain["plan"] = Plan.from_dict(plain["plan"], what=f"{what}: plan")
            plain["shards"] = {sid: ShardEntry.from_dict(e, what=f"{what}: shard {sid}")
                               for sid, e in (plain.get("shards") or {}).items()}
            plain["runs"] = [RunEntry.from_dict(r, what=f"{what}: run {i + 1}")
                             for i, r in enumerate(plain.get("runs") or [])]
        except KeyError as e:
            raise ValueError(f"{what} has no {e.args[0]!r}; is it an sgcore manifest?") from None
        except AttributeError as e:
            raise ValueError(f"{what} is not an sgcore manifest: {e}") from None
        return _build(cls, plain, what)

    @classmethod
    def from_json(cls, data: bytes | str, *, what: str = MANIFEST_NAME) -> Manifest:
        """Parses ``_manifest.json`` (``what`` names it in errors).

        Raises:
            ValueError: not JSON, or not a manifest.
        """
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} is not valid JSON: {e}") from e
        return cls.from_dict(parsed, what=what)


# --------------------------------------------------------------------------- the directory


class OutputDir:
    """One output directory (any fsspec URL): its files are found, read and removed here."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._manifest_etag: str | None = None  # S3: of the manifest as this object last read or wrote it

    @cached_property
    def _fs_path(self) -> tuple[AbstractFileSystem, str]:
        fs, path = url_to_fs(self.url, self.storage_options)
        return fs, path.rstrip("/")

    @property
    def fs(self) -> AbstractFileSystem:
        return self._fs_path[0]

    @property
    def path(self) -> str:
        """The directory's path on :attr:`fs`, without a trailing ``/``."""
        return self._fs_path[1]

    def url_of(self, name: str) -> str:
        return join(self.url, name)

    def path_of(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    def _glob(self, pattern: str) -> list[str]:
        try:
            return sorted(self.fs.glob(self.path_of(pattern)))
        except (FileNotFoundError, OSError):
            return []

    # ------------------------------------------------------------------ what is there

    def is_local_file(self) -> bool:
        """Whether the URL names an existing local file (on object stores a key and a prefix coexist)."""
        return is_local(self.fs) and self.fs.isfile(self.path)

    def part_paths(self) -> list[str]:
        """Paths on :attr:`fs` of the ``part-*.parquet`` files, sorted (temporary files never match)."""
        return self._glob(PART_GLOB)

    def part_urls(self) -> list[str]:
        """URLs of the ``part-*.parquet`` files, sorted."""
        return [self.url_of(posixpath.basename(p)) for p in self.part_paths()]

    def npz_paths(self) -> list[str]:
        """Paths on :attr:`fs` of the ``maps/part-*.npz`` files, sorted."""
        return self._glob(NPZ_GLOB)

    def has_parts(self) -> bool:
        """Whether any result part is there (a manifest alone protects nothing)."""
        return bool(self.part_paths())

    def has_success(self) -> bool:
        return bool(self.fs.exists(self.path_of(SUCCESS_NAME)))

    def read_success(self) -> bytes | None:
        """``_SUCCESS``'s content (the fence of the run that completed the output), None when absent."""
        try:
            return read_bytes(self.fs, self.path_of(SUCCESS_NAME), url=self.url_of(SUCCESS_NAME))
        except FileNotFoundError:
            return None

    def success_matches(self, manifest: Manifest) -> bool:
        """Whether ``_SUCCESS`` marks ``manifest`` complete: written by the run that wrote it.

        A manifest written before fenced commits (no token) takes any ``_SUCCESS``.
        """
        raw = self.read_success()
        if raw is None:
            return False
        if not manifest.fenced:
            return True
        try:
            mark = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return False
        return (isinstance(mark, dict) and manifest.status == "complete"
                and fence_of(mark) == (manifest.epoch or 0, manifest.token))

    def part_listing(self) -> dict[str, tuple[int | None, str | None]]:
        """Part name -> (size, stamp) from one listing: local ``mtime_ns``, an object's ETag."""
        found: dict[str, tuple[int | None, str | None]] = {}
        if is_local(self.fs):
            try:
                with os.scandir(self.path or ".") as entries:
                    for e in entries:
                        if fnmatch.fnmatchcase(e.name, PART_GLOB) and e.is_file():
                            st = e.stat()
                            found[e.name] = (st.st_size, str(st.st_mtime_ns))
            except (FileNotFoundError, NotADirectoryError):
                pass
            return found
        if (parallel := self._s3_part_listing()) is not None:
            return parallel
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)
        try:
            infos = retry_call(lambda: self.fs.ls(self.path, detail=True), what=f"list {self.url}")
        except (FileNotFoundError, OSError):
            return found
        for info in infos:
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            if fnmatch.fnmatchcase(name, PART_GLOB) and info.get("type") != "directory":
                found[name] = (info.get("size"), _etag(info))
        return found

    def _s3_part_listing(self) -> dict[str, tuple[int | None, str | None]] | None:
        """On S3, the keys ``<output>/part-*`` listed as key ranges in parallel (:func:`sgcore.io._tree.list_s3`).

        None where that does not apply (another store, a versioned bucket, no part, an error):
        the caller lists the folder with ``fs.ls``.
        """
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        if not protocols & {"s3", "s3a"}:
            return None
        from sgcore.io._tree import list_s3

        folder = self.path.strip("/")
        table = list_s3(self.fs, folder, name=lambda p: p[len(folder) + 1:],
                        stamp=lambda info: f"{info.get('size')}:{_etag(info) or ''}", shown=self.url,
                        key_prefix=_PART_PREFIX)
        if table is None:
            return None
        found: dict[str, tuple[int | None, str | None]] = {}
        for name, stamp in zip(table.names.to_pylist(), table.stamps.to_pylist(), strict=True):
            if "/" not in name and fnmatch.fnmatchcase(name, PART_GLOB):
                size, _, tag = stamp.partition(":")
                found[name] = (int(size) if size != "None" else None, tag or None)
        return found

    def part_sha256(self, shard_id: str) -> str | None:
        """sha256 of a part's bytes as stored (None when it is gone)."""
        name = part_name(shard_id)
        try:
            return sha256_hex(read_bytes(self.fs, self.path_of(name), url=self.url_of(name)))
        except FileNotFoundError:
            return None

    def committed_parts(self, config_hash: str, contents: Mapping[str, str | None], *,
                        manifest: Manifest | None = None,
                        fenced: bool = False) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
        """The shards of ``contents`` (id -> content identity) whose part is committed under ``config_hash``.

        Args:
            manifest: the output's manifest of this config (a resume), or None.
            fenced: count only parts whose footer carries a lease fence, and, with
                a fenced ``manifest``, only the part its shard entry records
                (same fence; same size and stamp, or else the same sha256: a
                copied output keeps its parts) or, for a shard it records no
                commit of (a run that died before its last manifest write),
                one committed by a run it lists. A committed entry whose record
                (a listed run's fence) has the listed size and stamp and the
                plan's input content is counted from the record alone: no
                footer read, so a resume costs one listing plus the footers of
                the unrecorded parts, read :data:`FOOTER_READERS` at a time.

        Returns:
            (id -> the part's footer, with ``"commit"``: the record the manifest
            keeps of it when ``fenced``; the ids whose part was committed for
            other input bytes under the same names; ``"<id> (<why>)"`` for each
            part that was not counted although its footer says committed: of
            another run, changed bytes, unreadable). A part whose footer says
            ``failed`` is not committed: the run redoes that shard and overwrites it.
        """
        listing = self.part_listing()
        fences = manifest.run_fences() if manifest is not None else set()
        trusted = fenced and manifest is not None and manifest.fenced and manifest.config_hash == config_hash
        done: dict[str, dict[str, Any]] = {}
        unread: list[tuple[str, str | None, dict[str, Any] | None]] = []
        for sid, content in contents.items():
            name = part_name(sid)
            if name not in listing:
                continue
            entry = manifest.shards.get(sid) if manifest is not None else None
            record = entry.commit() if fenced and entry is not None and manifest.fenced else None
            if trusted and entry is not None and record is not None and _record_holds(
                    entry, record, listing[name], content, fences):
                # The manifest recorded this very commit (a listed run's fence, the same size and
                # stamp: a later writer changes the stamp): no footer read.
                done[sid] = {"config_hash": config_hash, "status": "committed", "content": record.get("content"),
                             "shard": sid, "rows": entry.rows, "ok": entry.ok, "errors": entry.errors,
                             "epoch": record["epoch"], "token": record["token"], "commit": dict(record)}
                continue
            unread.append((sid, content, record))
        # The rest (the crash window: parts the manifest does not record, or whose bytes may have
        # changed) are judged by their footers, read in parallel.
        judged: list[tuple[str, str, Any]] = []  # (verdict, shard, value)
        if unread:
            def judge(item: tuple[str, str | None, dict[str, Any] | None]) -> tuple[str, str, Any]:
                sid, content, record = item
                return self._judge_part(sid, content, record, listing[part_name(sid)], config_hash=config_hash,
                                        manifest=manifest, fences=fences, fenced=fenced)

            with ThreadPoolExecutor(max_workers=min(FOOTER_READERS, len(unread))) as pool:
                judged = list(pool.map(judge, unread))
        changed: list[str] = []
        suspect: list[str] = []
        for verdict, sid, value in judged:
            if verdict == "done":
                done[sid] = value
            elif verdict == "changed":
                changed.append(sid)
            elif verdict == "suspect":
                suspect.append(value)
        return done, changed, suspect

    def _judge_part(self, sid: str, content: str | None, record: dict[str, Any] | None,
                    listed: tuple[int | None, str | None], *, config_hash: str, manifest: Manifest | None,
                    fences: set[tuple[int, str]], fenced: bool) -> tuple[str, str, Any]:
        """One part by its footer: ("done", sid, footer), ("changed", sid, None),
        ("suspect", sid, why) or ("skip", sid, None)."""
        name = part_name(sid)
        meta = read_part_metadata(self.url_of(name), self.storage_options)
        if not meta:
            return ("suspect", sid, f"{sid} (unreadable)") if record is not None else ("skip", sid, None)
        if meta.get("config_hash") != config_hash or meta.get("rows") is None:
            return "skip", sid, None
        if meta.get("status") != "committed":
            return "skip", sid, None
        if meta.get("content") and content and meta["content"] != content:
            return "changed", sid, None  # same names, other bytes: its maps are of the old images
        if not fenced:
            return "done", sid, meta
        fence = fence_of(meta)
        size, stamp = listed
        if fence is None:
            return "suspect", sid, f"{sid} (written without a lease fence, by an older sgcore)"
        if record is not None:
            if fence != fence_of(record):
                return "suspect", sid, (f"{sid} (written by lease epoch {fence[0]}, not by the commit the "
                                        f"manifest records, epoch {record['epoch']})")
            commit = dict(record)
            if size != record.get("size") or (stamp and record.get("stamp") and stamp != record["stamp"]):
                digest = self.part_sha256(sid)
                if digest != record.get("sha256"):
                    return "suspect", sid, (f"{sid} (its bytes changed since they were committed: sha256 "
                                            f"{str(digest)[:12]}... is not {str(record.get('sha256'))[:12]}...)")
                commit.update(size=size, stamp=stamp)
        else:
            if manifest is not None and manifest.fenced and fence not in fences:
                return "suspect", sid, (f"{sid} (written by lease epoch {fence[0]}, a run this output's manifest "
                                        "does not list)")
            commit = {"epoch": fence[0], "token": fence[1], "size": size, "stamp": stamp,
                      "sha256": self.part_sha256(sid)}
        commit["content"] = meta.get("content")
        return "done", sid, {**meta, "commit": commit}

    # ------------------------------------------------------------------ the manifest

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None when there is none yet.

        Raises:
            ValueError: it is not valid JSON or not a manifest, naming its URL.
        """
        url = self.url_of(MANIFEST_NAME)
        path = self.path_of(MANIFEST_NAME)
        try:
            if self._is_s3:  # its ETag first: a later conditional write replaces what was read, or nothing
                info = retry_call(lambda: self.fs.info(path, refresh=True), what=f"read {url}")
                self._manifest_etag = info.get("ETag")
            raw = read_bytes(self.fs, path, url=url)
        except FileNotFoundError:
            self._manifest_etag = None
            return None
        return Manifest.from_json(raw, what=url)

    @property
    def _is_s3(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("s3", "s3a")

    def write_manifest(self, manifest: Manifest, fence: Any = None) -> None:
        """Writes the manifest; with ``fence``, only while the writer holds the output.

        On S3 a fenced write is conditional: ``If-Match`` on the ETag this
        object last read or wrote (``If-None-Match`` when there was none), so a
        stalled writer's manifest never replaces a newer run's.

        Raises:
            LeaseLost: with ``fence``, the writer lost the output; nothing was written.
        """
        data = manifest.to_json()
        url = self.url_of(MANIFEST_NAME)
        if fence is None or not self._is_s3:
            write_bytes(url, data, self.storage_options, fence=fence)
            return
        path = self.path_of(MANIFEST_NAME)
        fs = self.fs
        for _ in range(3):
            etag = getattr(self, "_manifest_etag", None)
            with fence.held():
                try:
                    if etag is None:
                        retry_call(lambda: fs.pipe_file(path, data, mode="create"), what=f"write {url}")
                    else:
                        retry_call(lambda e=etag: fs.pipe_file(path, data, IfMatch=e), what=f"write {url}")
                except (OSError, ValueError) as e:
                    if not is_precondition_failed(e):
                        raise
                    # Another writer's manifest landed since we looked (a stalled run, before our
                    # lease): we hold the output, so ours replaces it.
                    self._manifest_etag = retry_call(lambda: fs.info(path, refresh=True),
                                                     what=f"read {url}").get("ETag")
                    continue
            self._manifest_etag = retry_call(lambda: fs.info(path, refresh=True), what=f"read {url}").get("ETag")
            return
        raise OSError(f"cannot write {url}: other writers kept replacing it")

    def remove_manifest(self, fence: Any = None) -> None:
        """Removes the manifest, and a local directory it leaves empty (a run that never started).

        Raises:
            LeaseLost: with ``fence``, the writer lost the output (the manifest is another run's now).
        """
        with fence.held() if fence is not None else contextlib.nullcontext():
            try:
                self.fs.rm_file(self.path_of(MANIFEST_NAME))
            except (FileNotFoundError, OSError):
                return
            self._manifest_etag = None
        if is_local(self.fs):
            with contextlib.suppress(OSError):  # only when the run created it and left it empty
                os.rmdir(self.path)

    def write_success(self, fence: Any = None) -> None:
        """Writes ``_SUCCESS``; with ``fence`` it holds the run's fence and is written only while it holds the output."""
        data = json.dumps({**fence.stamp(), "run_id": fence.run_id}, sort_keys=True).encode() if fence else b""
        write_bytes(self.url_of(SUCCESS_NAME), data, self.storage_options, fence=fence)

    def remove_success(self, fence: Any = None) -> None:
        with fence.held() if fence is not None else contextlib.nullcontext():
            self._remove(SUCCESS_NAME)

    # ------------------------------------------------------------------ clearing

    def remove_temp_files(self) -> list[str]:
        """Removes the temporary files of writers that died mid-commit; returns their names.

        Only local writes use temporary files; an object store's PUT is atomic.
        Call it only under the output's lease: no other writer is alive then.
        """
        if not is_local(self.fs):
            return []
        found = [p for p in self._glob(TEMP_GLOB) + self._glob(f"{MAPS_DIR}/{TEMP_GLOB}") if is_temp(p)]
        for p in found:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(p)
        return [posixpath.basename(p) for p in found]

    def clear(self, fence: Any = None) -> None:
        """``--overwrite``: removes ``_SUCCESS`` and the manifest first, then every part and npz map file.

        In that order, so that no reader ever sees ``_SUCCESS`` (or a manifest
        that says complete) beside a partly removed output.
        """
        self.remove_success(fence)
        with fence.held() if fence is not None else contextlib.nullcontext():
            self._remove(MANIFEST_NAME)
        self._manifest_etag = None
        for p in self.part_paths() + self.npz_paths():
            self.fs.rm_file(p)

    def _rm_if_there(self, name: str) -> None:
        path = self.path_of(name)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def _remove(self, name: str) -> None:
        retry_call(lambda: self._rm_if_there(name), what=f"remove {self.url_of(name)}")


# One-off reads and writes by URL.


def read_manifest(output: str, storage_options: dict[str, Any] | None = None) -> Manifest | None:
    """The manifest under ``output``, or None when there is none yet."""
    return OutputDir(output, storage_options).read_manifest()


def write_manifest(output: str, manifest: Manifest, storage_options: dict[str, Any] | None = None,
                   fence: Any = None) -> None:
    OutputDir(output, storage_options).write_manifest(manifest, fence)


def write_success(output: str, storage_options: dict[str, Any] | None = None, fence: Any = None) -> None:
    OutputDir(output, storage_options).write_success(fence)


def remove_success(output: str, storage_options: dict[str, Any] | None = None) -> None:
    OutputDir(output, storage_options).remove_success()
