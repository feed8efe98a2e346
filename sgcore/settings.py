"""SmoothGrad's settings and the value checks every config shares (no torch here).

The choices of the kernel (``aggregate``, ``base``, ``precision``, ``noise``,
``reduction``) are declared once, as ``Literal`` types; the tuples of allowed
values are derived from them. The kernel (:mod:`sgcore.attribution`) imports
them from here, and so do the job's config, the audit and the benchmark, so
that ``import sgcore.config`` on a laptop that only submits jobs pulls no
torch. This module depends on nothing but :mod:`sgcore.errors`; every layer
may import it.

:class:`SmoothGradSettings` holds the fields that decide a map; the job's
:class:`~sgcore.config.JobConfig`, the audit's
:class:`~sgcore.audit.sanity.MapSettings` and the benchmark's config build on
it, and :meth:`SmoothGradSettings.kernel_arguments` is the one mapping onto
``smoothgrad(...)`` keywords.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin

from sgcore.errors import ConfigError

Aggregate = Literal["mean", "square", "var"]
Base = Literal["gradient", "input_x_gradient", "integrated_gradients", "guided_backprop"]
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
Noise = Literal["gaussian", "antithetic", "sobol"]
Reduction = Literal["abs_sum", "sum", "max_abs"]

AGGREGATES: tuple[str, ...] = get_args(Aggregate)
BASES: tuple[str, ...] = get_args(Base)
PRECISIONS: tuple[str, ...] = get_args(Precision)
NOISES: tuple[str, ...] = get_args(Noise)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


@dataclass(frozen=True, kw_only=True)
class SmoothGradSettings:
    """What decides a SmoothGrad map (Smilkov et al. 2017, arXiv:1706.03825).

    Attributes:
        n_samples: noisy samples per image.
        noise_level: σ as a fraction of each image's value range, in [0, 1].
        noise: ``"gaussian"`` (the paper), ``"antithetic"`` or ``"sobol"``.
        aggregate: ``"mean"`` (SmoothGrad), ``"square"`` (SmoothGrad²) or
            ``"var"`` (VarGrad).
        base: the map that is smoothed.
        ig_steps: integration points of ``base="integrated_gradients"``.
        precision: ``"fp32"`` (strict), ``"tf32"``, ``"bf16"`` or ``"fp16"``.
        reduction: how the stored 2-D map reduces colour channels.
        max_batch: model inputs per forward pass (None: automatic); the maps
            do not depend on it.
    """

    n_samples: int = 50
    noise_level: float = 0.15
    noise: Noise = "gaussian"
    aggregate: Aggregate = "mean"
    base: Base = "gradient"
    ig_steps: int = 32
    precision: Precision = "fp32"
    reduction: Reduction = "abs_sum"
    max_batch: int | None = None

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "n_samples", "ig_steps")
        check_positive(self, "max_batch", optional=True)
        check_unit_interval(self, "noise_level")

    def kernel_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``smoothgrad(model, images, targets, **these)``."""
        return {
            "n_samples": self.n_samples,
            "noise_level": self.noise_level,
            "aggregate": self.aggregate,
            "base": self.base,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "noise": self.noise,
            "ig_steps": self.ig_steps,
        }

    def smoothgrad_settings(self) -> SmoothGradSettings:
        """Just these settings (a config that builds on them drops its other fields)."""
        return SmoothGradSettings(**{f.name: getattr(self, f.name) for f in fields(SmoothGradSettings)})


# ------------------------------------------------------------------ checks
# One function per kind of value; each names the field, what it must be and what came.


def check_choices(obj: object) -> None:
    """Every field annotated with a ``Literal`` (or ``Literal | None``) holds one of its values."""
    for name, choices, optional in _literal_fields(type(obj)):
        value = getattr(obj, name)
        if optional and value is None:
            continue
        check_choice(name, value, choices)


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_positive(obj: object, *names: str, optional: bool = False) -> None:
    """Integer fields >= 1 (``optional``: or None); bools are refused."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")


def check_non_negative(obj: object, *names: str) -> None:
    """Numeric fields >= 0."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{name} must be >= 0; got {value!r}")


def check_unit_interval(obj: object, *names: str, optional: bool = False) -> None:
    """Numeric fields in [0, 1] (``optional``: or None)."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1]; got {value}")


def check_url(obj: object, *names: str, optional: bool = False) -> None:
    """Fields that hold a URL or path: a non-empty string (``optional``: or None)."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty URL or path; got {value!r}")


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple[object, ...], bool], ...]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        hint = hints[f.name]
        args = get_args(hint)
        if get_origin(hint) is Literal:
            found.append((f.name, args, False))
        elif type(None) in args:
            literals = [a for a in args if get_origin(a) is Literal]
            if len(literals) == 1:
                found.append((f.name, get_args(literals[0]), True))
    return tuple(found)


# ------------------------------------------------------------------ adaptive sampling
# Samples per noise block of adaptive sampling: sobol strata, antithetic pairs
# and the reliability estimate's split halves never straddle a block.
ADAPTIVE_BLOCK = 8


def check_adaptive_policy(target_reliability: object, min_samples: object, max_samples: object,
                 round_samples: object = 16) -> tuple[float, int, int, int]:
    """Validates an adaptive policy; returns it normalised.

    Raises:
        TypeError, ValueError: worded ``"target_reliability must be in (0, 1); got 1.5"``.
    """
    if isinstance(target_reliability, bool) or not isinstance(target_reliability, (int, float)):
        raise TypeError(f"target_reliability must be a float; got {type(target_reliability).__name__}")
    target = float(target_reliability)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_reliability must be in (0, 1); got {target}")
    low = _int_at_least("min_samples", min_samples, minimum=2 * ADAPTIVE_BLOCK)
    high = _int_at_least("max_samples", max_samples, minimum=2 * ADAPTIVE_BLOCK)
    step = _int_at_least("round_samples", round_samples, minimum=ADAPTIVE_BLOCK)
    if low > high:
        raise ValueError(f"min_samples must be <= max_samples; got {low} > {high}")
    for name, value in (("min_samples", low), ("max_samples", high), ("round_samples", step)):
        if value % ADAPTIVE_BLOCK:
            raise ValueError(f"{name} must be a multiple of {ADAPTIVE_BLOCK} (whole noise blocks); got {value}")
    return target, low, high, step


def _int_at_least(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value
