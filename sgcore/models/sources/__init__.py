"""Where ``--model`` networks come from: one module per source, behind one small
protocol (:class:`ModelSource`), in one table (:data:`SOURCES`).

- :mod:`~sgcore.models.sources.torchvision`: bare names, torchvision's classifiers and ``demo``.
- :mod:`~sgcore.models.sources.timm`: ``timm:NAME``.
- :mod:`~sgcore.models.sources.hf`: ``hf:DIR_OR_URL_OR_HUB_ID``.
- :mod:`~sgcore.models.sources.archive`: ``torchscript:URL`` and ``export:URL``.
- :mod:`~sgcore.models.sources.py`: ``py:MODULE:CALLABLE``.

:func:`resolve` turns ``--model``/``--weights`` into a :class:`ModelSpec` once;
:mod:`sgcore.models.registry` makes one call into its source per public function.
A package adds a prefix with :func:`register_source`, or (so that Ray's replicas,
other processes, know it too) with an entry point in the ``sgcore.model_sources``
group naming a :class:`ModelSource` object, as fsspec's registry does for protocols.
"""

from __future__ import annotations

from typing import Any

from sgcore.errors import ConfigError
from sgcore.models.sources.archive import SIDECAR_SUFFIX, ArchiveSource
from sgcore.models.sources.base import Built, ModelSource, ModelSpec, SourceBase
from sgcore.models.sources.hf import HuggingFaceSource, hf_preprocess
from sgcore.models.sources.py import PythonSource
from sgcore.models.sources.timm import TimmSource, resolve_timm_preprocess, timm_preprocess
from sgcore.models.sources.torchvision import TorchvisionSource

ENTRY_POINT_GROUP = "sgcore.model_sources"

# prefix -> source; "" holds the bare names (torchvision + demo).
SOURCES: dict[str, ModelSource] = {
    source.prefix: source
    for source in (TorchvisionSource(), TimmSource(), HuggingFaceSource(), ArchiveSource("torchscript"),
                   ArchiveSource("export"), PythonSource())
}
_entry_points_loaded = False


def register_source(source: ModelSource, *, clobber: bool = False) -> None:
    """Adds ``source`` to the table under ``source.prefix`` (``--model PREFIX:VALUE``).

    Args:
        source: an object with the :class:`ModelSource` methods.
        clobber: replace a source already registered under that prefix.

    Raises:
        ValueError: the prefix is taken (without ``clobber``), empty or holds ``:``.
        TypeError: ``source`` lacks the protocol's methods.
    """
    if not isinstance(source, ModelSource):
        raise TypeError(f"source must implement ModelSource (prefix, example, load, preprocess, identity, "
                        f"check_base, probe_on_driver); got {type(source).__name__}")
    prefix = source.prefix
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        raise ValueError(f"a source's prefix must be a non-empty string without ':'; got {prefix!r}")
    if prefix in SOURCES and not clobber:
        raise ValueError(f"model source {prefix!r} is already registered "
                         f"({type(SOURCES[prefix]).__name__}); pass clobber=True to replace it")
    SOURCES[prefix] = source


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in SOURCES:
            register_source(ep.load())


def split_spec(name: str) -> tuple[str, str] | None:
    """``("timm", "resnet10t")`` for ``"timm:resnet10t"``; None for a bare (torchvision/demo) name."""
    prefix, sep, value = name.partition(":")
    if not sep:
        return None
    if prefix not in SOURCES:
        _load_entry_points()
    if prefix not in SOURCES or not prefix:
        return None
    if not value:
        raise ConfigError(f"--model {name!r} names no model after '{prefix}:'; e.g. {SOURCES[prefix].example}")
    return prefix, value


def resolve(name: str, weights: str = "default", *, storage_options: dict | None = None,
            overrides: dict[str, Any] | None = None) -> ModelSpec:
    """``--model``/``--weights`` as a :class:`ModelSpec` naming its source (done once per call)."""
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string; got {type(name).__name__}")
    found = split_spec(name)
    prefix, value = found if found is not None else ("", name)
    return ModelSpec(name=name, value=value, weights=weights, storage_options=storage_options,
                     overrides=overrides, source=SOURCES[prefix])


__all__ = ["ENTRY_POINT_GROUP", "SIDECAR_SUFFIX", "SOURCES", "Built", "ModelSource", "ModelSpec", "SourceBase",
           "hf_preprocess", "register_source", "resolve", "resolve_timm_preprocess", "split_spec",
           "timm_preprocess"]
