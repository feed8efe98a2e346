"""The audit's settings: every default and every check of ``python -m jobs.audit``, once.

``jobs.audit``'s flags default to None and take their values from here
(:func:`sgcore.cli.config_from_args` leaves a flag at None to the dataclass);
``--help`` quotes :data:`DEFAULTS` and :data:`QUICK`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sgcore.audit.compare import DEFAULT_COMPARE_MARGIN
from sgcore.audit.reliability import DEFAULT_THRESHOLD as DEFAULT_RELIABILITY_THRESHOLD
from sgcore.audit.strategies import StrategyConfig
from sgcore.errors import ConfigError

Cascade = Literal["auto", "block", "layer"]
CASCADES: tuple[str, ...] = get_args(Cascade)

# The fields --quick changes, their values without it and with it. A field the user gave keeps
# its value either way (the field is None until the config resolves it, so a given value that
# happens to equal the default is still the user's).
DEFAULTS: dict[str, Any] = {"sample": 64, "n_samples": None, "steps": 32, "examples": 3, "road_pic": True}
QUICK: dict[str, Any] = {"sample": 4, "n_samples": 4, "steps": 8, "examples": 1, "road_pic": False}


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Settings of ``python -m jobs.audit``; model and data default to the manifest's.

    Attributes:
        results: the results directory (the job's ``--output``).
        report: where ``index.html`` and ``summary.json`` go.
        model, weights: override the manifest's model (e.g. a moved checkpoint).
        input: override the manifest's input root: images are re-read from
            ``input/<image_id>``.
        masks: root of binary object masks at ``masks/<image_id>``; None looks
            for a ``masks`` folder beside an input folder named ``images``.
        boxes: instead of masks, a CSV or Parquet file of object boxes with
            columns ``image_id, x0, y0, x1, y1`` in original image pixels
            (several rows per image: their union); drawn into map geometry
            with each row's geometry columns.
        compare: a second results directory to compare maps with.
        sample: images drawn (by a hash of the audit seed and image id) for
            the sanity and faithfulness checks (None: 64, with ``quick`` 4).
        n_samples: SmoothGrad samples for recomputed maps (None: the
            manifest's; with ``quick`` 4).
        steps: points of the deletion/insertion curves minus one (None: 32,
            with ``quick`` 8).
        examples: most/least concentrated examples shown per class (None: 3,
            with ``quick`` 1).
        road_pic: with ``faithfulness``, ROAD and PIC too (None: yes, with
            ``quick`` no: PIC's image interpolation is the costliest CPU work
            of a chunk, more than its model passes).
        literature: also compare the gradient, guided backprop, SmoothGrad,
            SmoothGrad² and VarGrad on the sampled images: a block-by-block
            randomization cascade per method and their removal scores, with a
            blurred-map control (:mod:`sgcore.audit.literature`; costly).
        cascade: what the sanity cascade randomizes per step: ``"layer"``
            each weight layer, ``"block"`` each top-level stage (timm's
            ``blocks.N``, torchvision's ``layerN``, ``features.N``; the
            layers outside stages one by one), ``"auto"`` blocks for a network
            with more than :data:`sgcore.audit.sanity.BLOCKS_ABOVE` weight
            layers, else layers.
        border_width: border band width, as a fraction of the shorter side.
        pointing_tolerance: pixels of slack in the pointing game.
        chunk_size: images per work item on the replica pool (the unit of
            retry and resume).
        quick: a cheap first look: the :data:`QUICK` values of the fields not
            given, in this process (``num_actors`` 0) unless ``num_actors`` or
            ``address`` is given.
        max_retries: attempts after the first for a chunk whose replica died.
        num_actors: Ray actors (None: one per CPU); 0 runs in this process, without Ray.
        gpus_per_actor: GPUs each actor reserves. The maps are recomputed on
            CUDA only when this is > 0 (and torch sees a GPU), in this
            process too; 0 keeps them on the CPU even on a GPU machine.
            ``summary.json["device"]`` says where they ran.
        strategies: cluster each class's maps into strategies (SpRAy) and flag
            likely shortcuts (:mod:`sgcore.audit.strategies`).
        strategy_by: group by ``"predicted"`` class or by ``"label"``.
        max_strategies: most clusters per class.
        strategy_resolution: maps are area-averaged to this many cells a side.
        reliability_threshold: maps whose estimated reliability (Spearman
            with their converged map) is below this count as unreliable.
        compare_margin: with ``compare``, an image's maps changed
            significantly when their Spearman is below what the two maps' own
            Monte Carlo noise allows (``expected_agreement`` of their
            reliability and reproducibility columns) by more than this.
        address: Ray cluster; None: ``RAY_ADDRESS``, else a fresh local Ray
            (``"auto"`` joins a cluster started with ``ray start``).
    """

    results: str
    report: str
    model: str | None = None
    weights: str | None = None
    input: str | None = None
    masks: str | None = None
    boxes: str | None = None
    compare: str | None = None
    sample: int | None = None
    sanity: bool = True
    faithfulness: bool = True
    road_pic: bool | None = None
    literature: bool = False
    localization: bool = True
    n_samples: int | None = None
    steps: int | None = None
    examples: int | None = None
    cascade: Cascade = "auto"
    border_width: float = 0.125
    pointing_tolerance: int = 0
    seed: int = 0
    chunk_size: int = 2
    quick: bool = False
    max_retries: int = 3
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
    strategies: bool = True
    strategy_by: str = "predicted"
    max_strategies: int = 8
    strategy_resolution: int = 16
    reliability_threshold: float = DEFAULT_RELIABILITY_THRESHOLD
    compare_margin: float = DEFAULT_COMPARE_MARGIN
    address: str | None = None
    allow_partial: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        chosen = QUICK if self.quick else DEFAULTS
        for name, value in chosen.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.quick and self.num_actors is None and self.address is None:
            # A first look runs in this process: no Ray to start, and the plan's probe replica does the work.
            object.__setattr__(self, "num_actors", 0)
        for name in ("results", "report"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty URL or path; got {value!r}")
        if self.boxes is not None:
            if not isinstance(self.boxes, str) or not self.boxes.strip():
                raise ConfigError(f"boxes must be a non-empty URL or path of a CSV/Parquet file; got {self.boxes!r}")
            if self.masks is not None:
                raise ConfigError("pass either masks (--masks) or boxes (--boxes) as localization ground truth, not both")
        for name in ("sample", "steps", "chunk_size"):
            _positive(name, getattr(self, name))
        if self.n_samples is not None:
            _positive("n_samples", self.n_samples)
        for name in ("examples", "pointing_tolerance", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer; got {value!r}")
        if self.num_actors is not None and (not isinstance(self.num_actors, int) or self.num_actors < 0):
            raise ConfigError(f"num_actors must be a non-negative integer; got {self.num_actors!r}")
        if self.cascade not in CASCADES:
            raise ConfigError(f"cascade must be one of {', '.join(CASCADES)}; got {self.cascade!r}")
        if not 0.0 < self.border_width < 0.5:
            raise ConfigError(f"border_width must be in (0, 0.5); got {self.border_width}")
        for name in ("reliability_threshold", "compare_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1]; got {value!r}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0; got {self.gpus_per_actor}")
        if self.strategies:
            self.strategy_config()  # bad strategy settings fail here

    @property
    def heavy(self) -> bool:
        """Whether the audit recomputes maps (the sanity, the faithfulness or the literature check)."""
        return self.sanity or self.faithfulness or self.literature

    def effective(self) -> AuditConfig:
        """The settings the audit runs with (resolved when the config is made; kept for callers)."""
        return self

    def strategy_config(self) -> StrategyConfig:
        """The strategy clustering's settings."""
        return StrategyConfig(by=self.strategy_by, max_clusters=self.max_strategies,  # type: ignore[arg-type]
                              resolution=self.strategy_resolution, border_width=self.border_width, seed=self.seed)


def default_of(name: str) -> Any:
    """The value a field takes when not given (without ``quick``)."""
    if name in DEFAULTS:
        return DEFAULTS[name]
    return AuditConfig.__dataclass_fields__[name].default


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
