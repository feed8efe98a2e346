"""SIGTERM (what schedulers, ``ray job stop`` and Kubernetes send) stops the job like Ctrl-C.

A real job in a subprocess, a real signal: to the job's process, and to its whole
process group (the driver, Ray's raylet and the workers all at once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import ray

from tests.pipeline.test_faults import REPO, _dataset, _job_cmd, _mtimes, _wait_gone

LINE = "stopped by SIGTERM; rerun the same command to resume (committed shards are kept)"


@pytest.mark.parametrize("target", ["process", pytest.param("group", marks=pytest.mark.slow)])  # group: the same path
def test_sigterm_records_stopped_exits_143_with_one_line_and_nothing_commits_after(tmp_path, target):
    if ray.is_initialized():
        ray.shutdown()
    _dataset(tmp_path / "in", 8)  # 16 images, 8 shards
    out = tmp_path / "out"
    marker = f"SGCORE_TEST_RUN={tmp_path.name}"
    env = {**os.environ, "SGCORE_TEST_RUN": tmp_path.name, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    proc = subprocess.Popen(_job_cmd(tmp_path / "in", out, "--quiet"), cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob("part-*.parquet")):
            assert proc.poll() is None, "the job ended before it could be stopped"
            time.sleep(0.05)
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped_at = _mtimes(out)
    assert proc.returncode == 143, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1] == LINE, stderr[-3000:]
    assert "Traceback" not in stderr and "Stack trace" not in stderr and "*** " not in stderr, stderr[-3000:]
    # A local Ray keeps token authentication on without Ray's notice on every run.
    assert "Token authentication is enabled" not in stderr, stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["runs"][-1]["stopped_by"] == "SIGTERM"
    assert not any(e["status"] == "running" for e in manifest["shards"].values())
    assert 1 <= len(stopped_at) < 8 and not (out / "_SUCCESS").exists()
    _wait_gone(marker)
    time.sleep(2)
    assert _mtimes(out) == stopped_at, "a part was committed after the driver had gone"
