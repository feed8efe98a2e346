"""Ray orchestration: plan shards, feed a pool of model actors, retry, resume.

Names load lazily, so ``sgcore.pipeline.cluster`` (job submission, planning)
works without importing torch.
"""

from typing import Any

_LAZY = {
    "JobFailed": "sgcore.pipeline.driver",
    "JobResult": "sgcore.pipeline.driver",
    "plan_fingerprint": "sgcore.pipeline.driver",
    "run_job": "sgcore.pipeline.driver",
    "Progress": "sgcore.pipeline.progress",
    "format_duration": "sgcore.pipeline.progress",
    "ShardProcessor": "sgcore.pipeline.worker",
    "ShardSummary": "sgcore.pipeline.worker",
    "make_row": "sgcore.pipeline.worker",
    "write_part": "sgcore.pipeline.worker",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgcore.pipeline' has no attribute {name!r}")
