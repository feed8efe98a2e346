"""Ray orchestration: plan shards, feed a pool of model actors, retry, resume."""

from sgcore.pipeline.driver import JobFailed, JobResult, plan_fingerprint, run_job
from sgcore.pipeline.progress import Progress, format_duration
from sgcore.pipeline.worker import ShardProcessor, make_row, write_part

__all__ = [
    "JobFailed",
    "JobResult",
    "Progress",
    "ShardProcessor",
    "format_duration",
    "make_row",
    "plan_fingerprint",
    "run_job",
    "write_part",
]
