"""Command-line plumbing shared by the jobs: flag groups, flags -> config, error reporting.

Every job builds its parser from the same groups (:func:`add_storage_arguments`,
:func:`add_ray_arguments`, :func:`add_model_arguments`,
:func:`add_smoothgrad_arguments`) and turns parsed flags into its config with
:func:`config_from_args`, so a flag means the same and fails the same way in
every job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sgcore.config import INPUT_FORMATS, OUTPUT_FORMATS, SCORES, TARGETS, JobConfig
from sgcore.errors import ConfigError, InputError, Stopped
from sgcore.redact import redact_text
from sgcore.settings import AGGREGATES, BASES, NOISES, PRECISIONS, REDUCTIONS, SmoothGradSettings

DEMO_DATA = "data/demo"
DEMO_OUTPUT = "outputs/demo"
DEMO_SHARD_SIZE = 30

C = TypeVar("C")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and ends each option's help with its default.

    Options whose default is None say in their own help what happens without
    them; on/off flags need no default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "(default" in text or default is None or isinstance(default, bool)
                or default is argparse.SUPPRESS):
            return text
        if isinstance(default, (tuple, list)):
            return f"{text} (default: {' '.join(map(str, default)) or 'none'})"
        return f"{text} (default: %(default)s)"


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A job's parser: its module docstring as the description, defaults in the help."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def add_storage_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--storage-options JSON``: parsed by :func:`config_from_args`, never echoed.

    ``type=str`` on purpose: argparse prints an invalid value back in its
    error, and this one holds secrets.
    """
    parser.add_argument("--storage-options", metavar="JSON", default=None,
                        help="JSON object of fsspec options, e.g. '{\"anon\": true}' or an endpoint and keys "
                             "(default: none; credentials from the standard chains). Never logged or echoed")


def add_ray_arguments(parser: argparse.ArgumentParser, *, gpus_per_actor: float,
                      cpus_per_actor: float | None = None,
                      num_actors_help: str = "fixed number of model replicas (default: autoscale between "
                                             "--min-actors and --max-actors, one replica per GPU)",
                      ) -> argparse._ArgumentGroup:
    """Where the work runs: ``--address``, ``--num-actors``, ``--gpus-per-actor``.

    Args:
        gpus_per_actor: its default (the config's; the tests hold them equal).
        cpus_per_actor: its default; given, the pool is elastic: also
            ``--min-actors``, ``--max-actors`` and ``--cpus-per-actor``.
    """
    elastic = cpus_per_actor is not None
    r = parser.add_argument_group("cluster")
    r.add_argument("--address", help="Ray address, or 'auto' for a cluster started with `ray start` on this "
                   "machine (default: RAY_ADDRESS, else a new local Ray)")
    r.add_argument("--num-actors", type=int, help=num_actors_help)
    if elastic:
        r.add_argument("--min-actors", type=int, help="start only with at least this many replicas "
                       "(default: 1)")
        r.add_argument("--max-actors", type=int, help="grow up to this many replicas, asking the autoscaler "
                       "(default: what fits now)")
    r.add_argument("--gpus-per-actor", type=float, default=gpus_per_actor,
                   help="GPUs per replica (0.5 packs two on one GPU; 0: on the CPU)")
    if elastic:
        r.add_argument("--cpus-per-actor", type=float, default=cpus_per_actor,
                       help="CPUs reserved per replica")
    return r


def add_model_arguments(parser: argparse.ArgumentParser, *, defaults: JobConfig | None = None,
                        what: str = "the manifest's") -> argparse._ArgumentGroup:
    """``--model``, ``--weights``, ``--image-size``.

    Args:
        defaults: the config whose defaults the flags show; None: the flags
            override ``what`` (a results manifest) and default to None.
    """
    m = parser.add_argument_group("model")
    model_help = ("'demo', a torchvision architecture (resnet50, vit_b_16, ...), timm:NAME, "
                  "hf:DIR_OR_URL_OR_HUB_ID, torchscript:URL, export:URL or py:MODULE:CALLABLE")
    weights_help = ("'default', 'none', a torchvision weight name (IMAGENET1K_V2) or a checkpoint URL "
                    "(.pt/.pth/.safetensors)")
    size_help = "crop size override (maps have this size)"
    if defaults is None:
        m.add_argument("--model", help=f"{model_help} (default: {what})")
        m.add_argument("--weights", help=f"{weights_help} (default: {what})")
    else:
        m.add_argument("--model", default=defaults.model, help=model_help)
        m.add_argument("--weights", default=defaults.weights, help=weights_help)
        m.add_argument("--image-size", type=int, help=f"{size_help} (default: the model's own)")
    return m


_SMOOTHGRAD_HELP = {
    "n_samples": "noisy samples per image (cost grows linearly with it)",
    "noise_level": "sigma as a fraction of each image's value range",
    "noise": "gaussian (the paper), antithetic pairs, or sobol (quasi-random; fewer samples at large n)",
    "aggregate": "mean: SmoothGrad; square: SmoothGrad^2; var: VarGrad",
    "base": "the map that is smoothed",
    "ig_steps": "integration points (Gauss-Legendre) of integrated_gradients (cost grows linearly with it)",
    "precision": "fp32 (strict, TF32 off), tf32, or bf16/fp16 autocast with float32 accumulation",
    "reduction": "how the stored 2-D map reduces colour channels",
    "max_batch": "noisy samples per forward pass",
}
_SMOOTHGRAD_TYPES: dict[str, Any] = {
    "n_samples": int, "noise_level": float, "noise": NOISES, "aggregate": AGGREGATES, "base": BASES,
    "ig_steps": int, "precision": PRECISIONS, "reduction": REDUCTIONS, "max_batch": int,
}


def add_smoothgrad_arguments(parser: argparse.ArgumentParser, *, defaults: SmoothGradSettings | None = None,
                             only: Iterable[str] | None = None, what: str = "the run's",
                             title: str = "SmoothGrad") -> argparse._ArgumentGroup:
    """The flags of :class:`~sgcore.settings.SmoothGradSettings` (``--n-samples``, ``--aggregate``, ...).

    Args:
        defaults: settings whose values are the defaults; None: every flag
            defaults to None, meaning ``what`` (the settings a run recorded).
        only: the fields to offer (default: all).
        title: the group's heading in ``--help``.
    """
    g = parser.add_argument_group(title)
    names = list(only) if only is not None else list(_SMOOTHGRAD_HELP)
    for name in names:
        kind = _SMOOTHGRAD_TYPES[name]
        flag = "--" + name.replace("_", "-")
        text = _SMOOTHGRAD_HELP[name]
        default = getattr(defaults, name) if defaults is not None else None
        if default is None:
            text += " (default: automatic)" if defaults is not None else f" (default: {what})"
        kw: dict[str, Any] = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        g.add_argument(flag, default=default, help=text, **kw)
    return g


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m jobs.smoothgrad`` (and of jobs that wrap it)."""
    d = JobConfig(input="-", output="-")  # defaults, in one place
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", help="fsspec URL or path of the images (s3://, gs://, file://, a "
                    "local folder). Omit both --input and --output to run the embedded demo "
                    "(default: the demo)")
    io.add_argument("--output", help=f"URL or path of the results directory (default: the demo's, {DEMO_OUTPUT})")
    io.add_argument("--input-format", choices=INPUT_FORMATS, default=d.input_format,
                    help="dataset layout; auto detects it from the files")
    io.add_argument("--image-column", help="Parquet inputs: column holding the image bytes (default: detected)")
    io.add_argument("--label-column", help="Parquet inputs: column holding the label (default: none)")
    io.add_argument("--id-column", help="Parquet inputs: column holding a stable image id "
                    "(default: file and row number)")
    io.add_argument("--labels", help="CSV/Parquet file mapping image path -> label (default: the parent folder)")
    io.add_argument("--limit", type=int, help="only the first N images, sorted order (default: all)")
    io.add_argument("--shard-size", type=int, default=d.shard_size,
                    help=f"images per shard: the unit of work, retry and output file (the demo uses "
                         f"{DEMO_SHARD_SIZE}; default: %(default)s)")
    io.add_argument("--format", choices=OUTPUT_FORMATS, default=d.format,
                    help="parquet: maps in the table; npz: maps in maps/part-<shard>.npz")
    io.add_argument("--store-full", action="store_true", help="also keep per-channel (C, H, W) maps")
    add_storage_arguments(io)
    io.add_argument("--overwrite", action="store_true",
                    help="replace results of a different config in --output instead of refusing")

    m = add_model_arguments(parser, defaults=d)
    m.add_argument("--preprocess", type=_json_object, default=None,
                   help="JSON object overriding fields of the model's preprocessing, e.g. "
                   "'{\"resize_mode\": \"squash\", \"crop_size\": [224, 224]}'; the manifest records the result "
                   "(default: the preprocessing the model source declares)")
    m.add_argument("--target", default=d.target,
                   help=f"class to explain: {' or '.join(TARGETS)} (the image's label), or "
                   "class:NAME_OR_INDEX for one class in every image")
    m.add_argument("--score", choices=SCORES, default=d.score,
                   help="whose gradient is explained: the logit, the softmax probability or its log")

    k = add_smoothgrad_arguments(parser, defaults=d)
    for action in k._group_actions:  # the job alone also takes --n-samples auto
        if action.dest == "n_samples":
            action.type = _n_samples
            action.help = "noisy samples per image, or 'auto': sample each image until --target-reliability"
    k.add_argument("--target-reliability", type=float,
                   help="with --n-samples auto: stop an image once its map's estimated reliability "
                        "(Spearman with the converged map) reaches this, in (0, 1) (default: none)")
    k.add_argument("--min-samples", type=int, default=d.min_samples,
                   help="with --n-samples auto: samples every image gets first (a multiple of 8)")
    k.add_argument("--max-samples", type=int, default=d.max_samples,
                   help="with --n-samples auto: samples an image never exceeds (a multiple of 8)")
    k.add_argument("--seed", type=int, default=d.seed, help="run seed; each image's seed derives from it and its id")
    k.add_argument("--batch-size", type=int, default=d.batch_size, help="images per kernel call")
    k.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep BatchNorm layers instead of folding them into convolutions")
    k.add_argument("--compile", action="store_true", help="torch.compile the model")

    r = add_ray_arguments(parser, gpus_per_actor=d.gpus_per_actor, cpus_per_actor=d.cpus_per_actor)
    r.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retries per shard before its images become error rows")
    r.add_argument("--storage-retry-s", type=float, default=d.storage_retry_s,
                   help="seconds one storage call retries transient errors (timeouts, 5xx, "
                        "throttling) before its shard fails and is retried")
    r.add_argument("--storage-outage-s", type=float, default=d.storage_outage_s,
                   help="stop the job once storage has failed this many seconds with no shard "
                        "done in between (a store that is down for good)")
    r.add_argument("--max-error-rate", type=float, default=d.max_error_rate,
                   help="stop when more than this share of images fail")
    r.add_argument("--quiet", dest="progress", action="store_false", help="no progress lines")
    r.add_argument("--inject-faults", metavar="SPEC",
                   help="drills only: actors fail on purpose, e.g. 'exit:crash-me@0,raise:poison' (an actor "
                        "exits on the first attempt of a shard holding an id with crash-me; shards with poison "
                        "raise); see sgcore/pipeline/_faults.py (default: no faults)")


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Builds the config ``cls`` (a dataclass) from parsed flags named like its fields.

    Flags left at None keep the dataclass's default; ``--storage-options`` is
    parsed here (see :func:`parse_storage_options`); ``overrides`` win.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "storage_options" in names:
        values["storage_options"] = parse_storage_options(getattr(args, "storage_options", None))
    values.update(overrides)
    if "target_reliability" in names:
        _adaptive_values(values)
    return cls(**values)


def _adaptive_values(values: dict[str, Any]) -> None:
    """``--n-samples auto`` needs ``--target-reliability`` and the reverse; auto runs record max_samples."""
    auto = values.get("n_samples") == "auto"
    if auto and values.get("target_reliability") is None:
        raise ConfigError("--n-samples auto needs --target-reliability R (e.g. 0.9)")
    if not auto and values.get("target_reliability") is not None:
        raise ConfigError("--target-reliability works with --n-samples auto; drop one of them")
    if auto:
        # An adaptive map has at most max_samples samples; rows record the actual count.
        values["n_samples"] = values.get("max_samples", JobConfig.__dataclass_fields__["max_samples"].default)


def parse_storage_options(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """The JSON object of ``--storage-options``; errors never show the text (it holds secrets)."""
    if text is None:
        return {}
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options must be a JSON object; it is not valid JSON ({e.msg} at "
                          f"character {e.pos}); the value is not shown, it may hold secrets") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--storage-options must be a JSON object; got a JSON {_json_kind(value)}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    """``--preprocess JSON``: a JSON object (no secrets here, so the text may be shown)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r} ({e.msg})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r}")
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _n_samples(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto'; got {text!r}") from None


class _RedactingFormatter(logging.Formatter):
    """Log lines with the credentials inside URLs redacted (:func:`sgcore.redact.redact_text`)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _redacting_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, value, tb))))


def run_cli(main: Callable[[], int]) -> int:
    """Runs ``main`` turning user errors into one clear line and exit code 2.

    Whatever it prints (errors, log lines, an unexpected traceback) has the
    credentials inside URLs redacted.
    """
    logging.basicConfig(level=logging.WARNING, format="[sgcore] %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_RedactingFormatter(handler.formatter._fmt if handler.formatter else None))
    try:
        return main()
    except (ConfigError, InputError, ImportError) as e:
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Stopped) else Stopped.received
        if getattr(e, "reported", False):  # the job already said, in one line, what it kept
            return 128 + signum if signum is not None else 130
        if signum is not None:
            stop = Stopped(signum)
            print(f"stopped by {stop}; rerun the same command to resume (committed shards are kept)",
                  file=sys.stderr)
            return 128 + signum
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        # Missing or refused storage credentials that reached us unwrapped (botocore's
        # NoCredentialsError is not an OSError): the user's to fix, so exit 2.
        from sgcore.io import storage_auth_error

        auth = storage_auth_error(e, "access storage")
        if auth is not None:
            print(f"error: {redact_text(str(auth))}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # storage that stays broken after the retries: name it
            print(f"error: storage failure: {redact_text(str(e))}", file=sys.stderr)
            return 1
        # A bug keeps its traceback; the hook prints it with credentials redacted.
        sys.excepthook = _redacting_excepthook
        raise

