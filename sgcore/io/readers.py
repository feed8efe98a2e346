"""Listing an input URL into shards, and reading a shard's samples.

A shard is the unit of work, retry and output: a fixed-size group of image
files in sorted order. Shard ids and image ids depend only on the input
listing, so the same input gives the same ids on every run.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgcore.errors import InputError
from sgcore.io._fs import full_url, join, url_to_fs
from sgcore.io.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DecodeError,
    Geometry,
    decode_image,
)


@dataclass(frozen=True, kw_only=True)
class ShardSpec:
    """One unit of work: which files, relative to the input root."""

    shard_id: str
    kind: str
    root: str
    members: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One input image before decoding; ``error`` set when it could not be read."""

    image_id: str
    source: str
    label: str | None
    data: bytes | None = None
    error: str | None = None


@dataclass(kw_only=True)
class DecodedShard:
    """A shard ready for the model: the decoded pixels plus one record per sample.

    ``records[i]["index"]`` is the row of ``images`` holding sample i, or -1
    when it failed (then ``records[i]["error"]`` says why).
    """

    shard_id: str
    images: np.ndarray  # (N_ok, H, W, 3) uint8
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_ok(self) -> int:
        return int(self.images.shape[0])


def plan_shards(
    url: str,
    *,
    shard_size: int,
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ShardSpec]:
    """Lists image files under ``url`` (recursively, sorted) and cuts them into shards.

    Files without an image extension are skipped, not failed.

    Raises:
        InputError: the URL does not exist or holds no images.
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        if fs.isfile(path):
            root, names = posixpath.dirname(path), [posixpath.basename(path)]
        else:
            root = path.rstrip("/")
            found = fs.find(root, withdirs=False)
            names = sorted(_relative(p, root) for p in found)
    except FileNotFoundError as e:
        raise InputError(f"input {url} does not exist; check the URL and credentials") from e
    except PermissionError as e:
        raise InputError(f"input {url} is not readable: {e}; check credentials") from e
    if not names and not fs.exists(path):
        raise InputError(f"input {url} does not exist; check the URL and credentials")
    images = [n for n in names if _is_image(n)]
    if limit is not None:
        images = images[:limit]
    if not images:
        raise InputError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {url}; "
            f"found {len(names)} other file(s)"
        )
    root_url = full_url(fs, root) if "://" not in url else _with_protocol(url, fs, root)
    return [
        ShardSpec(shard_id=f"{i // shard_size:05d}", kind="images", root=root_url,
                  members=tuple(images[i : i + shard_size]))
        for i in range(0, len(images), shard_size)
    ]


def read_shard(spec: ShardSpec, storage_options: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """Yields the shard's samples in order; unreadable ones carry an error."""
    fs, root = url_to_fs(spec.root, storage_options)
    paths = [posixpath.join(root, m) if root else m for m in spec.members]
    try:
        blobs = fs.cat(paths, on_error="return")
    except Exception as e:  # a failure for the whole batch: read one by one
        blobs = {p: e for p in paths}
    for member, p in zip(spec.members, paths, strict=True):
        data = blobs.get(p)
        if data is None:  # some backends key results without the protocol
            data = blobs.get(fs._strip_protocol(p), FileNotFoundError(p))
        source = join(spec.root, member)
        label = _label(member)
        if isinstance(data, BaseException):
            yield RawSample(image_id=member, source=source, label=label,
                            error=f"cannot read {source}: {type(data).__name__}: {data}")
        else:
            yield RawSample(image_id=member, source=source, label=label, data=bytes(data))


def decode_shard(
    spec: ShardSpec,
    *,
    resize_size: int,
    crop_size: int,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict[str, Any] | None = None,
) -> DecodedShard:
    """Reads and decodes a whole shard; a bad sample becomes an error record."""
    arrays: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    for sample in read_shard(spec, storage_options):
        rec: dict[str, Any] = {
            "image_id": sample.image_id,
            "source": sample.source,
            "label": sample.label,
            "index": -1,
            "error": sample.error,
            "geometry": None,
        }
        if sample.error is None:
            try:
                arr, geo = decode_image(
                    sample.data or b"",
                    resize_size=resize_size,
                    crop_size=crop_size,
                    interpolation=interpolation,
                    max_pixels=max_pixels,
                )
            except DecodeError as e:
                rec["error"] = f"{e} ({sample.source})"
            else:
                rec["index"] = len(arrays)
                rec["geometry"] = geo
                arrays.append(arr)
        records.append(rec)
    images = (
        np.stack(arrays) if arrays else np.zeros((0, crop_size, crop_size, 3), dtype=np.uint8)
    )
    return DecodedShard(shard_id=spec.shard_id, images=images, records=records)


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _label(member: str) -> str | None:
    parent = posixpath.dirname(member)
    return posixpath.basename(parent) if parent else None


def _with_protocol(url: str, fs: Any, root: str) -> str:
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{root}" if protocol != "file" else root


__all__ = [
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "ShardSpec",
    "decode_shard",
    "plan_shards",
    "read_shard",
]
