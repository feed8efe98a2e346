"""The ``webdataset`` layout: ``.tar`` shards, streamed (see :mod:`sgcore.io.webdataset`).

Shards: a tar of at most ``--shard-size`` image samples is one shard (id
``<n>``, the tar's index in the listing); a larger one is cut into ranges of
``--shard-size`` samples (ids ``<n>-<k>``), planned from one scan of its
headers (:class:`~sgcore.io.webdataset.TarScan`: no member data is read, and the
plan keeps per shard only the range and the byte offset where it starts), so
that a shard's decode memory is bounded by the shard size whatever the tar.

Ids: image id = ``<tar path>/<sample key>``; source = ``<tar URL>#<member>``;
label = the sample's ``.cls``/``.json`` field, or the ``--labels`` file (read by
the decode task, as sample keys are only known then). A key that repeats later
in its tar gets ``<tar path>/<key>#<occurrence>`` (``#2``, ...) and an error
row. Keys and members are escaped (:func:`~sgcore.io.webdataset.escape_key`:
``%`` -> ``%25``, ``#`` -> ``%23``, nothing else), so a key ``x#2`` is
``x%232`` and never meets the second ``x``, and every source reads back with
:meth:`WebDataset.read_source`; keys without ``%``/``#`` keep the ids they
always had. Ids and seeds do not depend on how a tar is cut.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sgcore.errors import InputError
from sgcore.io import webdataset as wds
from sgcore.io._retry import StorageUnavailable
from sgcore.io.failures import READ_ERRORS
from sgcore.io.labels import LabelsFile
from sgcore.io.layouts.base import (
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
    hidden,
    open_url,
    range_id,
    shard_file,
)

_SCAN_BUFFER = 1 << 16  # the header scan seeks past member data: small reads
_SCAN_THREADS = 16


class WebDataset:
    """WebDataset tars: consecutive members sharing a key are one sample."""

    name = "webdataset"
    found = ".tar shards"
    counted = ".tar shard(s)"

    def detects(self, name: str) -> bool:
        return wds.is_tar(name) and not hidden(name)

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        root = listing.root
        tars = [n for n in listing.names if wds.is_tar(n)]
        size = options.shard_size
        shards: list[ShardSpec] = []
        left = options.limit

        def scan(rel: str, stop_at: int | None) -> wds.TarScan | None:
            found = wds.TarScan(every=size, stop_at=stop_at)
            try:
                with root.open(rel, buffer_size=_SCAN_BUFFER) as f:
                    return found.run(f)
            except StorageUnavailable:
                return None  # the store, not the tar: its decode task reads (and retries) it whole
            except READ_ERRORS:  # damaged: plan what is before the damage (its reader reports it)
                return found if found.samples > size else None

        if left is None:  # the scans are independent: run them side by side
            with ThreadPoolExecutor(max_workers=min(_SCAN_THREADS, max(1, len(tars)))) as pool:
                scans: Iterator[wds.TarScan | None] = pool.map(lambda rel: scan(rel, None), tars)
                for i, (rel, found) in enumerate(zip(tars, scans, strict=True)):
                    shards += self._cut(i, rel, found, root, options, cap=None)
        else:  # --limit: scan just far enough, tar after tar
            for i, rel in enumerate(tars):
                found = scan(rel, left)
                shards += self._cut(i, rel, found, root, options, cap=left)
                left -= found.samples if found is not None else 1
                if left <= 0:
                    break
        if options.labels is not None:
            _check_labels(options.labels, root, list(dict.fromkeys(shard_file(s) for s in shards)))
        return shards

    def _cut(self, i: int, rel: str, found: wds.TarScan | None, root: Root, options: PlanOptions, *,
             cap: int | None) -> list[ShardSpec]:
        """The shards of tar number ``i``: the whole tar, or ranges of ``shard_size`` samples."""
        common = dict(kind=self.name, root=root.url, members=(rel,), file=rel, labels_url=options.labels_url)
        size = options.shard_size
        if found is None or found.samples <= size:
            # One shard, read whole as it always was (an unreadable tar: one error row at decode).
            count = found.samples if found is not None else None
            stop = cap if cap is not None and (count is None or count >= cap) else None
            return [ShardSpec(shard_id=f"{i:05d}", count=count, stop_row=stop, **common)]
        n = found.samples
        out = []
        for k, first in enumerate(range(0, n, size)):
            stop = min(first + size, n)
            # The last range reads to the end (and checks the end-of-archive), unless --limit cuts it.
            last = stop == n and not (found.stop_at is not None and n >= found.stop_at)
            repeats = tuple((j, m) for j, m in found.repeats if first <= j < stop)
            out.append(ShardSpec(
                shard_id=f"{i:05d}-{k:04d}", count=stop - first, first_row=first,
                stop_row=None if last else stop, offset=None if found.compressed else found.offsets[k],
                repeats=repeats, split=True, **common))
        return out

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        root = Root.of(spec.root, storage_options)
        rel = shard_file(spec)
        url = root.url_of(rel)
        n = 0
        index = spec.first_row
        # A whole tar's reader finds its repeated keys; a range is told them by the plan.
        seen: dict[str, int] | None = {} if spec.repeats is None else None
        repeats = dict(spec.repeats or ())
        try:
            with root.open(rel) as f:
                for sample in wds.iter_tar(f, first=spec.first_row, stop=spec.stop_row, offset=spec.offset):
                    member, data = sample.image() or ("", b"")
                    n += 1
                    key = wds.escape_key(sample.key)
                    image_id = f"{rel}/{key}"
                    source = f"{url}#{wds.escape_key(member)}"
                    if seen is not None:
                        occurrence = seen[sample.key] = seen.get(sample.key, 0) + 1
                    else:
                        occurrence = repeats.get(index, 1)
                    index += 1
                    if occurrence > 1:
                        # A repeated key (not adjacent, or it would have joined the sample): its
                        # own id and an error row, so that ids stay unique (and npz keys too).
                        yield RawSample(
                            image_id=f"{image_id}#{occurrence}", source=source, label=None,
                            error=(f"sample key {sample.key!r} repeats in {url} (occurrence "
                                   f"{occurrence}, member {member}); WebDataset keys must be "
                                   "unique: only the first is used"))
                        continue
                    yield RawSample(image_id=image_id, source=source, label=sample.label(), data=data)
        except StorageUnavailable:
            raise
        except READ_ERRORS as e:
            where = "cannot read" if n == 0 else f"stopped after {n} sample(s) reading"
            # A range of a split tar has its own id for this row: ids stay unique when several fail.
            error_id = range_id(rel, spec.first_row, spec.stop_row, spec.size) if spec.split else rel
            yield RawSample(image_id=error_id, source=url, label=None,
                            error=f"{where} {url}: {type(e).__name__}: {e}")

    def holds(self, source: str) -> bool:
        base = source.rpartition("#")[0]
        return bool(base) and wds.is_tar(base)

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        # The member is escaped (no "#" in it): the last "#" ends the tar URL, whatever it holds.
        base, _, escaped = source.rpartition("#")
        member = wds.unescape_key(escaped)
        with open_url(base, storage_options) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if info.name == member and info.isfile():
                    data = tar.extractfile(info)
                    return data.read() if data is not None else b""
        raise InputError(f"{member!r} is not a member of {base}")


def _check_labels(labels: LabelsFile, root: Root, tars: list[str]) -> None:
    """Refuses a labels file none of whose keys can name a sample of ``tars``.

    Sample ids are only known once the tars are read, so this checks the prefixes
    (``<tar path>/`` or ``<tar URL>#``); a partial match shows only in the results.
    """
    if not tars:
        return
    prefixes = tuple(f"{t}/" for t in tars) + tuple(f"{root.url_of(t)}#" for t in tars)
    if any(k.startswith(prefixes) for k in labels.mapping):
        return
    raise InputError(
        f"labels file {labels.url}: 0 of its {len(labels.mapping)} ids name a sample of the "
        f"{len(tars)} .tar shard(s) ({labels.describe_ids()}, image ids look like "
        f"{tars[0] + '/<sample key>'!r}); its path column must hold image ids or full URLs "
        f"({labels.describe()})"
    )


__all__ = ["WebDataset"]
