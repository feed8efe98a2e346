"""Sizing the actor pool from a Ray cluster, and submitting jobs to one.

Two concerns live here because both are about "the cluster, seen from the
driver": :func:`plan_actors` turns ``ray.cluster_resources()`` into an
:class:`ActorPlan` (how many model replicas, with how much GPU and CPU each,
and how many decode tasks may run beside them), and the Jobs SDK helpers
(:func:`runtime_env_for`, :func:`submit`, :func:`follow`) back
``python -m jobs.submit``.

Planning is pure arithmetic on resource dicts so it is testable without a
cluster; Ray itself is imported lazily, only by the helpers that talk to one.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from sgcore.errors import ConfigError

__all__ = [
    "DEFAULT_EXCLUDES",
    "TERMINAL_STATES",
    "ActorPlan",
    "capacity_bundles",
    "follow",
    "job_client",
    "node_resources",
    "plan_actors",
    "plan_for_config",
    "release_capacity",
    "request_capacity",
    "runtime_env_for",
    "submit",
]

# Ray's resource precision is 1e-4; anything closer than this is "equal".
_EPS = 1e-6


@dataclass(frozen=True, kw_only=True)
class ActorPlan:
    """How the SmoothGrad actor pool and its decode tasks use a cluster.

    Attributes:
        use_gpu: Whether actors ask Ray for GPUs (False = CPU fallback).
        num_gpus: GPUs reserved per actor (0.5 packs two replicas per GPU).
        num_cpus: CPUs reserved per actor.
        initial_actors: Actors to start now; they fit the cluster as it is.
        min_actors: The pool never shrinks below this.
        max_actors: The pool may grow to this while work is queued (the Ray
            autoscaler adds nodes for actors that do not fit yet).
        decode_num_cpus: ``num_cpus`` for each list/decode task. 0 means the
            actors hold every CPU, so decoding shares their cores.
        max_decode_tasks: Decode tasks allowed in flight at once, in
            proportion to the CPUs the actors leave free.
        scheduling_strategy: Ray scheduling strategy for the actors;
            ``"SPREAD"`` places them over as many nodes as possible.
    """

    use_gpu: bool
    num_gpus: float
    num_cpus: float
    initial_actors: int
    min_actors: int
    max_actors: int
    decode_num_cpus: float
    max_decode_tasks: int
    scheduling_strategy: str = "SPREAD"

    def actor_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ActorClass.options(...)``."""
        return {
            "num_gpus": self.num_gpus,
            "num_cpus": self.num_cpus,
            "scheduling_strategy": self.scheduling_strategy,
        }

    def describe(self) -> str:
        """One line for the job log."""
        kind = f"{self.num_gpus:g} GPU" if self.use_gpu else "CPU only"
        return (
            f"{self.initial_actors} actor(s) now, {self.min_actors}..{self.max_actors} "
            f"autoscaled, each {kind} + {self.num_cpus:g} CPU, {self.scheduling_strategy}; "
            f"up to {self.max_decode_tasks} decode task(s) x {self.decode_num_cpus:g} CPU"
        )


def plan_actors(
    resources: Mapping[str, float],
    *,
    gpus_per_actor: float,
    cpus_per_actor: float,
    num_actors: int | None,
    min_actors: int | None,
    max_actors: int | None,
    num_shards: int,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> ActorPlan:
    """Size the actor pool: one model replica per GPU unless told otherwise.

    Rules, in order:

    * GPUs: if the cluster has any and ``gpus_per_actor > 0``, each actor
      reserves ``gpus_per_actor`` (1 = one replica per GPU, 0.5 = two per
      GPU). Otherwise actors fall back to the CPU and, when the cluster has
      two CPUs or more, one CPU is kept free for decoding.
    * Count: ``num_actors`` fixes the pool; else it autoscales between
      ``min_actors`` (default 1) and ``max_actors`` (default: what fits
      now). Actors started now never exceed what fits now, and no count
      ever exceeds ``num_shards`` (a shard is the unit of work).
    * Decode tasks get the CPUs the initial actors leave over, one CPU
      each, at most one per shard.

    Args:
        resources: ``ray.cluster_resources()`` (keys ``"CPU"``, ``"GPU"``, ...).
        gpus_per_actor: GPUs per replica; fractions up to 1, whole numbers above.
        cpus_per_actor: CPUs per replica (GPU actors need about one for feeding).
        num_actors: Fixed pool size, or None to autoscale.
        min_actors: Lower bound when autoscaling; must fit the cluster now.
        max_actors: Upper bound when autoscaling; may exceed what fits now.
        num_shards: Shards left to process (>= 1).
        nodes: Optional per-node resources (:func:`node_resources`). With
            them an actor must fit on one node; without them only totals are
            checked.

    Returns:
        The plan.

    Raises:
        ConfigError: The request cannot be met by this cluster, e.g.
            ``gpus_per_actor=2`` where no node has two GPUs.
        ValueError: ``num_shards`` is not a positive integer.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer; got {num_shards!r}")
    for name, value in (("num_actors", num_actors), ("min_actors", min_actors),
                        ("max_actors", max_actors)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if gpus_per_actor < 0 or cpus_per_actor < 0:
        raise ConfigError(
            "gpus_per_actor and cpus_per_actor must be >= 0; "
            f"got {gpus_per_actor} and {cpus_per_actor}"
        )
    if gpus_per_actor > 1 and not float(gpus_per_actor).is_integer():
        # Ray only splits a single GPU; above one it must be whole ones.
        raise ConfigError(
            f"gpus_per_actor above 1 must be a whole number; got {gpus_per_actor}"
        )
    if num_actors is not None and (min_actors is not None or max_actors is not None):
        raise ConfigError(
            "num_actors fixes the pool size; give it or min_actors/max_actors, not both; "
            f"got num_actors={num_actors}, min_actors={min_actors}, max_actors={max_actors}"
        )
    if min_actors is not None and max_actors is not None and min_actors > max_actors:
        raise ConfigError(
            f"min_actors must be <= max_actors; got {min_actors} > {max_actors}"
        )

    total_cpu = float(resources.get("CPU", 0.0))
    total_gpu = float(resources.get("GPU", 0.0))
    node_list = [dict(n) for n in nodes] if nodes is not None else [dict(resources)]

    use_gpu = total_gpu > _EPS and gpus_per_actor > 0
    if use_gpu:
        num_gpus = float(gpus_per_actor)
        num_cpus = float(cpus_per_actor)
        largest = max(float(n.get("GPU", 0.0)) for n in node_list)
        if num_gpus > largest + _EPS:
            where = "any node" if nodes is not None else "the cluster"
            raise ConfigError(
                f"gpus_per_actor={gpus_per_actor:g} does not fit: {where} has at most "
                f"{largest:g} GPU(s); use gpus_per_actor <= {largest:g}"
            )
        capacity = sum(_fits(n, num_gpus, num_cpus) for n in node_list)
        reserved_cpu = 0.0
    else:
        # CPU fallback: a replica per CPU slot, one CPU kept for decoding.
        num_gpus = 0.0
        num_cpus = float(cpus_per_actor) if cpus_per_actor > 0 else 1.0
        reserved_cpu = 1.0 if total_cpu >= 2 else 0.0
        capacity = int(math.floor((total_cpu - reserved_cpu) / num_cpus + _EPS))
        if nodes is not None:
            capacity = min(capacity, sum(_fits(n, 0.0, num_cpus) for n in node_list))
    if capacity < 1:
        raise ConfigError(
            f"no actor fits the cluster: each needs {_unit(use_gpu, num_gpus, num_cpus)}, "
            f"the cluster has {total_gpu:g} GPU and {total_cpu:g} CPU"
            + (f" ({reserved_cpu:g} CPU kept for decoding)" if reserved_cpu else "")
            + "; lower cpus_per_actor/gpus_per_actor or add nodes"
        )

    if num_actors is not None:
        lo = hi = initial = min(num_actors, num_shards)
        if initial > capacity:
            raise ConfigError(
                f"num_actors={num_actors} does not fit: the cluster holds {capacity} "
                f"actor(s) of {_unit(use_gpu, num_gpus, num_cpus)} now; use --min-actors/"
                "--max-actors to let the autoscaler add nodes"
            )
    else:
        lo = min(min_actors if min_actors is not None else 1, num_shards)
        if lo > capacity:
            raise ConfigError(
                f"min_actors={min_actors} is more than the cluster holds now: {capacity} actor(s) "
                f"of {_unit(use_gpu, num_gpus, num_cpus)}"
            )
        hi = min(max_actors if max_actors is not None else capacity, num_shards)
        initial = max(lo, min(capacity, hi))

    spare_cpu = total_cpu - initial * num_cpus
    if spare_cpu >= 1 - _EPS:
        decode_num_cpus = 1.0
        max_decode = int(math.floor(spare_cpu + _EPS))
    elif spare_cpu > _EPS:
        decode_num_cpus, max_decode = round(spare_cpu, 4), 1
    else:
        # Every CPU is reserved by an actor; a zero-CPU task still runs.
        decode_num_cpus, max_decode = 0.0, 1
    return ActorPlan(
        use_gpu=use_gpu,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        initial_actors=initial,
        min_actors=lo,
        max_actors=hi,
        decode_num_cpus=decode_num_cpus,
        max_decode_tasks=max(1, min(max_decode, num_shards)),
        scheduling_strategy="SPREAD",
    )


def plan_for_config(
    config: Any,
    resources: Mapping[str, float],
    *,
    num_shards: int,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> ActorPlan:
    """:func:`plan_actors` with the execution fields of a ``JobConfig``."""
    return plan_actors(
        resources,
        gpus_per_actor=config.gpus_per_actor,
        cpus_per_actor=config.cpus_per_actor,
        num_actors=config.num_actors,
        min_actors=config.min_actors,
        max_actors=config.max_actors,
        num_shards=num_shards,
        nodes=nodes,
    )


def capacity_bundles(plan: ActorPlan) -> list[dict[str, float]]:
    """Resource shapes for :func:`request_capacity`: one per actor, up to ``max_actors``."""
    shape = {"CPU": plan.num_cpus}
    if plan.num_gpus > 0:
        shape["GPU"] = plan.num_gpus
    return [dict(shape) for _ in range(plan.max_actors)]


def request_capacity(plan: ActorPlan) -> bool:
    """Ask the Ray autoscaler for room for ``plan.max_actors`` actors.

    The pool only adds an actor when the cluster has room for it, so on a
    cluster launched with ``ray up`` something must tell the autoscaler to
    add GPU nodes: this standing request does (a no-op on a fixed cluster).
    Call :func:`release_capacity` when the job ends, or idle nodes are kept.

    Returns:
        True if a request was made (``max_actors`` above ``initial_actors``).
    """
    if plan.max_actors <= plan.initial_actors:
        return False
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=capacity_bundles(plan))
    return True


def release_capacity() -> None:
    """Withdraw the request of :func:`request_capacity` so idle nodes can go."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])


def connect_ray(address: str | None) -> bool:
    """Connects to ``address``, else ``RAY_ADDRESS``, else starts a Ray of its own.

    Without an address the caller gets a fresh local Ray, never whatever
    cluster ``ray start`` left on the machine (``address="auto"`` joins that
    one). The job's driver and the audit both connect this way.

    Returns:
        True when this call initialized Ray, so the caller shuts it down.
    """
    import logging

    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A new local Ray turns token authentication on by default and says so on every
        # run; the setting stays (the same security), the line goes.
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(address="local", include_dashboard=False, **kwargs)
        finally:
            notice.setLevel(level)
    return True


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _fits(node: Mapping[str, float], gpus: float, cpus: float) -> int:
    counts = []
    if gpus > 0:
        counts.append(math.floor(float(node.get("GPU", 0.0)) / gpus + _EPS))
    if cpus > 0:
        counts.append(math.floor(float(node.get("CPU", 0.0)) / cpus + _EPS))
    return int(min(counts)) if counts else 0


def _unit(use_gpu: bool, gpus: float, cpus: float) -> str:
    return f"{gpus:g} GPU + {cpus:g} CPU" if use_gpu else f"{cpus:g} CPU"


# --------------------------------------------------------------------------
# Jobs SDK: submit a job from a laptop to a cluster's dashboard.
# --------------------------------------------------------------------------

# gitignore-style patterns, anchored at the working dir (a package may have
# its own data/ folder). Ray also honours .gitignore, but not every checkout
# has one, and a stray venv or dataset would blow past the upload limit.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/.venv/",
    "/venv/",
    "/.git/",
    "/data/",
    "/outputs/",
    "__pycache__/",
    "*.pyc",
    "/.pytest_cache/",
    "/.ruff_cache/",
    "*.egg-info/",
)

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


def runtime_env_for(
    working_dir: str | os.PathLike[str] | None = ".",
    *,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    env_vars: Mapping[str, str] | None = None,
    pip: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A ``runtime_env`` that ships this repository to the cluster.

    The working dir becomes the job's current directory and the first entry
    of its ``sys.path``, so ``python -m jobs.smoothgrad`` finds ``sgcore``
    without installing it; the cluster's image provides the dependencies.

    Args:
        working_dir: Local directory to upload, or None to run in place
            (the cluster already has the code, e.g. a docker image).
        excludes: Patterns left out of the upload.
        env_vars: Extra environment for the job (never put secrets here:
            they show in the dashboard; use the nodes' IAM role instead).
        pip: Extra pip requirements installed for the job.

    Returns:
        The dict for ``JobSubmissionClient.submit_job(runtime_env=...)``.

    Raises:
        ValueError: ``working_dir`` is not a directory.
    """
    env: dict[str, Any] = {}
    if working_dir is not None:
        path = os.fspath(working_dir)
        if not os.path.isdir(path):
            raise ValueError(f"working_dir must be a directory; got {path!r}")
        env["working_dir"] = path
        env["excludes"] = list(excludes)
    if env_vars:
        env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    if pip:
        env["pip"] = list(pip)
    return env


def job_client(address: str, *, token: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``.

    With token authentication (Ray's default for ``ray start --head``), the
    token comes from ``token``, else from Ray's usual places (the
    ``RAY_AUTH_TOKEN`` variable, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``); it is sent as a bearer header and never logged.
    """
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def submit(
    client: Any,
    entrypoint: str,
    *,
    runtime_env: Mapping[str, Any] | None = None,
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Submit ``entrypoint`` and return the job's submission id."""
    kwargs: dict[str, Any] = {"entrypoint": entrypoint}
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    if submission_id:
        kwargs["submission_id"] = submission_id
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    if metadata:
        kwargs["metadata"] = dict(metadata)
    return str(client.submit_job(**kwargs))


def follow(
    client: Any,
    job_id: str,
    *,
    logs: bool = True,
    stream: IO[str] | None = None,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
) -> str:
    """Stream a job's logs (if ``logs``) until it ends; return its final status.

    Args:
        client: A ``JobSubmissionClient``.
        job_id: The submission id.
        logs: Stream the logs; False only waits.
        stream: Where the logs go (default: ``sys.stdout`` at call time).
        timeout_s: Give up after this long.
        poll_s: Seconds between status checks when not streaming.

    Returns:
        ``"SUCCEEDED"``, ``"FAILED"`` or ``"STOPPED"``.

    Raises:
        TimeoutError: The job was still running after ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if logs:
        stream = stream if stream is not None else sys.stdout
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.01)
        try:
            asyncio.run(asyncio.wait_for(_tail(client, job_id, stream), remaining))
        except asyncio.TimeoutError:
            pass
        except (OSError, RuntimeError) as e:
            # A dropped log stream must not lose the job: fall back to polling.
            print(f"log stream of {job_id} ended early ({e}); waiting for its status",
                  file=sys.stderr)
    while True:
        raw = client.get_job_status(job_id)
        status = str(getattr(raw, "value", raw))
        if status in TERMINAL_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:g} s")
        time.sleep(poll_s)


async def _tail(client: Any, job_id: str, stream: IO[str]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        stream.write(chunk)
        stream.flush()


def replica_threads(plan: ActorPlan, cpus: float) -> int | None:
    """Torch threads of each CPU replica of ``plan`` on a cluster of ``cpus`` CPUs (None on GPUs).

    The replicas share the CPUs less one core for the decode tasks (when the
    plan leaves one spare), and each has at least its own reservation. Granting
    the replicas the decode core as well (``cpus // actors``, as before) puts
    more runnable threads than cores on the node whenever a decode task or the
    driver runs; OpenMP's threads then spin at every barrier waiting for a
    partner that lost its core: on a 2-core node the replica used 35.5
    CPU-seconds with 2 threads against 16.2 with 1 for the same 240 maps, and
    the Ray Data stage 18.5 (docs/performance.md, section 19).
    """
    if plan.use_gpu:
        return None
    decode = min(1.0, max(0.0, cpus - plan.initial_actors * plan.num_cpus))
    return max(1, int(round(plan.num_cpus)), int((cpus - decode) // max(1, plan.initial_actors)))
