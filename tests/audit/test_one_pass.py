"""The audit reads each part file once: one streaming pass feeds every section."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import fsspec.implementations.local as local
import pytest

from sgcore.audit import AuditConfig, open_results_dir, read_index, run_audit


def _count_part_opens(monkeypatch: pytest.MonkeyPatch, root: Path) -> Counter:
    """Every open of a part file under ``root`` in this process, by whatever reads it."""
    opened: Counter = Counter()
    real = local.LocalFileSystem._open

    def counting(self, path, *args, **kwargs):  # noqa: ANN001, ANN202
        name = str(path)
        if name.startswith(str(root)) and Path(name).name.startswith("part-") and name.endswith(".parquet"):
            opened[Path(name).name] += 1
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileSystem, "_open", counting)
    return opened


def test_every_section_from_one_read_per_part(demo_results: Path, random_results: Path, demo_root: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = open_results_dir(str(demo_results))
    parts = sorted(Path(p).name for p in results.parts)
    assert len(parts) >= 3
    opened = _count_part_opens(monkeypatch, demo_results)
    summary = run_audit(AuditConfig(results=str(demo_results), report=str(tmp_path / "r"), sample=2, n_samples=2,
                                    steps=2, examples=1, num_actors=0, compare=str(random_results)),
                        log=lambda m: None)
    # Every section ran: per class, localization (masks), strategies, sanity, faithfulness, comparison.
    assert summary["localization"]["images"] > 0 and summary["strategies"] is not None
    assert summary["sanity"] and summary["faithfulness"] and summary["compare"]["images"] > 0
    # Only the example maps of a flagged strategy cluster are known after the pass: their parts are read again.
    monkeypatch.undo()
    index = read_index(results)
    part_of = dict(zip(index.column("image_id").to_pylist(), index.column("part").to_pylist(), strict=True))
    flagged = {Path(part_of[i]).name for c in summary["strategies"] for k in c["clusters"] if k["flagged"]
               for i in k["examples"]}
    assert dict(opened) == {p: 1 + (p in flagged) for p in parts}


def test_the_streamed_sample_is_the_hash_sample(demo_results: Path) -> None:
    """The heavy checks' sample, drawn part by part with a bounded heap, is hash_sample's, with its maps."""
    import numpy as np

    from sgcore.audit.results import hash_sample
    from sgcore.audit.scan import Index, SampleFeed, scan
    from sgcore.results import read_maps

    results = open_results_dir(str(demo_results))
    for k, seed in ((1, 0), (5, 3), (1000, 1)):
        index, sample = Index(), SampleFeed(k, seed)
        assert scan(results, [index, sample]) == len(index)
        expected = hash_sample(index.table.column("image_id").to_pylist(), k, seed)
        assert sample.rows() == expected
        np.testing.assert_array_equal(sample.maps(), read_maps(results, index.table, expected))
