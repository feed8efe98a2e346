"""The audit's heavy checks on the pipeline's replica pool: a replica killed mid-audit costs a retry, not the audit."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgcore.audit import AuditConfig, run_audit
from sgcore.errors import ConfigError


@pytest.fixture(scope="module")
def ray_three_cpus() -> Iterator[None]:
    """A local Ray with room for two CPU replicas (plan_actors keeps one CPU for decoding)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _config(results: Path, report: Path, **kw: object) -> AuditConfig:
    return AuditConfig(results=str(results), report=str(report), sample=4, chunk_size=1, n_samples=2, steps=4,
                       examples=0, localization=False, **kw)


@pytest.mark.slow  # in CI: tests/pipeline/test_scheduler.py (ReplicaPool retries a dead replica's item) and the job's SIGKILL drill
def test_a_replica_killed_during_the_audit_does_not_fail_it(
    demo_results: Path, ray_three_cpus: None, tmp_path: Path
) -> None:
    killed: list[int] = []
    seen: list[int] = []

    def kill_the_first_replica(i: int, value: object, pid: int) -> None:
        seen.append(pid)
        if not killed:
            # The pid came back from the replica itself: a process of this test's own Ray session.
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    lines: list[str] = []
    summary = run_audit(_config(demo_results, tmp_path / "ray", num_actors=2), log=lines.append,
                        on_chunk=kill_the_first_replica)
    heavy = summary["heavy"]
    assert heavy["replicas"] == 2 and heavy["replicas_lost"] == 1
    assert heavy["failed_chunks"] == [] and heavy["evaluated_images"] == 4
    assert killed and killed[0] not in seen[1:]  # the dead replica ran nothing after the kill
    assert any("2 actor(s) now" in line for line in lines)
    # The chunks the dead replica held were redone elsewhere, to the same numbers as in one process.
    local = run_audit(_config(demo_results, tmp_path / "local", num_actors=0), log=lambda m: None)
    for a, b in zip(summary["sanity"], local["sanity"], strict=True):
        assert a["layer"] == b["layer"]
        assert a["spearman_abs"] == pytest.approx(b["spearman_abs"], abs=1e-6)
    assert summary["faithfulness"]["deletion_auc"] == pytest.approx(local["faithfulness"]["deletion_auc"], abs=1e-6)


def test_replicas_that_cannot_start_stop_the_audit_with_one_line(
    demo_results: Path, ray_three_cpus: None, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"bad\.pt"):
        run_audit(_config(demo_results, tmp_path / "r", num_actors=1, weights=str(bad)), log=lambda m: None)
