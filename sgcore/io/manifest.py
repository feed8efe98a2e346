"""The run manifest (``_manifest.json``) and the ``_SUCCESS`` marker.

The manifest records what made the results: the config (without storage
options, which may hold secrets), its hash, package versions, the git
revision, per-shard status, counts and timings, one entry per run that wrote
to the output, and totals (the schema: :mod:`sgcore.pipeline.driver`).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from sgcore.io._fs import join, read_bytes, url_to_fs
from sgcore.io._retry import retry_call
from sgcore.io.writers import write_bytes

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
_PACKAGES = ("sgcore", "torch", "torchvision", "ray", "pyarrow", "fsspec", "s3fs", "numpy", "pillow")


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


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(output: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest under ``output``, or None when there is none yet."""
    url = join(output, MANIFEST_NAME)
    fs, path = url_to_fs(url, storage_options)
    try:
        return json.loads(read_bytes(fs, path, url=url))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{join(output, MANIFEST_NAME)} is not valid JSON: {e}") from e


def write_manifest(output: str, manifest: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    write_bytes(join(output, MANIFEST_NAME), data, storage_options)


def write_success(output: str, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes(join(output, SUCCESS_NAME), b"", storage_options)


def remove_success(output: str, storage_options: dict[str, Any] | None = None) -> None:
    url = join(output, SUCCESS_NAME)
    fs, path = url_to_fs(url, storage_options)

    def remove() -> None:
        if fs.exists(path):
            fs.rm_file(path)

    retry_call(remove, what=f"remove {url}")
