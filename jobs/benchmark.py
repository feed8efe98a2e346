"""Benchmark the SmoothGrad kernel against Captum, a per-sample loop and the raw model.

    python -m jobs.benchmark                       # resnet18, 64 px, n=16, 8 images, this device
    python -m jobs.benchmark --model resnet50 --image-size 224 --n-samples 50 --batch 64 --compile
    python -m jobs.benchmark --model demo --mode fidelity
    python -m jobs.benchmark --mode pipeline --images 480      # the whole job vs the bare kernel
    python -m jobs.benchmark --mode calibration --model demo   # reliability estimate vs n=4096 maps

Writes outputs/benchmark/<stem>.md and .json and prints the Markdown table.
Exit status: 0 done, 2 bad arguments (one line on stderr naming the flag).
"""

from __future__ import annotations

import argparse

import torch

from sgcore.attribution import PRECISIONS
from sgcore.attribution._bench import (
    MODES,
    BenchConfig,
    default_precisions,
    run,
    synthetic_images,
    write_report,
)
from sgcore.cli import make_parser, run_cli
from sgcore.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("python -m jobs.benchmark", __doc__)
    p.add_argument("--model", default="resnet18", help="'demo' (trained, shipped) or a torchvision name, random weights")
    p.add_argument("--mode", choices=(*MODES, "pipeline", "calibration"), default="speed",
                   help="pipeline: the whole job (demo model) against the bare kernel; calibration: "
                        "the per-map reliability estimate against long reference maps (--model demo or digits)")
    p.add_argument("--reference-n", type=int, default=4096, help="calibration mode: samples of the reference maps")
    p.add_argument("--images", type=int, default=480, help="pipeline mode: demo images")
    p.add_argument("--image-size", type=int, default=64, help="side of the square synthetic images")
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--n-samples", type=int, default=16, help="SmoothGrad samples per image")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                   help="sgcore precisions to time (default: all on CUDA; fp32, + bf16 with AVX512-BF16/AMX, on the CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d models")
    p.add_argument("--no-loop", action="store_true", help="skip the per-sample loop")
    p.add_argument("--no-captum", action="store_true", help="skip Captum's NoiseTunnel baseline")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per variant (the median is reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="outputs/benchmark", help="folder of the .md and .json tables")
    return p


def _model_and_images(name: str, size: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    from sgcore.models import DEMO_PREPROCESS, DEMO_WEIGHTS_PATH, load_model

    if name == "digits":
        from sgcore.demo.digits import load_digits_data, load_digits_model

        return load_digits_model(), load_digits_data().test_x[:batch], "digits-shipped"
    if name != "demo":
        return load_model(name, "none", image_size=size).model, synthetic_images(batch, size), "random"
    from sgcore.demo import HELDOUT_SEED, TrainConfig, make_split, train_demo_model

    split = make_split(n_per_class=-(-batch // 4), seed=HELDOUT_SEED, size=size)
    images = DEMO_PREPROCESS.normalize(torch.from_numpy(split.images[:batch].copy()))
    if DEMO_WEIGHTS_PATH.exists():
        return load_model("demo").model, images, "demo-shipped"
    # No shipped weights yet: a short training run still gives a trained model.
    return train_demo_model(TrainConfig(epochs=2, n_per_class=300)), images, "demo, trained here (2 epochs)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _bench(args))


def _check_args(args: argparse.Namespace) -> torch.device:
    """Refuses bad numbers and devices before any model is built; returns the device."""
    # image_size >= 2: the synthetic images pin a 0 and a 1 pixel in their first row.
    for flag, low in (("batch", 1), ("images", 1), ("repeats", 1), ("n_samples", 1), ("image_size", 2),
                      ("reference_n", 2)):
        value = getattr(args, flag)
        if value < low:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= {low}; got {value}")
    if args.mode in ("speed", "both") and not args.no_captum:
        import importlib.util

        if importlib.util.find_spec("captum") is None:
            raise ConfigError("the Captum baseline needs captum: pip install 'sgcore[test]' (or captum), "
                              "or pass --no-captum")
    return _device(args.device)


def _device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: no CUDA GPU is visible here; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {text}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    return device


def _bench(args: argparse.Namespace) -> int:
    device = _check_args(args)
    if args.mode == "pipeline":
        return _pipeline(args)
    if args.mode == "calibration":
        return _calibration(args, device)
    precisions = args.precisions or default_precisions(device)
    config = BenchConfig(mode=args.mode, n_samples=args.n_samples, precisions=tuple(precisions),
                         compile=args.compile, repeats=args.repeats, loop=not args.no_loop,
                         captum=not args.no_captum)
    model, images, weights = _model_and_images(args.model, args.image_size, args.batch)
    model, images = model.to(device), images.to(device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    setup = {"model": args.model, "weights": weights, "image_size": args.image_size, "batch": args.batch}
    report = run(model, images, targets, config, setup=setup)
    stem = f"{args.mode}-{args.model}-{args.image_size}px-n{args.n_samples}-{device.type}"
    md, js = write_report(report, args.out, stem)
    print(report.to_markdown())
    print(f"wrote {md} and {js}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sgcore.pipeline.bench import run_pipeline_bench, to_markdown

    result = run_pipeline_bench(model="demo", images=args.images, n_samples=args.n_samples,
                                batch_size=16, repeats=args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline-demo.json").write_text(json.dumps(result, indent=2))
    (out / "pipeline-demo.md").write_text(to_markdown(result) + "\n")
    print(to_markdown(result))
    return 0




def _calibration(args: argparse.Namespace, device: torch.device) -> int:
    import json
    from pathlib import Path

    from sgcore.attribution import prepare_model
    from sgcore.attribution.calibration import calibrate, plot, reliability_cost, to_markdown

    if args.model not in ("demo", "digits"):
        raise ConfigError(f"--mode calibration needs a trained model: --model demo or digits; got {args.model!r}")
    model, images, _ = _model_and_images(args.model, args.image_size, args.batch)
    model, images = prepare_model(model).to(device), images.to(device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    results = []
    for noise in ("gaussian", "antithetic", "sobol"):
        res = calibrate(model, images, targets, reference_n=args.reference_n, repeats=args.repeats,
                        noise=noise, log=print)
        results.append({"model": args.model, "images": images.shape[0], **res})
    cost = reliability_cost(model, images, targets, repeats=args.repeats + 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"calibration-{args.model}-cost.json").write_text(json.dumps(cost, indent=2))
    print(f"cost of the estimate at n=50: {cost['seconds_with_reliability']:.3f} s against "
          f"{cost['seconds_plain']:.3f} s, {100 * cost['share']:.1f} % of the kernel time")
    stem = f"calibration-{args.model}-ref{args.reference_n}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(to_markdown(results) + "\n")
    plot(results, str(out / f"{stem}.png"))
    print(to_markdown(results))
    print(f"wrote {out / stem}.md, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
