"""The output directory: its names, atomic commits, committed parts, clearing, the manifest.

Everything that reads or writes a job's ``--output`` goes through here. The
layout (DESIGN.md contract 5) under the output URL::

    part-<shard>.parquet     one per input shard; its footer (key PART_METADATA_KEY) holds
                             config_hash, status ("committed" or "failed"), content, shard,
                             rows, ok, errors
    maps/part-<shard>.npz    only with --format npz: the maps, keyed by the rows' map_key
    _manifest.json           a Manifest (schema below)
    _lease.json              the claim of the run writing now (sgcore.io.lease)
    _SUCCESS                 written last, only when every shard is committed
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
import json
import os
import platform
import posixpath
import subprocess
import uuid
from collections.abc import Mapping, Sequence
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
) -> None:
    """Writes ``data`` to ``url`` atomically (temp + rename locally, one PUT remotely).

    Transient errors (timeouts, 5xx, throttling) are retried with backoff
    (:mod:`sgcore.io._retry`); a permanent one fails at once.

    Raises:
        OSError: naming ``url``, after the retries (its subclasses kept:
            ``PermissionError`` for refused credentials, ...).
    """
    fs, path = url_to_fs(url, storage_options)
    parent = posixpath.dirname(path)

    def once() -> None:
        if is_local(fs):
            os.makedirs(parent, exist_ok=True)
            tmp = temp_path(path)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.pipe_file(path, data)

    try:
        retry_call(once, what=f"write {url}", policy=policy)
    except OSError as e:
        if str(e).startswith(f"write {url}:"):  # retry_call's message names it already
            raise
        try:
            named = type(e)(f"cannot write {url}: {e}")
        except Exception:  # an OSError subclass with its own constructor
            named = OSError(f"cannot write {url}: {e}")
        raise named from e


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
        {"attempts", "failures", "rows", "ok", "errors", "seconds", "run", "node", "pid", "device", "finished"})

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

    def add_failure(self, reason: str) -> None:
        self.failures = [*(self.failures or []), reason[:500]]


@dataclass(kw_only=True)
class RunEntry(_Record):
    """One invocation that wrote to the output; completed when it ends."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"gpus_per_actor", "gpus_per_actor_requested", "stopped_by"})

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

    @classmethod
    def begin(cls, started: str, *, shards: int, skipped: int) -> RunEntry:
        """This invocation's entry, with the code it runs (git revision, package versions)."""
        return cls(started=started, shards=shards, shards_skipped=skipped,
                   git_revision=git_revision(), versions=package_versions())


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

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"finished"})
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
            entries[s.shard_id] = entry
        plan = Plan(shards=len(shards), images=sum(s.size for s in shards), fingerprint=fingerprint)
        if previous is None:  # the output starts here, with this run's code
            return cls(config=config, config_hash=config_hash, preprocess=preprocess, model=model,
                       plan=plan, sgcore_version=run.versions.get("sgcore"), created=run.started,
                       versions=dict(run.versions), git_revision=run.git_revision, shards=entries,
                       runs=[run])
        return cls(config=config, config_hash=config_hash, preprocess=preprocess, model=model, plan=plan,
                   sgcore_version=previous.sgcore_version, created=previous.created,
                   versions=dict(previous.versions), git_revision=previous.git_revision, shards=entries,
                   runs=[*previous.runs, run])

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

    def committed_parts(self, config_hash: str,
                        contents: Mapping[str, str | None]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The shards of ``contents`` (id -> content identity) whose part is committed under ``config_hash``.

        Returns:
            (id -> the part's footer, for the committed ones; the ids whose part
            was committed for other input bytes under the same names, sorted as
            given). A part whose footer says ``failed`` is not committed: the run
            redoes that shard and overwrites it.
        """
        existing = {posixpath.basename(p) for p in self.part_paths()}
        done: dict[str, dict[str, Any]] = {}
        changed: list[str] = []
        for sid, content in contents.items():
            name = part_name(sid)
            if name not in existing:
                continue
            meta = read_part_metadata(self.url_of(name), self.storage_options)
            if not meta or meta.get("config_hash") != config_hash or meta.get("rows") is None:
                continue
            if meta.get("status") != "committed":
                continue
            if meta.get("content") and content and meta["content"] != content:
                changed.append(sid)  # same names, other bytes: its maps are of the old images
                continue
            done[sid] = meta
        return done, changed

    # ------------------------------------------------------------------ the manifest

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None when there is none yet.

        Raises:
            ValueError: it is not valid JSON or not a manifest, naming its URL.
        """
        url = self.url_of(MANIFEST_NAME)
        try:
            raw = read_bytes(self.fs, self.path_of(MANIFEST_NAME), url=url)
        except FileNotFoundError:
            return None
        return Manifest.from_json(raw, what=url)

    def write_manifest(self, manifest: Manifest) -> None:
        write_bytes(self.url_of(MANIFEST_NAME), manifest.to_json(), self.storage_options)

    def remove_manifest(self) -> None:
        """Removes the manifest, and a local directory it leaves empty (a run that never started)."""
        try:
            self.fs.rm_file(self.path_of(MANIFEST_NAME))
        except (FileNotFoundError, OSError):
            return
        if is_local(self.fs):
            with contextlib.suppress(OSError):  # only when the run created it and left it empty
                os.rmdir(self.path)

    def write_success(self) -> None:
        write_bytes(self.url_of(SUCCESS_NAME), b"", self.storage_options)

    def remove_success(self) -> None:
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

    def clear(self) -> None:
        """Removes every part, every npz map file and ``_SUCCESS`` (``--overwrite``)."""
        for p in self.part_paths() + self.npz_paths():
            self.fs.rm_file(p)
        self.remove_success()

    def _remove(self, name: str) -> None:
        path = self.path_of(name)

        def remove() -> None:
            if self.fs.exists(path):
                self.fs.rm_file(path)

        retry_call(remove, what=f"remove {self.url_of(name)}")


# One-off reads and writes by URL.


def read_manifest(output: str, storage_options: dict[str, Any] | None = None) -> Manifest | None:
    """The manifest under ``output``, or None when there is none yet."""
    return OutputDir(output, storage_options).read_manifest()


def write_manifest(output: str, manifest: Manifest, storage_options: dict[str, Any] | None = None) -> None:
    OutputDir(output, storage_options).write_manifest(manifest)


def write_success(output: str, storage_options: dict[str, Any] | None = None) -> None:
    OutputDir(output, storage_options).write_success()


def remove_success(output: str, storage_options: dict[str, Any] | None = None) -> None:
    OutputDir(output, storage_options).remove_success()
