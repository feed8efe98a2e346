"""Shared fixtures: a local Ray per module, tiny datasets, an in-memory store, a moto S3 server on loopback."""

from __future__ import annotations

import faulthandler
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Ray workers must never reach out; keep their logs quiet and their CPUs few.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Under pytest-xdist each worker gets its share of the cores for torch (and the jobs it starts in
# subprocesses): two workers of two threads each on two cores spun against each other (the workers'
# CPU time up to +28 % against one process, docs/performance.md §23). Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _share = (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))

# The fault-injection filesystem (flaky://) exists for tests only: registered
# here, in this process, and by ray_runtime_env() in the tests' Ray workers;
# the job itself never knows of it.
from sgcore.io._flaky import register as _register_flaky  # noqa: E402

_register_flaky()


def ray_runtime_env() -> dict:
    """The tests' Ray workers: one thread each, flaky:// registered (a new dict: Ray edits it)."""
    return {"worker_process_setup_hook": "sgcore.io._flaky.register", "env_vars": {"OMP_NUM_THREADS": "1"}}


# A crash while the interpreter tears down (Ray's gRPC threads, fsspec's event-loop
# thread and torch's pools are still alive at exit) must leave a traceback, not a
# bare "Segmentation fault", and must not turn a passed run into exit 139: the
# outcome is decided when the session finishes, so the process ends right there.
faulthandler.enable(all_threads=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._sgcore_exitstatus = int(exitstatus)  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Ends the process with the session's status once pytest has printed everything.

    Ray is shut down first (a module fixture normally did); then ``os._exit``
    skips the interpreter's finalization, where the segfault seen in CI came from
    (every test had passed and the summary was printed). Only for a session that ran
    (passed, failed, or collected nothing): pytest prints a usage error or an internal
    error *after* this hook, so those take the normal way out. Opt out with
    ``SGCORE_TEST_NORMAL_EXIT=1`` (e.g. to profile teardown).
    """
    status = getattr(config, "_sgcore_exitstatus", None)
    ran = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)
    if status not in ran or os.environ.get("SGCORE_TEST_NORMAL_EXIT") == "1":
        return
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# The modules of the longest real-Ray drills (tens of seconds each on a 2-core box), started first:
# with `make test`'s two pytest-xdist workers (--dist loadfile) they overlap with the short tests
# instead of running alone at the end.
FIRST = ("tests/pipeline/test_faults.py", "tests/pipeline/test_submit.py", "tests/pipeline/test_secrets.py",
         "tests/pipeline/test_own_models.py", "tests/test_ray_data_pipeline.py", "tests/pipeline/test_signals.py",
         "tests/audit/test_truth.py", "tests/audit/test_runner.py")


def _first_key(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return FIRST.index(path) if path in FIRST else len(FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Starts the modules in ``FIRST`` first (a stable sort: the order within a module is kept), and
    skips every ``needs_cuda`` test, in any test folder, on a machine without CUDA.

    The one place that does so: a folder's conftest needs nothing of its own.
    """
    root = Path(__file__).resolve().parents[1]
    gone = [p for p in FIRST if not (root / p).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py FIRST names modules that are not there: {gone}; update it")
    items.sort(key=_first_key)
    gpu_tests = [item for item in items if item.get_closest_marker("needs_cuda")]
    if not gpu_tests:
        return
    import torch  # only when a GPU test was collected: the I/O tests need no torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# The job id of the local Ray that ray_local started, while it runs (one Ray for consecutive modules).
_RAY_LOCAL: dict[str, str] = {}


def _ray_local_up() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return (ray is not None and ray.is_initialized() and bool(_RAY_LOCAL)
            and ray.get_runtime_context().get_job_id() == _RAY_LOCAL.get("job"))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray (2 CPUs) for the module.

    Consecutive modules that use it share one (starting Ray costs seconds on a small
    machine); it is shut down before a module that does not use it
    (:func:`pytest_runtest_teardown`), and a module that needs another Ray shuts it down first.
    """
    import ray

    if not _ray_local_up():
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 runtime_env=ray_runtime_env())
        _RAY_LOCAL["job"] = ray.get_runtime_context().get_job_id()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Shuts ray_local's Ray down where the next test is of another module that does not ask for it."""
    yield
    if not _RAY_LOCAL:
        return
    same_module = nextitem is not None and nextitem.module is item.module
    wanted = nextitem is not None and "ray_local" in nextitem.fixturenames
    if same_module or wanted:
        return
    import ray

    if _ray_local_up():
        ray.shutdown()
    _RAY_LOCAL.clear()


@pytest.fixture
def in_process_jobs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ``run_job`` of the test (the CLI's included) runs its replicas in this process, no Ray.

    The scheduler's decisions are the same (:mod:`sgcore.pipeline.inprocess`); an
    ``exit:`` fault ends a replica object, not the process. Returns the backends used.
    """
    from sgcore.pipeline import driver
    from sgcore.pipeline.inprocess import InProcessJobBackend

    real = driver._run_job
    used: list[Any] = []

    def run(config: Any, backend: Any) -> Any:
        if backend is None:
            backend = InProcessJobBackend()
            used.append(backend)
        return real(config, backend)

    monkeypatch.setattr(driver, "_run_job", run)
    return used


@pytest.fixture(params=["in-process", pytest.param("ray", marks=pytest.mark.slow)])
def job_backend(request: pytest.FixtureRequest) -> str:
    """Runs a job test twice: in process (CI) and on the module's local Ray (``slow``: the end-to-end proof)."""
    if request.param == "ray":
        request.getfixturevalue("ray_local")
    else:
        request.getfixturevalue("in_process_jobs")
    return request.param


def write_images(root: Path, n_per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog"),
                 size: int = 40, seed: int = 0) -> list[str]:
    """Small random PNG/JPEG images in class folders; returns relative paths."""
    from PIL import Image

    gen = np.random.default_rng(seed)
    out = []
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = gen.integers(0, 256, size=(size, size + 8 * i, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            rel = f"{c}/{c}_{i}.{ext}"
            Image.fromarray(arr).save(root / rel)
            out.append(rel)
    return out


@dataclass(frozen=True)
class MemoryRoot:
    """A folder of fsspec's in-memory filesystem that no other test uses: ``url`` and ``fs``."""

    url: str  # memory://<unique>
    fs: Any

    def path(self, relative: str = "") -> str:
        """The filesystem path of ``relative`` (what ``fs.pipe`` and ``fs.cat_file`` take)."""
        return "/" + self.url.removeprefix("memory://") + (f"/{relative}" if relative else "")

    def join(self, relative: str) -> str:
        return f"{self.url}/{relative}"


@pytest.fixture
def memory_root() -> Iterator[MemoryRoot]:
    """Where a filesystem is all a test needs: a fresh memory:// folder, removed afterwards.

    The memory filesystem is one store per process; a unique folder keeps tests
    from reading each other's files, and the cleanup keeps the store small.
    """
    import fsspec

    fs = fsspec.filesystem("memory")
    root = MemoryRoot(url=f"memory://sgtest-{uuid.uuid4().hex[:12]}", fs=fs)
    yield root
    if fs.exists(root.path()):
        fs.rm(root.path(), recursive=True)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A dataset with good images, a corrupt image and a non-image file."""
    root = tmp_path / "images"
    write_images(root)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image; must be skipped, not failed")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 API server on 127.0.0.1; sets AWS_ENDPOINT_URL for workers too."""
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    # s3fs caches filesystem instances without the endpoint from the environment:
    # one made against an earlier module's server would still point there.
    _clear_s3fs_cache()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing-secret", AWS_DEFAULT_REGION="us-east-1")
    deadline = time.time() + 10
    up = False
    while not up and time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            up = True
        except OSError:
            time.sleep(0.1)
    if not up:
        server.stop()
        _restore_env(saved)
        pytest.fail(f"moto S3 server did not accept connections on {endpoint} within 10 s")
    yield endpoint
    server.stop()
    _restore_env(saved)
    _clear_s3fs_cache()


def _clear_s3fs_cache() -> None:
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
