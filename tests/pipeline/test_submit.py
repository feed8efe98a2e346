"""A real local Ray head with token auth; jobs submitted through the Jobs API.

The head is started by this module with ``ray start --head --block`` in its
own process group (its own ports, its own short temp dir, dashboard on
127.0.0.1), and that process group is killed at the end, pass or fail. No
global ``ray stop``: other Ray clusters on the machine are left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _own_pids(marker: str) -> dict[int, str]:
    """Processes whose command line mentions ``marker`` (our temp dir)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found[int(entry.name)] = cmd[:200]
    return found


def _get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0  # not listening (yet)


@pytest.fixture(scope="module")
def ray_head():
    """A token-auth head on loopback; yields (dashboard URL, env for clients)."""
    temp_dir = tempfile.mkdtemp(prefix="sgr-", dir="/tmp")  # short: socket paths <= 107 bytes
    gcs, dash, agent, agent_grpc, rt_agent, metrics = _free_ports(6)
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # The job's `python` must be this venv's, where ray and torch live.
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(RAY), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_agent}", f"--metrics-export-port={metrics}",
        f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=0",
        "--object-store-memory=200000000", "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "head.log", "wb")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while _get(f"{url}/api/version", token) != 200:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray head did not start:\n"
                                   + (Path(temp_dir) / "head.log").read_text()[-3000:])
            time.sleep(0.5)
        client_env = dict(env)
        yield {"url": url, "env": client_env, "token": token, "temp_dir": temp_dir,
               "dashboard_port": dash}
    finally:
        _stop(head, temp_dir)
        log.close()
        leftovers = _own_pids(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    # SIGTERM lets `ray start --block` tear its children down; then make sure.
    pgid = head.pid
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if head.poll() is not None and not _own_pids(temp_dir):
                return
            time.sleep(0.5)
    # Anything that left our process group but still runs from our temp dir is ours too.
    for pid in _own_pids(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1)


def _submit(ray_head, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "jobs.submit", "--address", ray_head["url"], *args],
        cwd=REPO, env=env if env is not None else ray_head["env"],
        capture_output=True, text=True, timeout=timeout,
    )


def test_dashboard_binds_loopback_and_requires_the_token(ray_head):
    url = ray_head["url"]
    assert _get(f"{url}/api/jobs/", None) == 401
    assert _get(f"{url}/api/jobs/", "not-the-token") == 403
    assert _get(f"{url}/api/jobs/", ray_head["token"]) == 200
    # Bound to loopback only: not reachable on any other local address.
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    port_hex = f"{ray_head['dashboard_port']:04X}"
    binds = {line.split()[1] for line in listening if line.split()[1].endswith(":" + port_hex)
             and line.split()[3] == "0A"}
    assert binds == {f"0100007F:{port_hex}"}


def test_job_client_sends_an_explicit_token(ray_head):
    from sgcore.pipeline.cluster import job_client

    assert isinstance(job_client(ray_head["url"], token=ray_head["token"]).list_jobs(), list)
    with pytest.raises(Exception, match="403|[Ii]nvalid"):
        job_client(ray_head["url"], token="wrong").list_jobs()


def test_submit_without_token_is_refused(ray_head):
    env = {k: v for k, v in ray_head["env"].items() if k not in ("RAY_AUTH_TOKEN",)}
    env["RAY_AUTH_TOKEN_PATH"] = os.devnull  # no token anywhere, not even ~/.ray/auth_token
    env["RAY_AUTH_MODE"] = "disabled"
    r = _submit(ray_head, "--no-wait", "--", "python", "-c", "print(1)", env=env)
    assert r.returncode != 0
    assert "401" in r.stderr or "Authentication required" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_job_runs_from_the_working_dir_and_streams_logs(ray_head, tmp_path):
    # A copy of the project with decoys in every excluded place.
    work = tmp_path / "proj"
    for pkg in ("sgcore", "jobs"):
        shutil.copytree(REPO / pkg, work / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for excluded in (".venv", ".git", "data", "outputs"):
        (work / excluded).mkdir()
        (work / excluded / "big.bin").write_bytes(b"x" * 1000)
    probe = (
        "import os, ray, sgcore, json; ray.init(); "
        "print('SGCORE_FROM', sgcore.__file__); "
        "print('CWD_HAS', json.dumps(sorted(os.listdir('.')))); "
        "print('RES', ray.cluster_resources().get('CPU'))"
    )
    r = _submit(ray_head, "--working-dir", str(work), "--", "python", "-c", probe)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stderr
    sgcore_from = next(line.split(" ", 1)[1] for line in r.stdout.splitlines()
                       if line.startswith("SGCORE_FROM"))
    # The uploaded copy, not the editable install in /work/main.
    assert sgcore_from.startswith(ray_head["temp_dir"]), sgcore_from
    listing = json.loads(next(line.split(" ", 1)[1] for line in r.stdout.splitlines()
                              if line.startswith("CWD_HAS")))
    assert "sgcore" in listing and "jobs" in listing
    for excluded in (".venv", ".git", "data", "outputs"):
        assert excluded not in listing
    assert "RES 2.0" in r.stdout


@pytest.mark.slow
def test_failed_job_gives_exit_status_1(ray_head):
    r = _submit(ray_head, "--", "python", "-c", "raise SystemExit(3)")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "FAILED" in r.stderr


@pytest.mark.slow
def test_smoothgrad_job_through_the_jobs_api(ray_head, image_dir, tmp_path):
    # The README's path, with Ray's own CLI: `ray job submit --working-dir . -- ...`.
    out = tmp_path / "out"
    r = subprocess.run(
        [str(RAY), "job", "submit", "--address", ray_head["url"], "--working-dir", ".", "--",
         "python", "-m", "jobs.smoothgrad", "--input", str(image_dir), "--output", str(out),
         "--model", "resnet18", "--weights", "none", "--image-size", "32", "--n-samples", "4",
         "--shard-size", "3", "--batch-size", "4", "--quiet"],
        cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=300,
    )
    logs = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, logs
    assert "succeeded" in logs.lower(), logs
    assert (out / "_SUCCESS").exists()
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet",
                                       "part-00002.parquet"]
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert len(df) == 7 and df.image_id.is_unique
    assert (df.status == "ok").sum() == 6 and list(df[df.status == "error"].image_id) == [
        "cat/broken.jpg"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["totals"]["rows"] == 7


# ---- jobs.submit without a cluster (a fake client) ---------------------------


class _FakeClient:
    def __init__(self, final: str):
        self.final = final
        self.kw: dict = {}

    def submit_job(self, **kw):
        self.kw = kw
        return "raysubmit_42"

    def get_job_status(self, job_id):
        return self.final

    async def tail_job_logs(self, job_id):
        yield "log line\n"


@pytest.mark.parametrize(("final", "code"), [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_main_exits_with_the_job_status(monkeypatch, capsys, tmp_path, final, code):
    import jobs.submit as js

    client = _FakeClient(final)
    monkeypatch.setattr("sgcore.pipeline.submit.job_client", lambda address: client)
    argv = ["--working-dir", str(tmp_path), "--env", "A=1", "--", "python", "-m", "jobs.smoothgrad",
            "--input", "s3://b/in dir/"]
    assert js.main(argv) == code
    assert client.kw["entrypoint"] == "python -m jobs.smoothgrad --input 's3://b/in dir/'"
    env = client.kw["runtime_env"]
    assert env["working_dir"] == str(tmp_path) and "/.venv/" in env["excludes"]
    assert env["env_vars"] == {"A": "1"}
    out = capsys.readouterr()
    assert "log line" in out.out and f"job raysubmit_42 {final}" in out.err


def test_main_no_wait_and_no_working_dir(monkeypatch, capsys):
    import jobs.submit as js

    client = _FakeClient("RUNNING")
    monkeypatch.setattr("sgcore.pipeline.submit.job_client", lambda address: client)
    assert js.main(["--no-wait", "--no-working-dir", "--", "python", "-V"]) == 0
    assert capsys.readouterr().out.strip() == "raysubmit_42"
    assert "runtime_env" not in client.kw


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], r"give the command after --"),
        (["--env", "NOEQUALS", "--", "python"], r"--env must be KEY=VALUE; got \['NOEQUALS'\]"),
    ],
)
def test_main_usage_errors(capsys, argv, message):
    import re

    import jobs.submit as js

    with pytest.raises(SystemExit) as e:
        js.main(argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


# ---- jobs.submit that cannot submit: exit 2 and one line, no cluster needed -------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _no_ray_env(monkeypatch) -> None:
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)


def test_unreachable_dashboard_is_one_line_exit_2(monkeypatch, capsys):
    import jobs.submit as js

    _no_ray_env(monkeypatch)
    url = f"http://127.0.0.1:{_closed_port()}"
    assert js.main(["--address", url, "--no-working-dir", "--", "echo", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: cannot reach the Ray dashboard at {url} ([Errno 111] Connection refused); "
                           "check --address and that the cluster is up")


def test_explicit_address_wins_over_ray_address(monkeypatch, capsys):
    import jobs.submit as js

    # Ray alone would use RAY_ADDRESS and ignore the argument.
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_closed_port()}")
    url = f"http://127.0.0.1:{_closed_port()}"
    assert js.main(["--address", url, "--no-working-dir", "--", "echo", "hi"]) == 2
    assert f"cannot reach the Ray dashboard at {url} (" in capsys.readouterr().err


def test_no_address_and_no_local_cluster_is_one_line_exit_2(monkeypatch, capsys):
    import ray._private.services as services

    import jobs.submit as js

    _no_ray_env(monkeypatch)
    # Other Ray instances may run on this machine: make auto-detection find none.
    nothing = lambda *a, **k: None  # noqa: E731
    none_found = lambda: []  # noqa: E731
    none_found.cache_clear = nothing
    monkeypatch.setattr(services, "find_bootstrap_address", nothing)
    monkeypatch.setattr(services, "find_gcs_addresses", none_found)
    assert js.main(["--no-working-dir", "--", "echo", "hi"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no --address and no RAY_ADDRESS (Could not find any running Ray instance): "
        "pass --address http://<head>:8265")


@pytest.mark.parametrize(("status", "said"), [(401, "Authentication required"), (403, "Authentication failed")])
def test_refused_token_is_one_line_exit_2(monkeypatch, capsys, status, said):
    import http.server
    import threading

    import jobs.submit as js

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path == "/api/version":  # the client's connection check passes ...
                body = json.dumps({"ray_version": "2.60.0", "version": "x", "session_name": "s"}).encode()
                self.send_response(200)
            else:
                body, _ = b"no", self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - ... the submission is refused
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"token missing or wrong")

        def log_message(self, *args):
            pass

    _no_ray_env(monkeypatch)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert js.main(["--address", url, "--no-working-dir", "--", "echo", "hi"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the Ray dashboard at {url} rejected the token ({said}: "), err
    assert err.endswith("set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head) "
                        "or RAY_AUTH_TOKEN_PATH") and "\n" not in err


def test_bad_working_dir_is_one_line_exit_2(capsys, tmp_path):
    import jobs.submit as js

    missing = tmp_path / "nope"
    assert js.main(["--address", "http://127.0.0.1:9", "--working-dir", str(missing), "--", "echo"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --working-dir: working_dir must be a directory; got {str(missing)!r}"


def test_lost_dashboard_while_waiting_exits_3(monkeypatch, capsys):
    import jobs.submit as js

    class Lost(_FakeClient):
        def get_job_status(self, job_id):
            raise ConnectionError("Failed to connect to Ray at address: http://x:8265.")

        async def tail_job_logs(self, job_id):
            return
            yield

    monkeypatch.setattr("sgcore.pipeline.submit.job_client", lambda address: Lost("RUNNING"))
    assert js.main(["--no-working-dir", "--", "python", "-V"]) == 3
    assert "job raysubmit_42 may still be running (ray job status raysubmit_42)" in capsys.readouterr().err


# ---- every --model source through `ray job submit` ----------------------------

_FACTORY = '''
from torch import nn


def build():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return net, {"crop_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
'''


@pytest.mark.parametrize("source", [
    "py",  # the factory shipped in --working-dir: the most likely to break, so CI runs it
    pytest.param("timm", marks=pytest.mark.slow),
    pytest.param("hf", marks=pytest.mark.slow),
    pytest.param("torchscript", marks=pytest.mark.slow),
    pytest.param("export", marks=pytest.mark.slow),
])
def test_own_model_sources_through_ray_job_submit(ray_head, image_dir, tmp_path, source):
    # Every --model source with Ray's own CLI; the factory lives only in the working dir.
    import torch

    work = tmp_path / "proj"
    for pkg in ("sgcore", "jobs"):
        shutil.copytree(REPO / pkg, work / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "acme_nets").mkdir()
    (work / "acme_nets" / "__init__.py").write_text(_FACTORY)
    pre = {"crop_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.5] * 3}
    extra: list[str] = []
    if source == "py":
        model = "py:acme_nets:build"
    elif source == "timm":
        timm = pytest.importorskip("timm")
        torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), tmp_path / "r10.pth")
        model, extra = "timm:resnet10t", ["--weights", str(tmp_path / "r10.pth"), "--image-size", "32"]
    elif source == "hf":
        transformers = pytest.importorskip("transformers")
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, num_labels=2)
        transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
        model = f"hf:{tmp_path / 'vit'}"
    else:
        from sgcore.models import DemoNet

        net = DemoNet().eval()
        if source == "torchscript":
            torch.jit.save(torch.jit.script(net), str(tmp_path / "net.ts"))
            (tmp_path / "net.ts.preprocess.json").write_text(json.dumps(pre))
            model = f"torchscript:{tmp_path / 'net.ts'}"
        else:
            ep = torch.export.export(net, (torch.zeros(2, 3, 32, 32),),
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
            torch.export.save(ep, str(tmp_path / "net.pt2"))
            model, extra = f"export:{tmp_path / 'net.pt2'}", ["--preprocess", json.dumps(pre)]
    out = tmp_path / "out"
    r = subprocess.run(
        [str(RAY), "job", "submit", "--address", ray_head["url"], "--working-dir", str(work), "--",
         "python", "-m", "jobs.smoothgrad", "--input", str(image_dir), "--output", str(out),
         "--model", model, *extra, "--n-samples", "2", "--shard-size", "4", "--quiet"],
        cwd=tmp_path, env=ray_head["env"], capture_output=True, text=True, timeout=400,
    )
    logs = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, logs
    df = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)
    assert len(df) == 7 and list(df[df.status == "error"].image_id) == ["cat/broken.jpg"]
    ok = df[df.status == "ok"]
    assert len(ok) == 6 and (ok.map_height == 32).all()
    assert all(np.abs(np.asarray(m, np.float32)).sum() > 0 for m in ok.saliency)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["source"] == source and manifest["status"] == "complete"
    assert (out / "_SUCCESS").exists()
