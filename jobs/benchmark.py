"""Benchmark the SmoothGrad kernel against Captum, a per-sample loop and the raw model.

    python -m jobs.benchmark                       # resnet18, 64 px, n=16, 8 images, this device
    python -m jobs.benchmark --model resnet50 --image-size 224 --n-samples 50 --batch 64 --compile
    python -m jobs.benchmark --model demo --mode fidelity
    python -m jobs.benchmark --mode pipeline --images 480      # the whole job vs the bare kernel
    python -m jobs.benchmark --mode calibration --model demo   # reliability estimate vs n=4096 maps
    python -m jobs.benchmark --mode adaptive --model digits    # adaptive vs fixed n=50, same worst decile
    python -m jobs.benchmark --mode calibration --model lite0 --batch 4 --reference-n 1024 --ns 16 32 50 64 128 256
    python -m jobs.benchmark --mode scale --sizes 1000 100000 --s3-sizes 10000   # planning cost vs input size
    python -m jobs.benchmark --mode tiny --images 4096 --image-size 32 --n-samples 1 --shard-sizes 8 64

Writes outputs/benchmark/<stem>.md and .json and prints the Markdown table.
Exit status: 0 done, 2 bad arguments (one line on stderr naming the flag).
"""

from __future__ import annotations

import argparse

from sgcore.cli import make_parser, run_cli
from sgcore.settings import NOISES, PRECISIONS

MODES = ("speed", "fidelity", "both", "pipeline", "calibration", "adaptive", "scale", "tiny")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("python -m jobs.benchmark", __doc__)
    p.add_argument("--model", default="resnet18",
                   help="'demo', 'digits' (trained, shipped), 'lite0' (EfficientNet-Lite0, ImageNet weights from "
                        "sgcore[real], on the bundled photographs at 224 px) or a torchvision name, random weights")
    p.add_argument("--mode", choices=MODES, default="speed",
                   help="speed, fidelity (samples each noise kind needs), both, pipeline: the whole job "
                        "(demo model) against the bare kernel, or calibration: the per-map reliability estimate "
                        "against long reference maps, or adaptive: model evaluations of adaptive sampling against "
                        "fixed --fixed-n at the same worst-decile correlation (calibration, adaptive: --model demo "
                        "or digits), or scale: planning time, driver memory and manifest bytes of inputs of "
                        "--sizes empty files (and --s3-sizes keys on a moto S3 server), or tiny: the whole job against the "
                        "same work in one process (--images, --image-size, --n-samples, --shard-sizes)")
    p.add_argument("--reference-n", type=int, default=4096,
                   help="calibration, adaptive modes: samples of the reference maps")
    p.add_argument("--ns", type=int, nargs="+", default=[16, 32, 64, 128],
                   help="calibration mode: samples of the test maps")
    p.add_argument("--auto-target", type=float, default=0.8,
                   help="calibration mode, --model lite0: the target of the --n-samples auto run measured too")
    p.add_argument("--noises", nargs="+", choices=NOISES, default=list(NOISES),
                   help="adaptive mode: noise kinds to compare")
    p.add_argument("--fixed-n", type=int, default=50, help="adaptive mode: samples of the fixed-n baseline")
    p.add_argument("--min-samples", type=int, default=16, help="adaptive mode: fewest samples per image")
    p.add_argument("--max-samples", type=int, default=512, help="adaptive mode: most samples per image")
    p.add_argument("--round-samples", type=int, default=16, help="adaptive mode: samples added per round")
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000],
                   help="scale mode: numbers of local empty image files to plan")
    p.add_argument("--s3-sizes", type=int, nargs="*", default=[],
                   help="scale mode: numbers of keys to plan on a moto S3 server (needs moto)")
    p.add_argument("--s3-flat", action="store_true",
                   help="scale mode: the S3 keys all directly under one prefix (no sub-folders), not 1,000 a folder")
    p.add_argument("--shard-size", type=int, default=256, help="scale mode: images per shard")
    p.add_argument("--baseline", default=None,
                   help="scale mode: a checkout of another revision, whose planning runs side by side (default: none)")
    p.add_argument("--images", type=int, default=480,
                   help="pipeline, tiny modes: images (pipeline --model lite0: bundled photographs, at most 7)")
    p.add_argument("--shard-sizes", type=int, nargs="+", default=[64],
                   help="tiny mode: shard sizes, each run in one process and as the whole job")
    p.add_argument("--image-size", type=int, default=64, help="side of the square synthetic images")
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--n-samples", type=int, default=16, help="SmoothGrad samples per image")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                   help="sgcore precisions to time (default: all on CUDA; fp32, + bf16 with AVX512-BF16/AMX, on the CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d models")
    p.add_argument("--no-loop", dest="loop", action="store_false", help="skip the per-sample loop")
    p.add_argument("--no-captum", dest="captum", action="store_false", help="skip Captum's NoiseTunnel baseline")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per variant (the median is reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="outputs/benchmark", help="folder of the .md and .json tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.bench import run_benchmark

        return run_benchmark(**vars(args))

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
