"""The job's configuration: one frozen dataclass, checked on construction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from sgcore.errors import ConfigError

InputFormat = Literal["auto", "images", "webdataset", "parquet"]
OutputFormat = Literal["parquet", "npz"]
Target = Literal["predicted", "label"]

# Copies of the owners' tuples (sgcore.io.readers.INPUT_FORMATS; AGGREGATES, BASES,
# PRECISIONS, NOISES in sgcore.attribution.smoothgrad; REDUCTIONS in
# sgcore.attribution.postprocess): importing them would make `import sgcore.config`
# (and the CLI that only submits a job) pull torch, PIL and pyarrow.
# tests/test_config.py holds the copies equal to the owners.
INPUT_FORMATS = ("auto", "images", "webdataset", "parquet")
OUTPUT_FORMATS = ("parquet", "npz")
TARGETS = ("predicted", "label")
AGGREGATES = ("mean", "square", "var")
BASES = ("gradient", "input_x_gradient", "integrated_gradients", "guided_backprop")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
NOISES = ("gaussian", "antithetic", "sobol")
REDUCTIONS = ("abs_sum", "sum", "max_abs")

# Fields that change the maps or the rows: they make up the config hash that
# guards resume. Everything else (where to run, how fast) may change freely.
_RESULT_FIELDS = (
    "input",
    "input_format",
    "image_column",
    "label_column",
    "id_column",
    "labels",
    "limit",
    "shard_size",
    "model",
    "weights",
    "image_size",
    "target",
    "n_samples",
    "noise_level",
    "noise",
    "aggregate",
    "base",
    "ig_steps",
    "precision",
    "reduction",
    "seed",
    "format",
    "store_full",
)


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one SmoothGrad job needs; see ``python -m jobs.smoothgrad --help``."""

    input: str
    output: str
    input_format: InputFormat = "auto"
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    labels: str | None = None
    limit: int | None = None
    shard_size: int = 256
    model: str = "demo"
    weights: str = "default"
    image_size: int | None = None
    target: Target = "predicted"
    n_samples: int = 50
    noise_level: float = 0.15
    noise: str = "gaussian"
    aggregate: str = "mean"
    base: str = "gradient"
    ig_steps: int = 32
    precision: str = "fp32"
    reduction: str = "abs_sum"
    seed: int = 0
    format: OutputFormat = "parquet"
    store_full: bool = False
    batch_size: int = 16
    max_batch: int | None = None
    fold_bn: bool = True
    compile: bool = False
    # Execution: where and how wide, not what.
    address: str | None = None
    num_actors: int | None = None
    min_actors: int | None = None
    max_actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    max_retries: int = 3
    max_error_rate: float = 0.5
    overwrite: bool = False
    progress: bool = True
    # Secrets may live here: never written to a manifest, a log or the hash.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty URL or path; got {value!r}")
        _choice("input_format", self.input_format, INPUT_FORMATS)
        _choice("format", self.format, OUTPUT_FORMATS)
        _choice("target", self.target, TARGETS)
        _choice("aggregate", self.aggregate, AGGREGATES)
        _choice("base", self.base, BASES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("noise", self.noise, NOISES)
        _choice("reduction", self.reduction, REDUCTIONS)
        _positive("n_samples", self.n_samples)
        _positive("shard_size", self.shard_size)
        _positive("batch_size", self.batch_size)
        _positive("ig_steps", self.ig_steps)
        for name in ("limit", "max_batch", "image_size", "num_actors", "min_actors", "max_actors"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0; got {self.max_retries}")
        if not 0.0 <= float(self.noise_level) <= 1.0:
            raise ConfigError(f"noise_level must be in [0, 1]; got {self.noise_level}")
        if not 0.0 <= float(self.max_error_rate) <= 1.0:
            raise ConfigError(f"max_error_rate must be in [0, 1]; got {self.max_error_rate}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0:
            raise ConfigError(
                "gpus_per_actor and cpus_per_actor must be >= 0; "
                f"got {self.gpus_per_actor} and {self.cpus_per_actor}"
            )
        if self.min_actors and self.max_actors and self.min_actors > self.max_actors:
            raise ConfigError(
                f"min_actors must be <= max_actors; got {self.min_actors} > {self.max_actors}"
            )
        if not isinstance(self.storage_options, dict):
            raise ConfigError(
                f"storage_options must be a JSON object; got {type(self.storage_options).__name__}"
            )

    def result_fields(self) -> dict[str, Any]:
        """The settings that decide the rows (no secrets, no execution knobs)."""
        return {name: getattr(self, name) for name in _RESULT_FIELDS}

    def config_hash(self) -> str:
        """A short stable hash of :meth:`result_fields`; guards resume."""
        blob = json.dumps(self.result_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """Every field except the storage options, for the manifest and logs."""
        d = asdict(self)
        d.pop("storage_options", None)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
