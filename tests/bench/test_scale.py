"""The scale benchmark at CI size: planning 10^3 and 10^4 files, each in its own process, and its table."""

import json

import pytest

from jobs import benchmark


def test_scale_mode_writes_the_table_and_cost_per_file_does_not_grow(tmp_path, capsys):
    assert benchmark.main(["--mode", "scale", "--sizes", "1000", "10000", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scale.json").read_text())
    small, large = rows
    assert [(r["store"], r["files"], r["code"], r["shards"], r["images"]) for r in rows] == \
        [("local", 1000, "this", 4, 1000), ("local", 10000, "this", 40, 10000)]
    assert "| local | 10,000 | this |" in (tmp_path / "scale.md").read_text()
    assert "| local | 10,000 | this |" in capsys.readouterr().out
    # per shard, the manifest costs the same at 4 and 40 shards (it lists shards, not files)
    per_shard = [r["manifest_bytes"] / r["shards"] for r in rows]
    assert per_shard[1] < 1.5 * per_shard[0]
    # Linear planning costs about as much per file at 10^4 as at 10^3; a quadratic step 10x more.
    # (CPU time: on a shared machine the wall clock measures the neighbours too.)
    assert large["cpu_seconds"] / 10_000 < 3 * small["cpu_seconds"] / 1_000 + 20e-6, rows
    # (memory per file is checked exactly, with tracemalloc, in tests/io/test_scale_listing.py: at 10^4 files
    # the RSS growth is mostly fixed costs)


@pytest.mark.parametrize(("argv", "line"), [
    (["--sizes", "0"], "--sizes must be >= 1; got 0"),
    (["--sizes"], "--mode scale needs --sizes or --s3-sizes"),
    (["--baseline", "/nonexistent"], "--baseline /nonexistent holds no sgcore package"),
])
def test_bad_scale_arguments_exit_2_with_one_line(capsys, tmp_path, argv, line):
    assert benchmark.main(["--mode", "scale", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0]
