"""The scheduler's decisions with injected faults, in this process (no Ray): replicas that die,
raise or hang; shards retried, failed into error rows, stopped for storage that stays down.

The real-Ray drills (tests/pipeline/test_faults.py) keep a few end-to-end proofs: SIGKILL of an
actor, of a node, of the driver's process group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sgcore.config import JobConfig
from sgcore.errors import ConfigError, InputError
from sgcore.io import read_part_metadata
from sgcore.io.lease import LeaseLost
from sgcore.pipeline import JobFailed, run_job
from sgcore.pipeline.inprocess import (
    ActorExit,
    Hang,
    InProcessBackend,
    InProcessJobBackend,
    LocalActor,
)
from sgcore.pipeline.pool import ItemFailed, ReplicaPool, _SetupFailed
from sgcore.pipeline.recorder import StorageFailed
from sgcore.pipeline.scheduler import ActorSlots, Scheduler, Task
from tests.conftest import write_images

SMALL = dict(model="demo", weights="default", image_size=16, n_samples=2, shard_size=2, batch_size=2,
             progress=False)


# ----------------------------------------------------------------- the loop itself


class _Echo:
    """A replica that returns its item (and raises for the items it is told to)."""

    def __init__(self, index: int, fail: dict[int, int] | None = None) -> None:
        self.index = index
        self.fail = fail or {}  # item -> attempts that raise

    def run(self, item: int) -> tuple[int, int]:
        if self.fail.get(item, 0) > 0:
            self.fail[item] -= 1
            raise RuntimeError(f"item {item} failed")
        return self.index, item


class _Collect(Scheduler):
    def __init__(self, backend: InProcessBackend, n: int, items: list[int], max_retries: int) -> None:
        super().__init__(backend, ActorSlots(backend.new_actor, n, kill=backend.kill), items,
                         max_retries=max_retries)
        self.values: dict[int, tuple[int, int]] = {}
        self.given_up: dict[int, tuple[int, str]] = {}
        self.retries: list[tuple[int, int, str]] = []

    def launch(self, actor: Any, item: int, attempt: int) -> tuple[Any, Any]:
        return self.backend.call(actor, "run", item), None

    def done(self, task: Task, value: Any) -> None:
        self.values[task.item] = value

    def retrying(self, task: Task, reason: str) -> None:
        self.retries.append((task.item, task.attempt, reason))

    def give_up(self, task: Task, reason: str) -> None:
        self.given_up[task.item] = (task.attempt, reason)


def test_a_failed_item_is_retried_up_to_max_retries_then_given_up_and_the_others_run():
    fail = {1: 1, 2: 5}  # item 1 fails once, item 2 always
    backend = InProcessBackend(lambda i: _Echo(i, fail))
    s = _Collect(backend, 2, list(range(5)), max_retries=2)
    s.run()
    assert sorted(s.values) == [0, 1, 3, 4]
    assert s.given_up == {2: (2, "RuntimeError: item 2 failed")}
    assert [(i, a) for i, a, _ in s.retries] == [(1, 0), (2, 0), (2, 1)]
    assert s.slots.lost == 0 and backend.killed == []


def test_a_replica_that_dies_fails_every_call_queued_on_it_and_is_dropped_once_not_replaced_while_others_live():
    def exit_on_3(actor: LocalActor, method: str, args: tuple) -> None:
        if args == (3,) and actor.index == 1:
            raise ActorExit("oom")

    backend = InProcessBackend(lambda i: _Echo(i), intercept=exit_on_3)
    s = _Collect(backend, 2, list(range(8)), max_retries=1)
    s.run()
    assert sorted(s.values) == list(range(8)) and s.given_up == {}
    assert s.slots.lost == 1 and s.slots.live == 1 and len(backend.actors) == 2  # no replacement
    assert backend.actors[1].death.endswith("oom")
    retried = [i for i, _, _ in s.retries]
    assert 3 in retried and all("died" in reason for _, _, reason in s.retries)
    assert all(s.values[i][0] == 0 for i in retried)  # redone on the live replica
    assert backend.killed == []  # it was dead already: the scheduler's kill was a no-op


def test_the_last_replica_that_dies_is_replaced_so_the_work_goes_on():
    once = []

    def exit_once(actor: LocalActor, method: str, args: tuple) -> None:
        if not once:
            once.append(actor.index)
            raise ActorExit("spot reclaim")

    backend = InProcessBackend(lambda i: _Echo(i), intercept=exit_once)
    s = _Collect(backend, 1, [0, 1, 2], max_retries=1)
    s.run()
    assert sorted(s.values) == [0, 1, 2] and len(backend.actors) == 2 and s.slots.lost == 1
    assert {v[0] for v in s.values.values()} == {1}


def test_a_hung_call_is_retried_once_its_replica_is_killed_from_outside():
    def hang_item_0_first(actor: LocalActor, method: str, args: tuple) -> None:
        if args == (0,) and actor.index == 0:
            raise Hang

    waits = []

    def kill_after_a_while(b: InProcessBackend) -> None:
        waits.append(1)
        if len(waits) == 5:
            b.kill_actor(0, "node lost")

    backend = InProcessBackend(lambda i: _Echo(i), intercept=hang_item_0_first, on_wait=kill_after_a_while)
    s = _Collect(backend, 2, [0, 1, 2, 3], max_retries=1)
    s.run()
    assert sorted(s.values) == [0, 1, 2, 3] and s.values[0][0] == 1
    assert s.retries[0][:2] == (0, 0) and "node lost" in s.retries[0][2]


# ----------------------------------------------------------------- ReplicaPool (the audit's pool)


class _LocalReplica:
    """pool.Replica without Ray's thread settings: the worker, or its constructor's user error."""

    def __init__(self, cls: type, args: tuple) -> None:
        self.setup_error = None
        try:
            self.worker = cls(*args)
        except (ConfigError, InputError) as e:
            self.setup_error = e

    def call(self, method: str, item: Any) -> tuple[int, Any]:
        if self.setup_error is not None:
            raise _SetupFailed(self.setup_error)
        return 1000, getattr(self.worker, method)(item)


class _Square:
    def __init__(self, ok: bool = True) -> None:
        if not ok:
            raise ConfigError("weights of another model: use --weights right.pt")

    def run(self, x: int) -> int:
        if x < 0:
            raise InputError(f"item {x}: not an image")
        return x * x


def _pool(ok: bool = True, **kw: Any) -> tuple[ReplicaPool, InProcessBackend]:
    from sgcore.pipeline.cluster import plan_actors

    plan = plan_actors({"CPU": 3.0}, gpus_per_actor=0, cpus_per_actor=1, num_actors=2, min_actors=None,
                       max_actors=None, num_shards=10)
    backend = InProcessBackend(lambda i: _LocalReplica(_Square, (ok,)), **kw)
    return ReplicaPool(_Square, (ok,), plan=plan, max_retries=1, backend=backend), backend


def test_the_pool_retries_a_dead_replicas_item_elsewhere_and_an_items_own_bad_input_fails_it_alone():
    killed = []

    def kill_one(b: InProcessBackend) -> None:
        if not killed and b.actors[0].calls:
            b.kill_actor(0)
            killed.append(0)

    def hang_on_replica_0(actor: LocalActor, method: str, args: tuple) -> None:
        if actor.index == 0:
            raise Hang

    pool, backend = _pool(intercept=hang_on_replica_0, on_wait=kill_one)
    seen: list[tuple[int, Any, int]] = []
    with pool:
        out = pool.map("run", [1, 2, -3, 4], on_result=lambda i, v, pid: seen.append((i, v, pid)))
    assert out[:2] == [1, 4] and out[3] == 16
    # item 2 was queued on the replica that died (a retry), then failed for its own input (no more)
    assert out[2] == ItemFailed(reason="item -3: not an image", attempts=2)
    assert pool.actors_lost == 1 and sorted(i for i, _, _ in seen) == [0, 1, 2, 3]


def test_a_pool_whose_replicas_cannot_start_stops_with_their_one_line_error():
    pool, _ = _pool(ok=False)
    with pool, pytest.raises(ConfigError, match="weights of another model"):
        pool.map("run", [1, 2])


# ----------------------------------------------------------------- the job's decisions


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)


def _dataset(root: Path, n_per_class: int) -> list[str]:
    return sorted(write_images(root, n_per_class=n_per_class, size=24))


def _job(tmp_path: Path, backend: InProcessJobBackend, **kw: Any):
    cfg = {**SMALL, **kw}
    return run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **cfg), backend=backend)


def test_a_replica_killed_mid_job_costs_a_retry_on_another_and_every_image_lands_once(tmp_path):
    ids = _dataset(tmp_path / "in", 4)  # 4 shards

    def kill_after_first_commit(b: InProcessBackend) -> None:
        if list((tmp_path / "out").glob("part-*.parquet")) and len(b.live()) == 2 and not b.killed:
            b.kill_actor(b.live()[0])

    def hang_on_first_replica(actor: LocalActor, method: str, args: tuple) -> None:
        if actor.index == 0 and actor.calls[1:]:  # its second shard hangs until the kill
            raise Hang

    backend = InProcessJobBackend(cpus=3, intercept=hang_on_first_replica, on_wait=kill_after_first_commit)
    result = _job(tmp_path, backend)
    df = _rows(tmp_path / "out")
    assert sorted(df.image_id) == ids and (df.status == "ok").all() and (tmp_path / "out" / "_SUCCESS").exists()
    assert result.success and result.actors == 2 and result.actors_lost == 1
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    retried = [e for e in manifest["shards"].values() if e["attempts"] == 2]
    # the hung shard, and any shard sent to the dead replica before its death was seen
    assert retried and all("actor died" in e["failures"][0] for e in retried)
    assert manifest["runs"][-1]["actors_lost"] == 1 and backend.closed


def test_a_lost_node_takes_every_replica_and_the_last_one_is_replaced(tmp_path):
    ids = _dataset(tmp_path / "in", 4)

    def lose_the_node(b: InProcessBackend) -> None:
        if list((tmp_path / "out").glob("part-*.parquet")) and len(b.actors) == 2:
            for actor in b.live():
                b.kill_actor(actor, "node removed")

    def hang_after_one(actor: LocalActor, method: str, args: tuple) -> None:
        if actor.index < 2 and actor.calls[1:]:
            raise Hang

    backend = InProcessJobBackend(cpus=3, intercept=hang_after_one, on_wait=lose_the_node)
    result = _job(tmp_path, backend, max_retries=3)
    assert sorted(_rows(tmp_path / "out").image_id) == ids and result.success
    assert result.actors_lost == 2 and len(backend.actors) == 3  # one replacement, not two


def test_the_pool_grows_while_work_waits_and_the_cluster_has_room(tmp_path):
    _dataset(tmp_path / "in", 8)  # 8 shards for one replica to start with
    backend = InProcessJobBackend(cpus=2, room=5)
    result = _job(tmp_path, backend, max_actors=3)
    assert result.success and result.actors == 3 and len(backend.actors) == 3


def test_a_replicas_config_error_stops_the_job_with_its_line_and_leaves_nothing(tmp_path):
    _dataset(tmp_path / "in", 2)

    def refuse(actor: LocalActor, method: str, args: tuple) -> None:
        raise ConfigError("--weights x.pt holds another architecture; use the model's own checkpoint")

    with pytest.raises(ConfigError, match="another architecture"):
        _job(tmp_path, InProcessJobBackend(intercept=refuse), max_retries=3)
    assert not (tmp_path / "out").exists()  # a run that never started leaves nothing


def test_a_replica_that_finds_the_output_taken_stops_the_run_and_writes_no_manifest_of_its_own(tmp_path):
    _dataset(tmp_path / "in", 2)
    calls = []

    def taken(actor: LocalActor, method: str, args: tuple) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise LeaseLost("run mine (lease epoch 1) lost its claim on out: now run theirs")

    before = []

    def snapshot(b: InProcessBackend) -> None:
        manifest = tmp_path / "out" / "_manifest.json"
        if manifest.exists():
            before[:] = [manifest.read_bytes()]

    with pytest.raises(JobFailed, match="lost its claim on out: now run theirs; stopped without writing more"):
        _job(tmp_path, InProcessJobBackend(intercept=taken, on_wait=snapshot), max_retries=3)
    assert before and (tmp_path / "out" / "_manifest.json").read_bytes() == before[0]


def test_a_shard_that_fails_every_attempt_becomes_error_rows_and_the_job_goes_on(tmp_path):
    ids = _dataset(tmp_path / "in", 3)  # shards 00000..00002

    def poison(actor: LocalActor, method: str, args: tuple) -> None:
        if args[0].value.shard_id == "00001":
            raise RuntimeError("CUDA error: an illegal memory access")

    backend = InProcessJobBackend(intercept=poison)
    result = _job(tmp_path, backend, max_retries=2)
    df = _rows(tmp_path / "out")
    assert sorted(df.image_id) == ids
    bad = df[df.shard == "00001"]
    assert (bad.status == "error").all() and bad.error.str.startswith(
        "shard failed after 3 attempt(s): RuntimeError: CUDA error").all()
    assert (df[df.shard != "00001"].status == "ok").all()
    assert result.failed_shards == ["00001"] and not result.success
    assert [s.shard_id for s in backend.decoded].count("00001") == 3
    assert read_part_metadata(str(tmp_path / "out" / "part-00001.parquet"))["status"] == "failed"
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["shards"]["00001"]["attempts"] == 3 and len(manifest["shards"]["00001"]["failures"]) == 3


def test_a_shard_whose_decoding_fails_every_attempt_keeps_one_error_row_per_planned_image(tmp_path):
    ids = _dataset(tmp_path / "in", 2)
    backend = InProcessJobBackend()
    real = backend.decode

    def decode(spec, *args):
        future = real(spec, *args)
        if spec.shard_id == "00000":
            from sgcore.pipeline.scheduler import TaskFailed

            future.settle(error=TaskFailed("MemoryError: decode", MemoryError("decode")))
        return future

    backend.decode = decode
    result = _job(tmp_path, backend, max_retries=0, max_error_rate=1.0)
    df = _rows(tmp_path / "out").set_index("image_id")
    assert sorted(df.index) == ids and result.failed_shards == ["00000"]
    assert (df[df.shard == "00000"].status == "error").all()


def test_storage_down_for_good_stops_at_the_outage_bound_naming_shards_and_cause(tmp_path):
    """Every shard meets the store down: retried until the outage bound, then the shards that met it
    fail, the rest stay pending, and one line names them; the clock is the test's."""
    from sgcore.io import StorageUnavailable

    _dataset(tmp_path / "in", 4)
    now = [0.0]

    def down(actor: LocalActor, method: str, args: tuple) -> None:
        now[0] += 1.0  # each attempt takes a second of the test's clock
        raise StorageUnavailable(f"read flaky://{tmp_path}/in/x.png: still failing after 0.2 s: TimeoutError")

    backend = InProcessJobBackend(intercept=down, clock=lambda: now[0])
    with pytest.raises(StorageFailed) as e:
        _job(tmp_path, backend, max_retries=1, storage_outage_s=2.5)
    text = str(e.value)
    assert text.startswith("storage unavailable for 3s (over --storage-outage-s 2.5): ")
    assert "cause: StorageUnavailable: read flaky://" not in text and "cause: read flaky://" in text
    assert text.endswith("rerun the same command once the store is back") and "\n" not in text
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    failed = manifest["failed_shards"]
    assert failed and f"{len(failed)} shard" in text
    assert not any(s["status"] == "running" for s in manifest["shards"].values())
    assert manifest["status"] == "failed" and not (tmp_path / "out" / "_SUCCESS").exists()


def test_storage_down_within_the_outage_bound_is_retried_and_a_success_resets_the_bound(tmp_path):
    from sgcore.io import StorageUnavailable

    ids = _dataset(tmp_path / "in", 3)
    now = [0.0]
    failures = {"00000": 1, "00002": 1}

    def flaky(actor: LocalActor, method: str, args: tuple) -> None:
        now[0] += 10.0
        sid = args[0].value.shard_id
        if failures.get(sid):
            failures[sid] -= 1
            raise StorageUnavailable(f"write {tmp_path}/out/part-{sid}.parquet: still failing after 1 s")

    result = _job(tmp_path, InProcessJobBackend(intercept=flaky, clock=lambda: now[0]), max_retries=1,
                  storage_outage_s=15)
    assert result.success and sorted(_rows(tmp_path / "out").image_id) == ids


def test_a_shard_failed_for_storage_whose_error_part_cannot_be_written_is_recorded_failed(tmp_path, monkeypatch):
    """Max retries spent while the store is down (reads and writes): the failed part is not written,
    the manifest says failed, and the run ends on its own (it used to crash on the missing commit)."""
    from sgcore.io import StorageUnavailable
    from sgcore.pipeline import worker

    ids = _dataset(tmp_path / "in", 2)
    write = worker.write_part

    def refuse_failed_parts(*args, status="committed", **kw):
        if status == "failed":
            raise StorageUnavailable("write part: still failing after 1 s")
        return write(*args, status=status, **kw)

    monkeypatch.setattr(worker, "write_part", refuse_failed_parts)

    def down_for_00001(actor: LocalActor, method: str, args: tuple) -> None:
        if args[0].value.shard_id == "00001":
            raise StorageUnavailable("read in/dog/dog_0.png: still failing after 1 s")

    result = _job(tmp_path, InProcessJobBackend(intercept=down_for_00001), max_retries=0, storage_outage_s=600)
    assert result.failed_shards == ["00001"] and result.ok == 2
    assert not (tmp_path / "out" / "part-00001.parquet").exists()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["shards"]["00001"]["status"] == "failed" and manifest["status"] == "failed"
    assert sorted(_rows(tmp_path / "out").image_id) == [i for i in ids if i.startswith("cat/")]


def test_progress_counts_each_image_once_batch_by_batch_and_a_retried_attempt_is_taken_back(tmp_path, capsys):
    _dataset(tmp_path / "in", 6)  # 12 images, 3 shards of 4

    def exit_once(actor: LocalActor, method: str, args: tuple) -> None:
        if actor.index == 0 and args[2] == 0 and args[0].value.shard_id == "00001":
            raise ActorExit("killed")

    backend = InProcessJobBackend(intercept=exit_once)
    result = _job(tmp_path, backend, shard_size=4, progress=True, n_samples=4, max_retries=1)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[sgcore] ") and "images (" in ln]
    done = [int(ln.split()[1].split("/")[0]) for ln in lines if "still working" not in ln]
    assert done and done[-1] == 12 and max(done) == 12 and done == sorted(done), lines
    assert result.rows == 12 and result.actors_lost == 1
