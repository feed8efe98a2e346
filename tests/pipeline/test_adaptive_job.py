"""--n-samples auto in the job: per-row sample counts, batch independence, the policy in the config."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.smoothgrad import build_parser
from sgcore.cli import config_from_args as _config_from_args
from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.io import decode_shard, plan_shards
from sgcore.pipeline import ShardProcessor
from tests.conftest import write_images


def _rows(root, **kw):
    config = JobConfig(input=str(root), output="unused", model="demo", weights="default",
                       image_size=32, progress=False, **kw)
    processor = ShardProcessor(config)
    pre = processor.loaded.preprocess
    (spec,) = plan_shards(config.input, shard_size=64)
    decoded = decode_shard(spec, resize_size=pre.resize_size, crop_size=pre.crop_size,
                           interpolation=pre.interpolation)
    return [r for r in processor.compute_rows(decoded) if r.ok]


def test_a_fixed_n_batch_reports_its_images_as_they_finish_not_at_its_end(tmp_path):
    """A batch of 16 at a fixed n used to report 16 at once when it ended (a 10-image job read 0/10 for
    minutes on a real model): the kernel now says when each image's samples are all in."""
    root = tmp_path / "img"
    write_images(root, n_per_class=3)
    config = JobConfig(input=str(root), output="unused", model="demo", weights="default", image_size=32,
                       progress=False, batch_size=16, n_samples=8, max_batch=8)
    processor = ShardProcessor(config)
    processor.progress_interval = 0.0  # report every image as it finishes
    pre = processor.loaded.preprocess
    (spec,) = plan_shards(config.input, shard_size=64)
    decoded = decode_shard(spec, resize_size=pre.resize_size, crop_size=pre.crop_size,
                           interpolation=pre.interpolation)
    finished: list[int] = []
    rows = processor.compute_rows(decoded, on_batch=finished.append)
    assert len(rows) == 6 and all(r.ok for r in rows)
    assert finished == [1] * 6
    processor.progress_interval = None  # batches only: one report for the batch
    finished.clear()
    processor.compute_rows(decoded, on_batch=finished.append)
    assert finished == [6]


def config_from_args(args):
    return _config_from_args(JobConfig, args)


POLICY = dict(n_samples=64, target_reliability=0.85, min_samples=16, max_samples=64)


def test_rows_record_samples_used_and_do_not_depend_on_batch_size_or_max_batch(tmp_path):
    root = tmp_path / "img"
    write_images(root, n_per_class=3)
    base = _rows(root, batch_size=16, **POLICY)
    assert base and all(16 <= r.n_samples <= 64 for r in base)
    assert all(0.0 <= r.reliability <= 1.0 for r in base)
    assert all(r.reliability >= 0.85 or r.n_samples == 64 for r in base)
    for kw in (dict(batch_size=2), dict(batch_size=5, max_batch=7)):
        other = _rows(root, **kw, **POLICY)
        assert [r.image_id for r in other] == [r.image_id for r in base]
        for a, b in zip(base, other, strict=True):
            assert a.n_samples == b.n_samples
            assert np.asarray(a.saliency).tobytes() == np.asarray(b.saliency).tobytes()


def test_every_map_that_hit_its_cap_below_the_target_is_flagged_and_counted(tmp_path):
    """capped: True where a map stopped at max_samples with its estimate below the target, False where
    it reached the target, null for a fixed n; the shard's summary counts the capped maps."""
    from sgcore.pipeline.worker import ShardSummary

    root = tmp_path / "img"
    write_images(root, n_per_class=2)
    unreachable = _rows(root, n_samples=32, target_reliability=0.9999, min_samples=16, max_samples=32)
    assert unreachable and all(r.n_samples == 32 and r.reliability < 0.9999 for r in unreachable)
    assert all(r.capped is True for r in unreachable)
    assert ShardSummary.of("s", unreachable).capped == len(unreachable)
    easy = _rows(root, n_samples=32, target_reliability=0.05, min_samples=16, max_samples=32)
    assert all(r.capped is False and r.reliability >= 0.05 for r in easy)
    assert ShardSummary.of("s", easy).capped == 0
    assert all(r.capped is None for r in _rows(root, n_samples=16))


def test_policy_is_part_of_the_config_hash():
    fixed = JobConfig(input="i", output="o", n_samples=64)
    auto = JobConfig(input="i", output="o", **POLICY)
    other = JobConfig(input="i", output="o", **{**POLICY, "target_reliability": 0.9})
    assert len({fixed.config_hash(), auto.config_hash(), other.config_hash()}) == 3
    assert auto.result_fields()["n_samples"] == "auto" and auto.result_fields()["target_reliability"] == 0.85


@pytest.mark.parametrize(("argv", "message"), [
    (["--n-samples", "auto", "--target-reliability", "1.5"], r"target_reliability must be in \(0, 1\); got 1.5"),
    (["--n-samples", "auto", "--target-reliability", "0.9", "--min-samples", "128", "--max-samples", "64"],
     "min_samples must be <= max_samples; got 128 > 64"),
    (["--n-samples", "auto"], "--n-samples auto needs --target-reliability"),
    (["--target-reliability", "0.9"], "--target-reliability works with --n-samples auto"),
])
def test_bad_policy_is_one_config_error(argv, message):
    args = build_parser().parse_args(["--input", "i", "--output", "o", *argv])
    with pytest.raises(ConfigError, match=message):
        config_from_args(args)


def test_job_exits_2_with_one_line_on_a_bad_policy(capsys):
    from jobs.smoothgrad import main

    assert main(["--input", "i", "--output", "o", "--n-samples", "auto", "--target-reliability", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target_reliability must be in (0, 1); got 1.5" in err[0]


def test_converged_images_are_replaced_from_the_whole_shard_so_passes_stay_full(tmp_path):
    """With --n-samples auto one adaptive call takes the whole shard: the forward passes are full until
    the shard's last images, where per-batch calls left every batch's slowest images in emptier passes."""
    import torch

    from sgcore.attribution.adaptive import smoothgrad_adaptive

    root = tmp_path / "img"
    write_images(root, n_per_class=8)
    config = JobConfig(input=str(root), output="unused", model="demo", weights="default", image_size=32,
                       progress=False, batch_size=2, max_batch=64, n_samples=128, target_reliability=0.93,
                       min_samples=16, max_samples=128)
    processor = ShardProcessor(config)
    pre = processor.loaded.preprocess
    (spec,) = plan_shards(config.input, shard_size=64)
    decoded = decode_shard(spec, resize_size=pre.resize_size, crop_size=pre.crop_size,
                           interpolation=pre.interpolation)
    passes: list[int] = []
    hook = processor.model.register_forward_hook(
        lambda _m, args, _o: passes.append(args[0].shape[0]) if torch.is_grad_enabled() else None)
    finished: list[int] = []
    rows = processor.compute_rows(decoded, on_batch=finished.append)
    hook.remove()
    ok = [r for r in rows if r.ok]
    assert len(ok) == len(rows) == 16 and sum(finished) == len(rows)
    assert len(finished) >= len(rows) // 2  # progress came about a batch at a time, not once at the end
    assert sum(passes) == sum(r.n_samples for r in ok)
    # Full passes until the shard runs dry, then only the tail.
    first_short = next(k for k, n in enumerate(passes) if n < 64)
    assert all(n == 64 for n in passes[:first_short])
    fill = sum(passes) / (64 * len(passes))

    # The same images explained batch by batch (the old schedule): a batch of 2 images fills at most
    # 2 x 16 of the 64 rows a pass may hold.
    per_batch: list[int] = []
    hook = processor.model.register_forward_hook(
        lambda _m, args, _o: per_batch.append(args[0].shape[0]) if torch.is_grad_enabled() else None)
    x = pre.normalize(torch.from_numpy(np.ascontiguousarray(decoded.images)))
    targets = torch.tensor([r.target for r in ok])
    seeds = torch.tensor([r.seed for r in ok])
    kw = {k: v for k, v in config.kernel_arguments().items() if k not in ("n_samples", "ig_steps")}
    for i in range(0, len(ok), 2):
        smoothgrad_adaptive(processor.explained, x[i : i + 2], targets[i : i + 2], seeds=seeds[i : i + 2],
                            target_reliability=0.93, min_samples=16, max_samples=128, **kw)
    hook.remove()
    assert sum(per_batch) == sum(passes)  # the same samples
    assert len(passes) < len(per_batch)
    assert fill > 0.8 > 0.5 >= sum(per_batch) / (64 * len(per_batch))


@pytest.mark.usefixtures("job_backend")
def test_a_retried_shard_and_another_batch_size_give_byte_identical_maps_in_a_real_job(tmp_path):
    """Contract 2 under Ray: an adaptive shard whose actor died mid-job is redone on a new replica
    with the same per-image sample counts and the same maps, bit for bit, whatever the batch size."""
    import shutil

    import pandas as pd

    from sgcore.pipeline import run_job

    root = tmp_path / "img"
    write_images(root, n_per_class=3)
    shutil.copy(root / "cat" / "cat_0.png", root / "cat" / "crash-me.png")
    settings = dict(model="demo", weights="default", image_size=32, shard_size=4, progress=False, **POLICY)

    def maps(out, **kw) -> pd.DataFrame:
        result = run_job(JobConfig(input=str(root), output=str(tmp_path / out), **settings, **kw))
        assert result.success and result.errors == 0
        df = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / out).glob("part-*.parquet"))])
        return df.set_index("image_id").sort_index(), result

    plain, _ = maps("plain", batch_size=16)
    retried, result = maps("retried", batch_size=3, max_batch=40, max_retries=2, inject_faults="exit:crash-me@0")
    assert result.actors_lost == 1  # the fault did fire: the shard ran twice
    assert len(plain) == 7 and list(retried.index) == list(plain.index)
    assert (retried.n_samples == plain.n_samples).all() and plain.n_samples.between(16, 64).all()
    assert plain.n_samples.nunique() > 1  # images stopped at different rounds
    assert retried.reliability.tolist() == plain.reliability.tolist()
    for a, b in zip(plain.saliency, retried.saliency, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
