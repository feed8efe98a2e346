"""Benchmarks of the kernel and of the whole job (above the pipeline; never imported by it).

- :mod:`sgcore.bench.kernel`: sgcore against Captum, a per-sample loop and the
  model's raw forward + input-gradient rate (timed with the kernel's own
  gradient pass and precision mode), and the fidelity of noise kinds and
  precisions.
- :mod:`sgcore.bench.pipeline`: the job end to end against the bare kernel.
- :mod:`sgcore.bench.job`: what ``python -m jobs.benchmark`` does.
- :mod:`sgcore.bench.gpu_check`: every GPU measurement in one bounded call.
"""

from sgcore.bench.job import run_benchmark
from sgcore.bench.kernel import BenchConfig, Report, Row, run, synthetic_images, write_report

__all__ = ["BenchConfig", "Report", "Row", "run", "run_benchmark", "synthetic_images", "write_report"]
