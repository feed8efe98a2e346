"""The output lease: one writer at a time, on a local disk and on S3 (moto), expiring for a dead holder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sgcore.io import pid_alive, url_to_fs
from sgcore.io.lease import _BOOT_ID, Lease, LeaseInfo, LeaseLost, OutputBusy, _pid_namespace

BUCKET = "sgcore-lease"


class Out:
    """An output URL with its filesystem, as the tests plant files into it."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url, self.storage_options = url, storage_options
        self.fs, self.path = url_to_fs(url, storage_options)


def claim(out: Out, **kw) -> Lease:
    return Lease(out.url, out.storage_options, **kw)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> Out:
    if request.param == "local":
        return Out(str(tmp_path / "out"))
    s3fs = pytest.importorskip("s3fs")
    request.getfixturevalue("s3_server")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return Out(f"s3://{BUCKET}/{tmp_path.name}/out", {"skip_instance_cache": True})


def _plant(out: Out, **fields) -> None:
    """A lease written by someone else (another host, say)."""
    info = dict(run_id="other", host="elsewhere", pid=1, started=time.time(), heartbeat=time.time(), ttl=60.0)
    info.update(fields)
    out.fs.makedirs(out.path, exist_ok=True)
    out.fs.pipe_file(f"{out.path}/_lease.json", json.dumps(info).encode())


def test_a_second_writer_is_refused_naming_the_holder(output):
    first = claim(output, run_id="first")
    first.acquire()
    with pytest.raises(OutputBusy, match=r"is being written by run first on .* \(pid \d+, last heartbeat \d+ s ago\); "
                                         r"wait for it to finish or use another --output"):
        claim(output, run_id="second").acquire()
    first.acquire()  # ours: taken again
    first.release()
    assert first.read() is None
    claim(output, run_id="second").acquire()


def test_a_live_holder_elsewhere_is_respected_an_expired_one_taken_over(output):
    _plant(output)
    with pytest.raises(OutputBusy, match=r"run other on elsewhere \(pid 1, "):
        claim(output, run_id="mine").acquire()
    _plant(output, heartbeat=time.time() - 61)
    mine = claim(output, run_id="mine")
    mine.acquire()
    assert mine.read().run_id == "mine"


def test_a_dead_process_on_this_host_holds_nothing(tmp_path):
    out = Out(str(tmp_path / "out"))
    holder = subprocess.run(
        [sys.executable, "-c", "import sys; from sgcore.io.lease import Lease; "
         "Lease(sys.argv[1], run_id='dead').acquire()", out.url], check=True)
    assert holder.returncode == 0 and claim(out).read().run_id == "dead"
    # The holder exited without releasing: its pid is gone, the claim is free at once.
    claim(out, run_id="next").acquire()
    assert claim(out).read().run_id == "next"


def test_heartbeat_renews_and_a_takeover_is_noticed(output):
    lease = claim(output, run_id="beating", ttl=60.0, interval=0.05)
    with lease:
        before = lease.read().heartbeat
        time.sleep(1.2)
        assert lease.read().heartbeat > before
        lease.check()
        _plant(output, run_id="thief")
        deadline = time.time() + 5
        while time.time() < deadline and lease._lost is None:
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match=r"run beating \(lease epoch 1\) lost its claim on .*: now run thief on elsewhere"):
            lease.check()
    assert lease.read().run_id == "thief", "release leaves someone else's lease alone"


def test_racing_writers_get_one_lease(output):
    wins, refusals = [], []

    def contend(k: int) -> None:
        try:
            claim(output, run_id=f"r{k}").acquire()
            wins.append(k)
        except OutputBusy:
            refusals.append(k)

    threads = [threading.Thread(target=contend, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refusals) == 5
    assert claim(output).read().run_id == f"r{wins[0]}"


def test_a_garbled_lease_claims_nothing(tmp_path):
    out = Out(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_lease.json").write_bytes(b'{"run_id": "half')
    assert LeaseInfo.from_json(b'{"run_id": "half') is None
    claim(out, run_id="fresh").acquire()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process of that pid here now


@pytest.mark.parametrize("pidns", ["pid:[4026531836999]", None])
def test_a_live_holder_in_another_pid_namespace_is_not_taken_over(tmp_path, pidns):
    # Same hostname (host-network containers, pods on one node), a pid we cannot see,
    # a fresh heartbeat: the holder is alive in its own namespace.
    out = Out(str(tmp_path / "out"))
    _plant(out, host=socket.gethostname(), pid=_dead_pid(), pidns=pidns, boot="another-boot", epoch=4)
    with pytest.raises(OutputBusy, match=r"is being written by run other on "):
        claim(out, run_id="mine").acquire()
    _plant(out, host=socket.gethostname(), pid=_dead_pid(), heartbeat=time.time() - 61, epoch=4)
    mine = claim(out, run_id="mine")
    mine.acquire()  # its heartbeat stopped: expired
    assert mine.read().run_id == "mine" and mine.fence.epoch == 5


def test_the_epoch_grows_with_every_holder_and_survives_a_release(output):
    epochs = []
    for k in range(3):
        lease = claim(output, run_id=f"r{k}")
        lease.acquire()
        lease.acquire()  # ours already: same epoch
        epochs.append(lease.fence.epoch)
        lease.release()
        assert lease.read() is None  # released: free, and the file keeps the epoch
    assert epochs == [1, 2, 3]


def test_an_expired_holder_frozen_inside_its_lock_is_taken_over(tmp_path, monkeypatch):
    import fcntl
    import os

    import sgcore.io.lease as lease_mod

    out = Out(str(tmp_path / "out"))
    _plant(out, heartbeat=time.time() - 61, epoch=7)
    fd = os.open(f"{out.path}/_lease.json", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the holder froze inside its critical section
    monkeypatch.setattr(lease_mod, "LOCK_WAIT_S", 0.2)
    try:
        mine = claim(out, run_id="mine")
        t0 = time.monotonic()
        mine.acquire()
        assert time.monotonic() - t0 < 5, "the lock wait follows LOCK_WAIT_S, read when the lock is taken"
        assert mine.fence.epoch == 8 and mine.read().run_id == "mine"
        mine.fence.check()  # the new lease file is not the frozen one's
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b'{"run_id": "other"}')  # what it writes once thawed lands in the old file
        mine.fence.check()
    finally:
        os.close(fd)


def _child(exit_at_once: bool) -> int:
    """A forked child, never reaped here: with ``exit_at_once`` it becomes a zombie."""
    pid = os.fork()
    if pid == 0:  # the child
        if not exit_at_once:
            time.sleep(30)
        os._exit(0)
    return pid


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return
        time.sleep(0.01)
    raise AssertionError(f"child {pid} never became a zombie")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_zombie_is_dead_and_a_live_child_alive():
    # One rule for the lease and the actors' driver check: a zombie runs nothing.
    live, zombie = _child(exit_at_once=False), _child(exit_at_once=True)
    try:
        _wait_zombie(zombie)
        assert pid_alive(live) is True
        assert pid_alive(zombie) is False
        assert pid_alive(os.getpid()) is True
    finally:
        os.kill(live, 9)
        os.waitpid(live, 0)
        os.waitpid(zombie, 0)
    assert pid_alive(zombie) is False  # reaped: gone


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_zombie_holder_on_this_host_holds_nothing(tmp_path):
    # The holder exited but its parent has not reaped it yet: the claim is free at once.
    out = Out(str(tmp_path / "out"))
    zombie = _child(exit_at_once=True)
    try:
        _wait_zombie(zombie)
        _plant(out, host=socket.gethostname(), pid=zombie, pidns=_pid_namespace(), boot=_BOOT_ID)
        assert claim(out).read().pid == zombie
        claim(out, run_id="next").acquire()
        assert claim(out).read().run_id == "next"
    finally:
        os.waitpid(zombie, 0)
