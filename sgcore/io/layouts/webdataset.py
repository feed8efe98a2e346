"""The ``webdataset`` layout: ``.tar`` shards, streamed (see :mod:`sgcore.io.webdataset`).

One shard per tar; image id = ``<tar path>/<sample key>``; source =
``<tar URL>#<member>``; label = the sample's ``.cls``/``.json`` field, or the
``--labels`` file (read by the decode task, as sample keys are only known then).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
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
    shard_file,
)


class WebDataset:
    """WebDataset tars: consecutive members sharing a key are one sample."""

    name = "webdataset"
    found = ".tar shards"
    counted = ".tar shard(s)"

    def detects(self, name: str) -> bool:
        return wds.is_tar(name) and not hidden(name)

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        root = listing.root
        shards = []
        left = options.limit
        for i, rel in enumerate(n for n in listing.names if wds.is_tar(n)):
            count = None
            cap = None
            if left is not None:
                # --limit needs the counts: read just far enough to know them.
                try:
                    with root.open(rel) as f:
                        count = wds.count_samples(f, stop_at=left)
                except READ_ERRORS:  # unreadable: the decode task reports it as an error row
                    count = None
                cap = left
            shards.append(ShardSpec(shard_id=f"{i:05d}", kind=self.name, root=root.url, members=(rel,),
                                    file=rel, count=count, max_samples=cap, labels_url=options.labels_url))
            if left is not None:
                left -= count if count is not None else 1
                if left <= 0:
                    break
        if options.labels is not None:
            _check_labels(options.labels, root, [shard_file(s) for s in shards])
        return shards

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        root = Root.of(spec.root, storage_options)
        rel = shard_file(spec)
        url = root.url_of(rel)
        n = 0
        seen: dict[str, int] = {}
        try:
            with root.open(rel) as f:
                for sample in wds.iter_tar(f, max_samples=spec.max_samples):
                    member, data = sample.image() or ("", b"")
                    n += 1
                    image_id = f"{rel}/{sample.key}"
                    if sample.key in seen:
                        # A repeated key (not adjacent, or it would have joined the sample): its
                        # own id and an error row, so that ids stay unique (and npz keys too).
                        seen[sample.key] += 1
                        yield RawSample(
                            image_id=f"{image_id}#{seen[sample.key]}", source=f"{url}#{member}", label=None,
                            error=(f"sample key {sample.key!r} repeats in {url} (occurrence "
                                   f"{seen[sample.key]}, member {member}); WebDataset keys must be "
                                   "unique: only the first is used"))
                        continue
                    seen[sample.key] = 1
                    yield RawSample(image_id=image_id, source=f"{url}#{member}", label=sample.label(),
                                    data=data)
        except StorageUnavailable:
            raise
        except READ_ERRORS as e:
            where = "cannot read" if n == 0 else f"stopped after {n} sample(s) reading"
            yield RawSample(image_id=rel, source=url, label=None,
                            error=f"{where} {url}: {type(e).__name__}: {e}")

    def holds(self, source: str) -> bool:
        base = source.rpartition("#")[0]
        return bool(base) and wds.is_tar(base)

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        base, _, member = source.rpartition("#")
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
