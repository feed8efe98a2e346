"""Command-line plumbing shared by the jobs: flags <-> JobConfig, error reporting."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from sgcore.config import INPUT_FORMATS, OUTPUT_FORMATS, TARGETS, JobConfig
from sgcore.errors import ConfigError, InputError
from sgcore.settings import AGGREGATES, BASES, NOISES, PRECISIONS, REDUCTIONS

DEMO_DATA = "data/demo"
DEMO_OUTPUT = "outputs/demo"
DEMO_SHARD_SIZE = 30


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m jobs.smoothgrad`` (and of jobs that wrap it)."""
    d = JobConfig(input="-", output="-")  # defaults, in one place
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", help="fsspec URL or path of the images (s3://, gs://, file://, a "
                    "local folder). Omit both --input and --output to run the embedded demo.")
    io.add_argument("--output", help="URL or path of the results directory")
    io.add_argument("--input-format", choices=INPUT_FORMATS, default=d.input_format)
    io.add_argument("--image-column", help="Parquet inputs: column holding the image bytes")
    io.add_argument("--label-column", help="Parquet inputs: column holding the label")
    io.add_argument("--id-column", help="Parquet inputs: column holding a stable image id")
    io.add_argument("--labels", help="CSV/Parquet file mapping image path -> label")
    io.add_argument("--limit", type=int, help="only the first N images (sorted order)")
    io.add_argument("--shard-size", type=int, default=d.shard_size,
                    help="images per shard: the unit of work, retry and output file")
    io.add_argument("--format", choices=OUTPUT_FORMATS, default=d.format,
                    help="parquet: maps in the table; npz: maps in maps/part-<shard>.npz")
    io.add_argument("--store-full", action="store_true", help="also keep per-channel (C, H, W) maps")
    io.add_argument("--storage-options", type=_json_object, default={},
                    help="JSON object passed to fsspec (e.g. '{\"anon\": true}'); never logged")
    io.add_argument("--overwrite", action="store_true",
                    help="replace results of a different config in --output instead of refusing")

    m = parser.add_argument_group("model")
    m.add_argument("--model", default=d.model, help="'demo' or a torchvision architecture (resnet50, vit_b_16, ...)")
    m.add_argument("--weights", default=d.weights,
                   help="'default', 'none', a torchvision weight name (IMAGENET1K_V2) or a checkpoint URL")
    m.add_argument("--image-size", type=int, help="crop size override (maps have this size)")
    m.add_argument("--target", choices=TARGETS, default=d.target,
                   help="class to explain: the model's prediction, or the image's label")

    k = parser.add_argument_group("SmoothGrad")
    k.add_argument("--n-samples", type=int, default=d.n_samples, help="noisy samples per image")
    k.add_argument("--noise-level", type=float, default=d.noise_level,
                   help="sigma as a fraction of each image's value range")
    k.add_argument("--noise", choices=NOISES, default=d.noise,
                   help="gaussian (the paper), antithetic pairs, or sobol (quasi-random; fewer samples at large n)")
    k.add_argument("--aggregate", choices=AGGREGATES, default=d.aggregate,
                   help="mean: SmoothGrad; square: SmoothGrad^2; var: VarGrad")
    k.add_argument("--base", choices=BASES, default=d.base, help="the map that is smoothed")
    k.add_argument("--ig-steps", type=int, default=d.ig_steps,
                   help="integration points (Gauss-Legendre) of integrated_gradients")
    k.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32 (strict, TF32 off), tf32, or bf16/fp16 autocast with float32 accumulation")
    k.add_argument("--reduction", choices=REDUCTIONS, default=d.reduction,
                   help="how the stored 2-D map reduces colour channels")
    k.add_argument("--seed", type=int, default=d.seed, help="run seed; each image's seed derives from it and its id")
    k.add_argument("--batch-size", type=int, default=d.batch_size, help="images per kernel call")
    k.add_argument("--max-batch", type=int, help="noisy samples per forward pass (default: automatic)")
    k.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep BatchNorm layers instead of folding them into convolutions")
    k.add_argument("--compile", action="store_true", help="torch.compile the model")

    r = parser.add_argument_group("cluster")
    r.add_argument("--address", help="Ray address, or 'auto' for a cluster started with `ray start` on this machine (default: RAY_ADDRESS, else a new local Ray)")
    r.add_argument("--num-actors", type=int, help="fixed number of model replicas")
    r.add_argument("--min-actors", type=int, help="start only with at least this many replicas")
    r.add_argument("--max-actors", type=int, help="grow up to this many replicas (asks the autoscaler)")
    r.add_argument("--gpus-per-actor", type=float, default=d.gpus_per_actor,
                   help="GPUs per replica (0.5 packs two on one GPU)")
    r.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor, help="CPUs reserved per replica")
    r.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retries per shard before its images become error rows")
    r.add_argument("--max-error-rate", type=float, default=d.max_error_rate,
                   help="stop when more than this share of images fail")
    r.add_argument("--quiet", dest="progress", action="store_false", help="no progress lines")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> JobConfig:
    """Builds the JobConfig from parsed flags (flags named like its fields)."""
    values = {name: getattr(args, name) for name in JobConfig.field_names() if hasattr(args, name)}
    values.update(overrides)
    return JobConfig(**values)


def run_cli(main: Callable[[], int]) -> int:
    """Runs ``main`` turning user errors into one clear line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="[sgcore] %(levelname)s %(message)s")
    try:
        return main()
    except (ConfigError, InputError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        # Missing or refused storage credentials that reached us unwrapped (botocore's
        # NoCredentialsError is not an OSError): the user's to fix, so exit 2.
        from sgcore.io import storage_auth_error

        auth = storage_auth_error(e, "access storage")
        if auth is not None:
            print(f"error: {auth}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # storage that stays broken after the retries: name it
            print(f"error: storage failure: {e}", file=sys.stderr)
            return 1
        raise


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r} ({e.msg})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r}")
    return value
