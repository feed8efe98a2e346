"""Real faults, real processes: exactly one row per image whatever happens.

Faults come from outside the job (SIGKILL of an actor process of this test's
own job, of the whole job process group, removal of a Ray node) or from the
job's ``inject_faults`` option (an actor that exits abruptly, a shard that
always raises).

The tests with ``job_backend`` run in process in CI (the scheduler's decisions,
:mod:`sgcore.pipeline.inprocess`) and on a local Ray under ``slow``; the three
SIGKILL drills (an actor, a node, the driver's process group) stay real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch

from sgcore.config import JobConfig
from sgcore.io import read_part_metadata
from sgcore.pipeline import JobFailed, run_job
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(model="resnet18", weights="none", image_size=32, n_samples=4, shard_size=2,
             batch_size=2, progress=False)


# Faults the actors inject for images named crash-me / poison / doomed.
FAULTS = "exit:crash-me@0,raise:poison,raise:doomed@0"


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))],
                     ignore_index=True)


def _dataset(root: Path, n_per_class: int, extra: tuple[str, ...] = ()) -> list[str]:
    ids = write_images(root, n_per_class=n_per_class, size=24)
    from PIL import Image

    for name in extra:
        Image.new("RGB", (24, 24), (40, 90, 200)).save(root / name)
        ids.append(name)
    return sorted(ids)


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}


def _assert_exactly_once(out: Path, ids: list[str], *, success: bool = True) -> pd.DataFrame:
    df = _rows(out)
    assert sorted(df.image_id) == ids, "every image exactly once"
    assert (out / "_SUCCESS").exists() == success
    return df


@pytest.mark.usefixtures("job_backend")
def test_actor_exit_is_retried_and_poison_shard_becomes_error_rows(tmp_path):
    ids = _dataset(tmp_path / "in", 3, extra=("crash-me.png", "poison.png"))
    out = tmp_path / "out"
    result = run_job(JobConfig(input=str(tmp_path / "in"), output=str(out), max_retries=1, inject_faults=FAULTS,
                               **SMALL))
    # a failed shard: every row is there, but the output is not complete
    df = _assert_exactly_once(out, ids, success=False)
    manifest = json.loads((out / "_manifest.json").read_text())
    crash_shard = df.set_index("image_id").loc["crash-me.png", "shard"]
    poison_shard = df.set_index("image_id").loc["poison.png", "shard"]
    # the actor died once on crash-me's shard; the retry on a new actor succeeded
    assert manifest["shards"][crash_shard]["status"] == "committed"
    assert manifest["shards"][crash_shard]["attempts"] == 2
    assert "actor died" in manifest["shards"][crash_shard]["failures"][0]
    assert (df[df.shard == crash_shard].status == "ok").all()
    # the poison shard failed twice (max_retries=1): its images are error rows
    poison = df[df.shard == poison_shard]
    assert (poison.status == "error").all() and poison.error.str.contains("injected fault").all()
    assert manifest["shards"][poison_shard]["status"] == "failed"
    assert manifest["status"] == "failed" and manifest["failed_shards"] == [poison_shard]
    assert not result.success and result.failed_shards == [poison_shard]
    assert result.actors_lost >= 1
    assert (df[~df.shard.isin([poison_shard])].status == "ok").all()


@pytest.mark.usefixtures("job_backend")
def test_failed_shard_is_redone_by_the_rerun_and_only_it(tmp_path):
    # sorted ids: [cat/broken.jpg, cat/cat_0.png] [cat/cat_1.jpg, cat/doomed.png] [dog/...]
    ids = _dataset(tmp_path / "in", 2, extra=("cat/doomed.png",))
    (tmp_path / "in" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    ids = sorted([*ids, "cat/broken.jpg"])
    out = tmp_path / "out"
    cfg = dict(input=str(tmp_path / "in"), output=str(out), max_error_rate=1.0, inject_faults=FAULTS, **SMALL)
    # raise:doomed@0: the shard fails the first attempt of every run; with no
    # retry the first run gives up on it, the rerun (retries are not part of
    # the config hash) gets past it.
    first = run_job(JobConfig(max_retries=0, **cfg))
    df = _assert_exactly_once(out, ids, success=False).set_index("image_id")
    doomed = df.loc["cat/doomed.png", "shard"]
    assert not first.success and first.shards_failed == 1 and first.failed_shards == [doomed]
    assert list(df.index[df.shard == doomed]) == ["cat/cat_1.jpg", "cat/doomed.png"]
    assert (df[df.shard == doomed].status == "error").all()
    assert df[df.shard == doomed].error.str.contains("injected fault").all()
    # a corrupt file is a per-image error, not a shard failure
    assert df.loc["cat/broken.jpg", "status"] == "error"
    assert (df[(df.shard != doomed) & (df.index != "cat/broken.jpg")].status == "ok").all()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_shards"] == [doomed]
    assert manifest["shards"][doomed]["status"] == "failed"
    assert manifest["totals"]["shards_failed"] == 1 and manifest["totals"]["rows"] == 6
    footers = {p.name: read_part_metadata(str(p))["status"] for p in out.glob("part-*.parquet")}
    assert footers == {"part-00000.parquet": "committed", f"part-{doomed}.parquet": "failed",
                       "part-00002.parquet": "committed"}
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*.parquet")}

    second = run_job(JobConfig(max_retries=1, **cfg))
    df = _assert_exactly_once(out, ids, success=True).set_index("image_id")
    assert second.success and second.shards_skipped == 2 and second.rows == 6
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*.parquet")}
    redone = f"part-{doomed}.parquet"
    assert {k: v for k, v in after.items() if k != redone} == {
        k: v for k, v in before.items() if k != redone}, "committed parts untouched"
    assert after[redone][1] != before[redone][1]
    assert list(df.index[df.status == "error"]) == ["cat/broken.jpg"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["failed_shards"] == []
    assert manifest["shards"][doomed]["status"] == "committed"
    assert [r["status"] for r in manifest["runs"]] == ["failed", "complete"]
    assert manifest["runs"][1]["shards"] == 1 and manifest["runs"][1]["rows"] == 2
    assert manifest["totals"]["rows"] == 6 and manifest["totals"]["ok"] == 5
    assert read_part_metadata(str(out / redone))["status"] == "committed"


@pytest.mark.usefixtures("job_backend")
def test_job_cli_exits_nonzero_naming_failed_shards(tmp_path, capsys):
    from jobs.smoothgrad import main

    _dataset(tmp_path / "in", 2, extra=("poison.png",))
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--model", "resnet18", "--weights", "none", "--image-size", "32", "--n-samples", "2",
                 "--shard-size", "2", "--max-retries", "0", "--quiet", "--inject-faults", FAULTS])
    assert code == 1
    assert "[sgcore] 1 shard failed: 00002" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_local")
def test_sigkill_of_an_actor_mid_job(tmp_path):
    ids = _dataset(tmp_path / "in", 8)
    out = tmp_path / "out"
    box: dict = {}
    cfg = JobConfig(input=str(tmp_path / "in"), output=str(out), **{**SMALL, "n_samples": 24})
    job = threading.Thread(target=lambda: box.setdefault("result", run_job(cfg)))
    job.start()
    killed = _kill_actor_after_first_part(out, job)
    job.join(timeout=300)
    assert killed, "the job finished before an actor could be killed"
    result = box["result"]
    _assert_exactly_once(out, ids)
    assert result.actors_lost >= 1 and result.success


def _kill_actor_after_first_part(out: Path, job: threading.Thread) -> bool:
    """SIGKILLs a live actor of this test's own Ray job, by the pid Ray's actor table records.

    Never a process found by name: other Ray sessions run on the same machine.
    """
    from ray._private.state import actors

    own_job = ray.get_runtime_context().job_id
    deadline = time.time() + 240
    while time.time() < deadline and job.is_alive():
        if list(out.glob("part-*.parquet")):
            pids = [a["Pid"] for a in actors(job_id=own_job, actor_state_name="ALIVE").values()
                    if a["ActorClassName"].endswith("SaliencyActor") and a["Pid"]]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                return True
        time.sleep(0.05)
    return False


@pytest.mark.usefixtures("job_backend")
def test_max_error_rate_stops_a_job_of_errors(tmp_path):
    # A checkpoint whose head is NaN: every map is non-finite.
    import torchvision

    net = torchvision.models.resnet18(num_classes=4)
    state = net.state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    ckpt = tmp_path / "nan.pt"
    torch.save(state, ckpt)
    ids = _dataset(tmp_path / "in", 3)
    cfg = dict(SMALL, weights=str(ckpt), shard_size=3)
    with pytest.raises(JobFailed, match=r"6 of the first 6 images failed \(over --max-error-rate 0.5\)"):
        run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "a"), **cfg))
    assert not (tmp_path / "a" / "_SUCCESS").exists()
    result = run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "b"),
                               max_error_rate=1.0, **cfg))
    df = _assert_exactly_once(tmp_path / "b", ids)
    assert (df.status == "error").all() and df.error.str.contains("NaN").all()
    assert result.errors == 6


@pytest.mark.usefixtures("job_backend")
def test_transient_storage_errors_on_reads_and_writes_are_retried(tmp_path):
    ids = _dataset(tmp_path / "in", 4)
    opts = {"fail_fraction": 0.7, "failures": 2, "error": "slowdown"}
    result = run_job(JobConfig(input=f"flaky://{tmp_path}/in", output=f"flaky://{tmp_path}/out",
                               storage_options=opts, **SMALL))
    df = _assert_exactly_once(tmp_path / "out", ids)
    assert (df.status == "ok").all() and result.success


@pytest.mark.usefixtures("job_backend")
def test_permanent_read_errors_become_error_rows_naming_the_url(tmp_path):
    from sgcore.io._flaky import FlakyFileSystem

    ids = _dataset(tmp_path / "in", 4)
    opts = {"fail_fraction": 0.3, "failures": -1, "error": "permission", "ops": ["cat_file"]}
    # Which paths fail depends on tmp_path: pick the first seed that dooms some images but not all.
    opts["seed"] = next(seed for seed in range(100) if 0 < sum(
        FlakyFileSystem(**opts, seed=seed).chosen(f"{tmp_path}/in/{i}") for i in ids) < len(ids))
    run_job(JobConfig(input=f"flaky://{tmp_path}/in", output=str(tmp_path / "out"),
                      storage_options=opts, max_error_rate=1.0, **SMALL))
    df = _assert_exactly_once(tmp_path / "out", ids).set_index("image_id")
    fs = FlakyFileSystem(**opts)
    doomed = {i for i in ids if fs.chosen(f"{tmp_path}/in/{i}")}
    assert doomed and doomed != set(ids)
    assert set(df.index[df.status == "error"]) == doomed
    for i in doomed:
        assert f"{tmp_path}/in/{i}" in df.error[i]


def test_permanent_write_failure_is_one_clear_line(tmp_path, capsys):
    from jobs.smoothgrad import main

    _dataset(tmp_path / "in", 1)
    # the output sits under a regular file: every write must fail (root ignores modes)
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "cat" / "cat_0.png" / "x"),
                 "--model", "resnet18", "--weights", "none", "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "cat_0.png/x" in err and "Traceback" not in err


# These end the module: they shut the module's Ray down.
def _job_cmd(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.smoothgrad", "--input", str(inp), "--output", str(out),
            "--model", "resnet18", "--weights", "none", "--image-size", "32", "--shard-size", "2",
            "--n-samples", "24", "--batch-size", "2", *extra]


def _ray_processes(session_marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if session_marker.encode() in env:
                found.append(int(d.name))
    return found


def test_sigkill_of_the_job_process_group_then_rerun_resumes(tmp_path, in_process_jobs, capsys):
    """The killed job is real (a CLI process and its Ray); the rerun runs its replicas in this process:
    what it must get right (the committed parts kept, the rest done once) is the driver's resume."""
    if ray.is_initialized():
        ray.shutdown()
    ids = _dataset(tmp_path / "in", 8)
    out = tmp_path / "out"
    marker = f"SGCORE_TEST_RUN={tmp_path.name}"
    env = {**os.environ, "SGCORE_TEST_RUN": tmp_path.name, "PYTHONPATH": str(REPO),
           "RAY_ADDRESS": ""}
    proc = subprocess.Popen(_job_cmd(tmp_path / "in", out, "--quiet"), cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    committed = _mtimes(out)
    assert 2 <= len(committed) < 8 and not (out / "_SUCCESS").exists()
    _wait_gone(marker)

    from jobs.smoothgrad import main

    capsys.readouterr()
    assert main(_job_cmd(tmp_path / "in", out)[3:]) == 0
    assert "already done" in capsys.readouterr().out
    assert in_process_jobs, "the rerun ran in this process"
    _assert_exactly_once(out, ids)
    after = _mtimes(out)
    assert {k: after[k] for k in committed} == committed, "committed parts untouched by the resume"


def _wait_gone(marker: str) -> None:
    """No Ray process of the killed job may outlive it (fate sharing)."""
    deadline = time.time() + 30
    while time.time() < deadline and _ray_processes(marker):
        time.sleep(0.5)
    left = _ray_processes(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray processes outlived the job: {left}"


def test_node_removed_mid_job_completes_exactly_once(tmp_path):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    ids = _dataset(tmp_path / "in", 8)
    out = tmp_path / "out"
    # Fast health checks so that the lost node is noticed in seconds, not a minute.
    # Two nodes (the head survives; a third raylet only cost CPU on a small machine): the pool's
    # SPREAD places a replica on each, so the doomed node takes one with it.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4},
    })
    try:
        doomed = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        box: dict = {}
        cfg = JobConfig(input=str(tmp_path / "in"), output=str(out), **{**SMALL, "n_samples": 24})
        job = threading.Thread(target=lambda: box.setdefault("result", run_job(cfg)))
        job.start()
        deadline = time.time() + 240
        while time.time() < deadline and job.is_alive() and not list(out.glob("part-*.parquet")):
            time.sleep(0.05)
        assert job.is_alive(), "the job finished before the node could be removed"
        cluster.remove_node(doomed, allow_graceful=False)
        job.join(timeout=400)
        assert not job.is_alive()
        result = box["result"]
        _assert_exactly_once(out, ids)
        assert result.success and result.actors_lost >= 1
    finally:
        ray.shutdown()
        cluster.shutdown()
