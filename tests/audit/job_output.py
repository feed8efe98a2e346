"""Results directories written by the job's own code, on the demo.

:func:`write_results` runs what a job's actors run, without Ray: the shard
plan, the decode task and :class:`sgcore.pipeline.ShardProcessor` (rows by
``make_row``, parts committed by ``write_part``), so the audit tests read the
parts ``jobs.smoothgrad`` writes. The manifest is built as the driver builds
it (:meth:`sgcore.io.Manifest.begin`), with the config, its hash and the
preprocessing from the job's own code;
``test_runner.py::test_audit_reads_a_real_job_run`` audits a whole Ray run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sgcore.config import JobConfig
from sgcore.io import Manifest, RunEntry, decode_shard, plan_shards, write_manifest, write_success
from sgcore.io.output import now
from sgcore.pipeline import ShardProcessor, plan_fingerprint

N_SAMPLES = 8  # enough for the checks below on the 64 px demo, fast on 2 CPUs
GONE = "gone.png"  # listed, then unreadable: the job writes an error row for it


def write_results(
    out: Path,
    images_root: Path,
    *,
    model: str = "demo",
    weights: str = "default",
    n_samples: int = N_SAMPLES,
    shard_size: int = 8,
    limit: int | None = None,
    **settings: Any,
) -> Path:
    """Runs the job's shard processing over ``images_root`` into ``out``, then its manifest and ``_SUCCESS``.

    ``settings``: further :class:`~sgcore.config.JobConfig` fields (aggregate, base, format, ...).
    The first shard also lists :data:`GONE`, an image deleted after listing, which becomes an error row.
    """
    config = JobConfig(input=str(images_root), output=str(out), model=model, weights=weights,
                       n_samples=n_samples, shard_size=shard_size, limit=limit, progress=False, **settings)
    shards = plan_shards(config.input, shard_size=config.shard_size, limit=config.limit)
    shards[0] = replace(shards[0], members=(*shards[0].members, GONE), count=shards[0].size + 1)
    processor = ShardProcessor(config)
    pre = processor.loaded.preprocess
    chash = config.config_hash()
    manifest = Manifest.begin(config=config.public_dict(), config_hash=chash, preprocess=pre.to_dict(), model={},
                              fingerprint=plan_fingerprint(shards), shards=shards, committed={}, previous=None,
                              run=RunEntry.begin(now(), shards=len(shards), skipped=0))
    for spec in shards:
        decoded = decode_shard(spec, resize_size=pre.resize_size, crop_size=pre.crop_size,
                               interpolation=pre.interpolation)
        summary = processor.process(decoded, config_hash=chash)
        entry = manifest.shards[spec.shard_id]
        entry.status, entry.rows, entry.ok, entry.errors = "committed", summary.rows, summary.ok, summary.errors
        entry.run = 1
    manifest.status = manifest.runs[0].status = "complete"
    manifest.finished = manifest.runs[0].finished = now()
    write_manifest(config.output, manifest)
    write_success(config.output)
    return out
