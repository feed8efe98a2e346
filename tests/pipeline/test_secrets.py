"""No credential inside a URL reaches an artifact, the console or Ray's logs (docs/design.md contract 10).

A real job in a subprocess reads its checkpoint and its labels over HTTP from URLs
that carry a unique secret in their userinfo and in a signed-URL query (they work:
the server ignores both); the audit runs on the result. The secret is then grepped
in every file of the output and of the report, in the console of both, and in every
file of the job's Ray session (its own ``RAY_TMPDIR``). The unit tests of each place
are ``tests/test_redact.py``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_images
from tests.pipeline.test_faults import REPO


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A folder served over HTTP on 127.0.0.1 (any userinfo and query are ignored)."""
    root = tmp_path / "srv"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, server.server_address[1]
    server.shutdown()
    server.server_close()


def _leaks(secret: str, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_file() and not f.is_symlink():
                try:
                    data = f.read_bytes()
                except OSError:  # a socket or a file Ray removed meanwhile
                    continue
                if secret.encode() in data:
                    found.append(str(f))
    return found


def _env(ray_tmp: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = ray_tmp
    return env


def test_a_secret_in_urls_reaches_no_artifact_console_or_ray_log(tmp_path, http_dir):
    srv, port = http_dir
    secret = "S" + uuid.uuid4().hex
    ids = write_images(tmp_path / "in", n_per_class=2, size=24)
    shutil.copy(REPO / "sgcore" / "models" / "weights" / "demo.pt", srv / "demo.pt")
    (srv / "labels.csv").write_text("image_id,label\n" + "".join(f"{i},{i.split('/')[0]}-x\n" for i in ids))
    base = f"http://reader:{secret}@127.0.0.1:{port}"
    weights = f"{base}/demo.pt?X-Amz-Credential={secret}&X-Amz-Signature={secret}&token={secret}"
    labels = f"{base}/labels.csv?sv=2022-11-02&sig={secret}"
    out, report = tmp_path / "out", tmp_path / "audit"
    # Ray's session of this job alone, on a short path (Unix socket names are limited to 107 bytes).
    ray_tmp = tempfile.mkdtemp(prefix="sgr", dir="/tmp")
    try:
        job = subprocess.run(
            [sys.executable, "-m", "jobs.smoothgrad", "--input", str(tmp_path / "in"), "--output", str(out),
             "--model", "demo", "--weights", weights, "--labels", labels, "--n-samples", "4",
             "--shard-size", "2", "--num-actors", "1", "--gpus-per-actor", "0"],
            cwd=REPO, env=_env(ray_tmp), capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stderr[-3000:]
        audit = subprocess.run(
            [sys.executable, "-m", "jobs.audit", "--results", str(out), "--report", str(report),
             "--weights", weights, "--no-sanity", "--no-faithfulness", "--no-localization", "--no-strategies"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert audit.returncode == 0, audit.stderr[-3000:]
        sessions = list(Path(ray_tmp).glob("ray/session_2*"))
        assert len(sessions) == 1 and list(sessions[0].rglob("*.log")), "the job's Ray session was not found"
        # The secret worked: the checkpoint loaded and the labels were read.
        rows = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
        assert sorted(rows["image_id"]) == sorted(ids) and (rows["status"] == "ok").all()
        assert sorted(rows["label"]) == sorted(f"{i.split('/')[0]}-x" for i in ids)
        # ... and went nowhere.
        for text, where in ((job.stdout, "job stdout"), (job.stderr, "job stderr"),
                            (audit.stdout, "audit stdout"), (audit.stderr, "audit stderr")):
            assert secret not in text, where
        assert _leaks(secret, out, report, Path(ray_tmp)) == []
        # What names the objects is kept, the credentials are not.
        manifest = json.loads((out / "_manifest.json").read_text())
        shown = f"http://***@127.0.0.1:{port}/demo.pt?X-Amz-Credential=***&X-Amz-Signature=***&token=***"
        assert manifest["config"]["weights"] == manifest["model"]["weights"] == shown
        assert list(manifest["model"]["files"]) == [shown]
        assert manifest["config"]["labels"] == f"http://***@127.0.0.1:{port}/labels.csv?sv=2022-11-02&sig=***"
        assert json.loads((report / "summary.json").read_text())["weights"] == shown
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("case", ["s3-userinfo", "missing-signed-checkpoint"])
def test_credentials_in_a_url_that_fails_are_one_line_exit_2(tmp_path, http_dir, case):
    _, port = http_dir
    secret = "S" + uuid.uuid4().hex
    write_images(tmp_path / "in", n_per_class=1, size=24)
    if case == "s3-userinfo":
        # s3fs takes no credentials from the URL: they would become the bucket's name.
        args = ["--input", f"s3://AKIAEXAMPLE:{secret}@bucket/imgs/", "--model", "demo"]
        line = ("error: s3://***@bucket/imgs/: s3:// does not take credentials from the URL (user:secret@ would "
                "be read as part of the bucket name); remove them from the URL and pass them through the "
                "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...) or "
                "--storage-options '{\"key\": ..., \"secret\": ...}'")
    else:
        args = ["--input", str(tmp_path / "in"), "--model", "demo",
                "--weights", f"http://u:{secret}@127.0.0.1:{port}/gone.pt?X-Amz-Signature={secret}"]
        line = f"error: checkpoint http://***@127.0.0.1:{port}/gone.pt?X-Amz-Signature=*** not found"
    proc = subprocess.run([sys.executable, "-m", "jobs.smoothgrad", *args, "--output", str(tmp_path / "out")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [line], proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    assert _leaks(secret, tmp_path) == []
