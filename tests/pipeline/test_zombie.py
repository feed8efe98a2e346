"""A driver frozen past its lease (SIGSTOP, as Ctrl-Z, a laptop sleep or a suspended VM do)
while another run takes the output over: once thawed it writes nothing and exits non-zero with
one line (issue 25, item 1). A real job in a subprocess, real signals, a 2 s lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import ray

from sgcore.results import open_results_dir
from tests.pipeline.test_faults import REPO, _dataset, _job_cmd, _mtimes, _wait_gone


@pytest.mark.slow
def test_a_frozen_driver_that_lost_its_lease_writes_nothing_when_thawed(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    ids = _dataset(tmp_path / "in", 4)  # 8 images, 4 shards
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "SGCORE_LEASE_TTL_S": "2"}
    a_env = {**env, "SGCORE_TEST_RUN": f"{tmp_path.name}-a"}
    b_env = {**env, "SGCORE_TEST_RUN": f"{tmp_path.name}-b"}
    first = subprocess.Popen(_job_cmd(tmp_path / "in", out, "--quiet"), cwd=REPO, env=a_env,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob("part-*.parquet")):
            assert first.poll() is None, "the first job ended before it could be frozen"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)  # the whole job, as Ctrl-Z does
        time.sleep(3)  # past its 2 s lease
        second = subprocess.run(_job_cmd(tmp_path / "in", out, "--quiet", "--n-samples", "4", "--overwrite"),
                                cwd=REPO, env=b_env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        done_b = _mtimes(out)
        manifest_b = (out / "_manifest.json").read_bytes()
        os.killpg(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGKILL)
    _wait_gone(f"SGCORE_TEST_RUN={tmp_path.name}-a")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert first.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith("error: run ") and "lost its claim on" in lines[-1], stderr[-3000:]
    assert lines[-1].endswith(f"stopped without writing more to {out}"), lines[-1]
    time.sleep(1)
    # Everything under the output is the second run's.
    assert (out / "_manifest.json").read_bytes() == manifest_b and _mtimes(out) == done_b
    manifest = json.loads(manifest_b)
    assert manifest["config"]["n_samples"] == 4 and manifest["status"] == "complete"
    assert json.loads((out / "_SUCCESS").read_text())["token"] == manifest["token"]
    df = pd.concat([pd.read_parquet(p, columns=["image_id", "n_samples"]) for p in sorted(out.glob("part-*"))])
    assert sorted(df.image_id) == ids and set(df.n_samples) == {4}
    assert open_results_dir(str(out)).complete
    # Resuming the second config: nothing to redo, nothing rewritten.
    again = subprocess.run(_job_cmd(tmp_path / "in", out, "--quiet", "--n-samples", "4"), cwd=REPO, env=b_env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _mtimes(out) == done_b
