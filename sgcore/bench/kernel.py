"""The kernel benchmark behind ``python -m jobs.benchmark``: speed side by side, and fidelity.

Speed mode runs, on one device and the same images: sgcore at each precision
(model as given, and prepared: BatchNorm folded, channels_last,
optionally compiled), Captum's ``NoiseTunnel(Saliency)``, a per-sample loop,
and for each sgcore variant the raw forward + input-gradient rate of the same
model at the same batch (the practical ceiling, docs/design.md "Performance
model"). Each variant's maps are compared with strict float32 sgcore maps of
the unprepared model by the Spearman rank correlation of abs-sum channel-reduced
maps (median over images).

Fidelity mode answers how many samples each noise kind needs to come within
Spearman ``threshold`` of an n = ``reference_n`` Gaussian reference map drawn
with independent seeds.

Captum is imported lazily: only the Captum row needs it.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from sgcore.attribution import default_max_batch, prepare_model, reduce_channels, smoothgrad
from sgcore.attribution._noise import standard_noise
from sgcore.attribution.prepare import prefers_channels_last
from sgcore.attribution.ranks import spearman
from sgcore.attribution.smoothgrad import float32_mode, input_gradient_fn
from sgcore.errors import ConfigError
from sgcore.settings import NOISES, PRECISIONS, SmoothGradSettings, check_choices, check_positive

Mode = Literal["speed", "fidelity", "both"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What one benchmark run measures.

    Attributes:
        mode: ``"speed"``, ``"fidelity"`` or ``"both"``.
        settings: the maps' SmoothGrad settings (``n_samples`` per image in
            speed mode, ``noise_level``, ...); their precision is replaced by
            each of ``precisions`` in turn.
        precisions: sgcore precisions to time (``fp16``/``tf32`` only differ
            from ``fp32``/are useful on CUDA).
        compile: also time ``torch.compile``-d prepared models.
        repeats: timed repetitions per variant (the median is reported).
        warmup: untimed runs per variant first.
        loop: time the per-sample loop (slow on big models).
        captum: time Captum's NoiseTunnel(Saliency).
        reference_n: samples of the fidelity reference map.
        grid: sample counts tried in fidelity mode.
        threshold: Spearman a map must reach against the reference.
        fidelity_repeats: independent seed sets averaged in fidelity mode.
    """

    mode: Mode = "speed"
    settings: SmoothGradSettings = SmoothGradSettings(n_samples=16)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    compile: bool = False
    repeats: int = 3
    warmup: int = 1
    loop: bool = True
    captum: bool = True
    reference_n: int = 1000
    grid: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512)
    threshold: float = 0.95
    fidelity_repeats: int = 2

    def __post_init__(self) -> None:
        check_choices(self)
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ConfigError(f"precisions must be drawn from {', '.join(PRECISIONS)}; got {p!r}")
        if not isinstance(self.settings, SmoothGradSettings):
            raise ConfigError(f"settings must be SmoothGradSettings; got {type(self.settings).__name__}")
        check_positive(self, "repeats", "reference_n", "fidelity_repeats")
        if not self.grid or any(not isinstance(n, int) or n < 1 for n in self.grid):
            raise ValueError(f"grid must be positive ints; got {self.grid!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1); got {self.threshold}")


@dataclass(kw_only=True)
class Row:
    """One measured variant."""

    variant: str
    images_per_s: float
    ceiling_images_per_s: float | None = None
    peak_mem_mib: float | None = None
    spearman: float | None = None
    note: str = ""


@dataclass(kw_only=True)
class Report:
    """Everything one run measured, ready for JSON and Markdown."""

    machine: dict[str, Any]
    setup: dict[str, Any]
    speed: list[Row] = field(default_factory=list)
    fidelity: list[dict[str, Any]] = field(default_factory=list)
    precision: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {"machine": self.machine, "setup": self.setup, "speed": [asdict(r) for r in self.speed],
             "fidelity": self.fidelity, "precision": self.precision},
            indent=2,
        )

    def to_markdown(self) -> str:
        lines = [f"Machine: {self.machine['device_name']} ({self.machine['device']}), "
                 f"torch {self.machine['torch']}, {self.machine['threads']} threads",
                 "Setup: " + ", ".join(f"{k}={v}" for k, v in self.setup.items()), ""]
        if self.speed:
            lines += [
                "| variant | images/s | ceiling images/s | % of ceiling | peak mem (MiB) | Spearman vs fp32 | note |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for r in self.speed:
                pct = f"{100 * r.images_per_s / r.ceiling_images_per_s:.0f}%" if r.ceiling_images_per_s else ""
                lines.append(
                    f"| {r.variant} | {r.images_per_s:.3g} | {_fmt(r.ceiling_images_per_s, '.3g')} | {pct} "
                    f"| {_fmt(r.peak_mem_mib, '.0f')} | {_fmt(r.spearman, '.4f')} | {r.note} |"
                )
            lines.append("")
        if self.fidelity:
            grid = list(self.fidelity[0]["spearman_by_n"])
            lines += [
                f"| noise | samples to Spearman >= {self.setup.get('threshold')} | " + " | ".join(f"n={n}" for n in grid) + " |",
                "|---|---:|" + "---:|" * len(grid),
            ]
            for f in self.fidelity:
                cells = " | ".join(f"{f['spearman_by_n'][n]:.4f}" for n in grid)
                lines.append(f"| {f['noise']} | {_fmt(f['samples_needed'], 'd')} | {cells} |")
            lines.append("")
        if self.precision:
            lines += ["| precision | Spearman vs strict fp32 (median) | (min) |", "|---|---:|---:|"]
            lines += [f"| {p['variant']} | {p['median']:.4f} | {p['min']:.4f} |" for p in self.precision]
            lines.append("")
        return "\n".join(lines)


def _fmt(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


# --------------------------------------------------------------------------- #
# Inputs and metrics
# --------------------------------------------------------------------------- #


def synthetic_images(batch: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """ImageNet-normalized random images whose value ranges are all identical.

    Every channel holds an exact 0 and 1 pixel, so max − min (and hence σ) is
    the same for every image: Captum's single absolute ``stdevs`` then equals
    sgcore's per-image σ and the comparison is like for like.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen)
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 1.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def median_spearman(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """Median over images of Spearman(abs-sum maps)."""
    rho = spearman(reduce_channels(maps.float().cpu()), reduce_channels(reference.float().cpu()))
    return float(rho.median())


class _PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled RSS growth on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
            return
        base = _rss()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.002):
                peak[0] = max(peak[0], _rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        self.peak_mib = (max(peak[0], _rss()) - base) / 2**20


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux: no sampled RSS
        return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- #
# Baselines: raw forward + input gradient, per-sample loop, Captum
# --------------------------------------------------------------------------- #


def forward_input_grad(model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, precision: str) -> torch.Tensor:
    """One forward and input-gradient backward pass of ``rows``, the kernel's own: the ceiling."""
    grad_fn = input_gradient_fn(model, precision, rows.device, prefers_channels_last(model), 0)
    with float32_mode(precision, rows.device), torch.enable_grad():
        return grad_fn(rows, targets)


def per_sample_loop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, n: int,
                    noise_level: float, seeds: torch.Tensor) -> torch.Tensor:
    """SmoothGrad one noisy sample per forward pass, with sgcore's noise."""
    out = []
    for x, t, s in zip(images, targets, seeds.tolist(), strict=False):
        sigma = noise_level * float(x.max() - x.min())
        eps = standard_noise(n, tuple(x.shape), s, device=x.device)
        total = torch.zeros_like(x)
        for k in range(n):
            total += forward_input_grad(model, (x + sigma * eps[k]).unsqueeze(0), t.view(1), "fp32")[0]
        out.append(total / n)
    return torch.stack(out)


def captum_smoothgrad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, n: int,
                      sigma: float, max_rows: int | None = None) -> torch.Tensor:
    """Captum's ``NoiseTunnel(Saliency(model), abs=False)`` with one absolute σ.

    ``max_rows``: at most this many noisy rows per forward pass (Captum's ``nt_samples_batch_size``
    is per image), as sgcore's kernel chunks them; without it Captum expands every image ``n`` times
    at once (7 photos × 50 samples of EfficientNet-Lite0 at 224 px ran this 24 GiB box out of memory).
    """
    try:
        from captum.attr import NoiseTunnel, Saliency
    except ImportError as e:
        raise ImportError("the Captum baseline needs captum: pip install 'sgcore[test]'") from e
    nt = NoiseTunnel(Saliency(model))
    per_batch = None if max_rows is None else max(1, min(n, max_rows // images.shape[0]))
    return nt.attribute(images, nt_type="smoothgrad", nt_samples=n, stdevs=sigma, target=targets, abs=False,
                        nt_samples_batch_size=per_batch)


# --------------------------------------------------------------------------- #
# The two modes
# --------------------------------------------------------------------------- #


def default_precisions(device: torch.device) -> tuple[str, ...]:
    """Every precision on CUDA; on the CPU bf16 only where the CPU has bf16 units.

    Without AVX512-BF16 or AMX, oneDNN emulates bf16 convolutions and they run
    many times slower than float32 (seen on this project's 2-core AVX2 box).
    """
    if device.type == "cuda":
        return ("fp32", "tf32", "bf16", "fp16")
    capability = torch.backends.cpu.get_cpu_capability()
    return ("fp32", "bf16") if "AVX512" in capability or "AMX" in capability else ("fp32",)


def machine_info(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({_cpu_count()} cores)"
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(kw_only=True)
class _Variant:
    name: str
    fn: Callable[[], torch.Tensor]
    ceiling: Callable[[], torch.Tensor] | None = None
    strict: bool = False
    repeats: int | None = None
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    ceiling_seconds: list[float] = field(default_factory=list)
    maps: torch.Tensor | None = None
    peak_mib: float | None = None


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def run_speed(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: BenchConfig,
              *, log: Callable[[str], None] = print) -> list[Row]:
    """Times every variant on the same images; see the module docstring.

    Variants are timed round-robin (one call of each per round, each sgcore
    call next to its ceiling), so drifting load on a shared machine hits all
    of them alike; the median over rounds is reported.
    """
    device = images.device
    n = config.settings.n_samples
    batch = images.shape[0]
    seeds = torch.arange(batch, dtype=torch.int64)
    chunk = min(batch * n, default_max_batch(device, tuple(images.shape[1:])))
    rows_in = images.repeat_interleave(n, dim=0)[:chunk]
    row_targets = targets.repeat_interleave(n)[:chunk]
    chunks_per_call = math.ceil(batch * n / chunk)

    def sg(m: nn.Module, precision: str) -> Callable[[], torch.Tensor]:
        kw = {**config.settings.kernel_arguments(), "precision": precision, "max_batch": chunk}
        return lambda: smoothgrad(m, images, targets, seeds=seeds, **kw)

    def ceiling(m: nn.Module, precision: str) -> Callable[[], torch.Tensor]:
        # The whole call's work: every chunk of rows once, nothing else.
        def fn() -> torch.Tensor:
            for _ in range(chunks_per_call):
                g = forward_input_grad(m, rows_in, row_targets, precision)
            return g
        return fn

    frozen = _frozen(model)
    # The example folds models that torch.fx cannot trace (timm's BatchNormAct: EfficientNet-Lite0).
    example = images[:1]
    prepared = prepare_model(model, example=example)
    variants = [_Variant(name="sgcore fp32, model as given", fn=sg(frozen, "fp32"),
                         ceiling=ceiling(frozen, "fp32"), note=f"{chunks_per_call} chunk(s) of {chunk} rows")]
    variants += [_Variant(name=f"sgcore {p}, prepared", fn=sg(prepared, p), ceiling=ceiling(prepared, p))
                 for p in config.precisions]
    # How much of "prepared" is the NHWC layout, how much the BN fold.
    nchw = prepare_model(model, channels_last=False, example=example)
    variants.append(_Variant(name="sgcore fp32, prepared but NCHW", fn=sg(nchw, "fp32"),
                             ceiling=ceiling(nchw, "fp32")))
    if config.compile:
        compiled = prepare_model(model, compile=True, example=example)
        variants += [_Variant(name=f"sgcore {p}, prepared + compiled", fn=sg(compiled, p),
                              ceiling=ceiling(compiled, p)) for p in config.precisions]
    if config.captum:
        sigma = config.settings.noise_level * float(images[0].max() - images[0].min())
        variants.append(_Variant(
            name="captum NoiseTunnel(Saliency) fp32", strict=True,
            fn=lambda: captum_smoothgrad(model, images, targets, n=n, sigma=sigma, max_rows=chunk),
            note="own noise: Spearman includes Monte Carlo error"))
    if config.loop:
        variants.append(_Variant(
            name="per-sample loop fp32", strict=True, repeats=1,
            fn=lambda: per_sample_loop(frozen, images, targets, n=n, noise_level=config.settings.noise_level, seeds=seeds),
            note="same noise as sgcore"))

    for v in variants:
        log(f"warm-up and peak memory: {v.name}")
        with float32_mode("fp32", device) if v.strict else contextlib.nullcontext():
            for _ in range(config.warmup if v.repeats is None else 0):
                v.fn()
                if v.ceiling is not None:
                    v.ceiling()
            mem = _PeakMemory(device)
            with mem.measure():
                v.maps = v.fn()
            v.peak_mib = mem.peak_mib
    for r in range(config.repeats):
        log(f"round {r + 1}/{config.repeats}")
        for v in variants:
            if v.repeats is not None and r >= v.repeats:
                continue
            with float32_mode("fp32", device) if v.strict else contextlib.nullcontext():
                v.seconds.append(_timed(v.fn, device)[0])
            if v.ceiling is not None:
                v.ceiling_seconds.append(_timed(v.ceiling, device)[0])
    reference = variants[0].maps
    if reference is None:
        raise RuntimeError("the float32 reference variant produced no maps")
    return [
        Row(variant=v.name, images_per_s=batch / statistics.median(v.seconds),
            ceiling_images_per_s=batch / statistics.median(v.ceiling_seconds) if v.ceiling_seconds else None,
            peak_mem_mib=v.peak_mib,
            # The reference against itself would read 1.0000 and prove nothing.
            spearman=None if v is variants[0] else median_spearman(v.maps, reference),
            note="; ".join(filter(None, [v.note, "the Spearman reference" if v is variants[0] else ""])))
        for v in variants
    ]


def run_fidelity(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: BenchConfig,
                 *, precision: str = "fp32", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Samples each noise kind needs to reach Spearman ``threshold`` against an n=reference_n map."""
    frozen = prepare_model(model, example=images[:1])
    batch = images.shape[0]
    kw = dict(noise_level=config.settings.noise_level, precision=precision)
    log(f"fidelity reference: gaussian, n={config.reference_n}")
    reference = smoothgrad(frozen, images, targets, n_samples=config.reference_n,
                           seeds=torch.arange(batch) + 1_000_000, **kw)
    out = []
    for kind in NOISES:
        by_n: dict[int, float] = {}
        for n in config.grid:
            rhos = []
            for rep in range(config.fidelity_repeats):
                seeds = torch.arange(batch) + 1000 * (rep + 1)
                maps = smoothgrad(frozen, images, targets, n_samples=n, seeds=seeds, noise=kind, **kw)
                rhos.append(median_spearman(maps, reference))
            by_n[n] = statistics.fmean(rhos)
            log(f"  {kind:10s} n={n:4d} Spearman {by_n[n]:.4f}")
        needed = next((n for n in config.grid if by_n[n] >= config.threshold), None)
        out.append({"noise": kind, "samples_needed": needed, "spearman_by_n": by_n})
    return out


def run_precision_fidelity(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                           config: BenchConfig, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Spearman of each precision (prepared model) against strict float32 (model as given), same noise."""
    seeds = torch.arange(images.shape[0])
    kw = dict(n_samples=config.settings.n_samples, noise_level=config.settings.noise_level, seeds=seeds)
    reference = smoothgrad(_frozen(model), images, targets, precision="fp32", **kw)
    prepared = prepare_model(model, example=images[:1])
    out = []
    for precision in ("fp32", *[p for p in config.precisions if p != "fp32"]):
        maps = smoothgrad(prepared, images, targets, precision=precision, **kw)
        rho = spearman(reduce_channels(maps.cpu()), reduce_channels(reference.cpu()))
        out.append({"variant": f"{precision}, prepared", "median": float(rho.median()), "min": float(rho.min())})
        log(f"  precision {precision}: Spearman median {out[-1]['median']:.4f}, min {out[-1]['min']:.4f}")
    return out


def run(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: BenchConfig,
        *, setup: dict[str, Any], log: Callable[[str], None] = print) -> Report:
    """Runs the configured modes and returns the report."""
    report = Report(machine=machine_info(images.device),
                    setup={**setup, "n_samples": config.settings.n_samples, "noise_level": config.settings.noise_level,
                           "threshold": config.threshold, "reference_n": config.reference_n})
    report.setup.update(cost_model(model, images[0], config.settings.n_samples))
    if config.mode in ("speed", "both"):
        report.speed = run_speed(model, images, targets, config, log=log)
    if config.mode in ("fidelity", "both"):
        report.fidelity = run_fidelity(model, images, targets, config, log=log)
        report.precision = run_precision_fidelity(model, images, targets, config, log=log)
    return report


def write_report(report: Report, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Writes ``<stem>.md`` and ``<stem>.json`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(report.to_markdown() + "\n")
    js.write_text(report.to_json() + "\n")
    return md, js


def _frozen(model: nn.Module) -> nn.Module:
    """The model as given, with its parameters frozen (Captum would otherwise fill .grad)."""
    return prepare_model(model, fold_bn=False, channels_last=False)


def cost_model(model: nn.Module, image: torch.Tensor, n: int) -> dict[str, float]:
    """The two numbers of docs/performance.md for one image at ``n`` samples.

    FLOPs: counted by ``torch.utils.flop_counter`` over one forward and
    input-gradient backward of one sample, times ``n``. Bytes: activation
    traffic estimated as 4 × (bytes of every leaf module's output) per sample
    (written and re-read in the forward pass, read again and its gradient
    written/read in the backward pass), times ``n``; weights are amortised over
    the chunk and left out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    frozen = _frozen(model)
    x = image.unsqueeze(0)
    activation_bytes = [0]

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            activation_bytes[0] += output.numel() * output.element_size()

    leaves = [m for m in frozen.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        x = x.detach().requires_grad_(True)
        # .backward(), not autograd.grad: the counter's module tracker needs it;
        # the parameters are frozen, so only the input gradient is computed.
        with FlopCounterMode(display=False) as counter:
            frozen(x)[0, 0].backward()
    finally:
        for h in handles:
            h.remove()
    flops = float(counter.get_total_flops()) * n
    return {"gflop_per_image": flops / 1e9, "activation_mib_per_image": 4 * activation_bytes[0] * n / 2**20}
