"""The tiny-compute benchmark's in-process side: the job's work per shard, each stage timed (no Ray)."""

from sgcore.bench.tiny import in_process, make_images, to_markdown


def test_in_process_run_times_each_stage_and_writes_every_part(tmp_path):
    src = make_images(tmp_path / "in", 12, 32)
    one = in_process(src, tmp_path / "out", image_size=32, n_samples=1, shard_size=5)
    assert one["images"] == 12
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet")) == \
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    stages = [one[k] for k in ("plan_s", "decode_s", "compute_s", "write_s")]
    assert all(s >= 0 for s in stages) and sum(stages) <= one["seconds"] + 0.05
    job = {"images_per_s": 1.0, "seconds": 12.0, "first_commit_s": 5.0, "after_first_commit_s": 7.0,
           "replica_task_s": 3.0}
    assert "| 5 |" in to_markdown([{"shard_size": 5, "in_process": one, "job": job, "ratio": 0.5}])


def test_bad_shard_sizes_exit_2_with_one_line(capsys, tmp_path):
    from jobs import benchmark

    assert benchmark.main(["--mode", "tiny", "--shard-sizes", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard-sizes must be >= 1; got 0" in err[0]
