"""The job's configuration: one frozen dataclass, checked on construction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from sgcore.errors import ConfigError
from sgcore.input_formats import LAYOUT_CLASSES
from sgcore.redact import redact_value
from sgcore.settings import (
    SmoothGradSettings,
    check_adaptive_policy,
    check_choices,
    check_non_negative,
    check_positive,
    check_unit_interval,
    check_url,
)

# The layouts' table (sgcore.input_formats; readers.LAYOUTS is built from it), not a copy.
InputFormat = Literal[("auto", *LAYOUT_CLASSES)]  # type: ignore[valid-type]
OutputFormat = Literal["parquet", "npz"]
Target = Literal["predicted", "label"]
Score = Literal["logit", "softmax", "log_softmax"]

INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
TARGETS: tuple[str, ...] = get_args(Target)
SCORES: tuple[str, ...] = get_args(Score)

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
    "preprocess",
    "target",
    "score",
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

_LATER_DEFAULTS: dict[str, Any] = {"preprocess": None, "score": "logit"}


@dataclass(frozen=True, kw_only=True)
class JobConfig(SmoothGradSettings):
    """Everything one SmoothGrad job needs; see ``python -m jobs.smoothgrad --help``.

    The map's settings (``n_samples``, ``noise_level``, ``aggregate``, ...) are
    the fields of :class:`~sgcore.settings.SmoothGradSettings`.
    """

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
    # --preprocess overrides of the model's own preprocessing (any Preprocess field).
    preprocess: dict[str, Any] | None = None
    # "predicted", "label", or "class:NAME_OR_INDEX" (one class for every image).
    target: str = "predicted"
    score: Score = "logit"
    seed: int = 0
    format: OutputFormat = "parquet"
    store_full: bool = False
    batch_size: int = 16
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
    # Storage: how long one call retries transient errors (a typical outage is a
    # minute or two), and how long the job waits on a store that stays down.
    storage_retry_s: float = 120.0
    storage_outage_s: float = 900.0
    overwrite: bool = False
    progress: bool = True
    # Drills and tests only: faults the actors inject (sgcore.pipeline._faults).
    inject_faults: str | None = None
    # Adaptive sampling (``--n-samples auto``): None samples every image
    # ``n_samples`` times; a number samples each image in rounds until its
    # reliability reaches it, between ``min_samples`` and ``max_samples``.
    target_reliability: float | None = None
    min_samples: int = 16
    max_samples: int = 512
    # Secrets may live here: never written to a manifest, a log or the hash.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_url(self, "input", "output")
        check_choices(self)
        super().__post_init__()
        check_positive(self, "shard_size", "batch_size")
        check_positive(self, "limit", "image_size", "num_actors", "min_actors", "max_actors", optional=True)
        check_non_negative(self, "max_retries")
        if not isinstance(self.target, str) or not (
            self.target in TARGETS or (self.target.startswith("class:") and self.target[6:].strip())
        ):
            raise ConfigError(
                f"target must be predicted, label or class:NAME_OR_INDEX; got {self.target!r}"
            )
        if self.preprocess is not None and not isinstance(self.preprocess, dict):
            raise ConfigError(f"preprocess must be a JSON object; got {type(self.preprocess).__name__}")
        check_unit_interval(self, "max_error_rate")
        check_non_negative(self, "storage_retry_s", "storage_outage_s")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0:
            raise ConfigError(
                "gpus_per_actor and cpus_per_actor must be >= 0; "
                f"got {self.gpus_per_actor} and {self.cpus_per_actor}"
            )
        if self.min_actors and self.max_actors and self.min_actors > self.max_actors:
            raise ConfigError(
                f"min_actors must be <= max_actors; got {self.min_actors} > {self.max_actors}"
            )
        if self.target_reliability is not None:
            try:
                check_adaptive_policy(self.target_reliability, self.min_samples, self.max_samples)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"adaptive sampling: {e}") from e
            if self.base == "integrated_gradients":
                raise ConfigError("adaptive sampling (--n-samples auto) does not support --base "
                                  "integrated_gradients; give a fixed --n-samples")
        if not isinstance(self.storage_options, dict):
            raise ConfigError(
                f"storage_options must be a JSON object; got {type(self.storage_options).__name__}"
            )

    def result_fields(self) -> dict[str, Any]:
        """The settings that decide the rows (no secrets, no execution knobs)."""
        fields_ = {name: getattr(self, name) for name in _RESULT_FIELDS}
        # Fields added later count only when set: outputs written before keep their hash.
        for name, default in _LATER_DEFAULTS.items():
            if fields_[name] == default:
                del fields_[name]
        if self.target_reliability is not None:
            # The policy decides the maps; fixed-n configs keep the hash they had.
            fields_["n_samples"] = "auto"
            fields_.update(target_reliability=self.target_reliability,
                           min_samples=self.min_samples, max_samples=self.max_samples)
        return fields_

    def config_hash(self) -> str:
        """A short stable hash of :meth:`result_fields`; guards resume."""
        blob = json.dumps(self.result_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """Every field except the storage options, for the manifest and logs.

        URLs come with their credentials (userinfo, signed-URL queries) redacted.
        """
        d = asdict(self)
        d.pop("storage_options", None)
        return redact_value(d)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

