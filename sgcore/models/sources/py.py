"""``py:MODULE:CALLABLE``: the user's own factory returns the network (and optionally
its preprocessing); ``--weights`` may add a checkpoint on top."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.preprocess import Preprocess, imagenet_preprocess
from sgcore.models.sources.base import Built, ModelSpec, SourceBase, seeded_init


def _factory(value: str) -> Any:
    module_name, sep, attr = value.partition(":")
    spec = f"py:{value}"
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {spec} must be py:MODULE:CALLABLE, e.g. py:acme.nets:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"--model {spec}: cannot import {module_name} ({e}); put it on PYTHONPATH, install it, or ship it "
            "with `ray job submit --working-dir . ` / `--runtime-env-json '{\"py_modules\": [...]}'`"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model {spec}: {module_name} has no callable {attr!r}")
    return fn


def _call_factory(value: str) -> tuple[nn.Module, Preprocess | None]:
    spec = f"py:{value}"
    fn = _factory(value)
    with seeded_init():
        out = fn()
    pre: Any = None
    if isinstance(out, tuple) and len(out) == 2:
        out, pre = out
    if not isinstance(out, nn.Module):
        raise ConfigError(
            f"--model {spec} returned {type(out).__name__}; the factory must return an nn.Module "
            "or (nn.Module, Preprocess or its dict)"
        )
    if isinstance(pre, dict):
        pre = Preprocess.from_dict(pre)
    elif pre is not None and not isinstance(pre, Preprocess):
        raise ConfigError(f"--model {spec} returned a preprocess of type {type(pre).__name__}; "
                          "expected a Preprocess or a dict")
    return out, pre


def py_files(value: str) -> dict[str, str]:
    """The weight files a factory reads by itself, ``{name: sha256}``, from its optional
    ``weights_files`` attribute (a callable), so that the manifest and the config hash cover them."""
    hook = getattr(_factory(value), "weights_files", None)
    if not callable(hook):
        return {}
    return {str(k): str(v) for k, v in dict(hook()).items()}


class PythonSource(SourceBase):
    prefix = "py"
    example = "py:acme.nets:build"

    def load(self, spec: ModelSpec) -> Built:
        model, pre = _call_factory(spec.value)
        files = py_files(spec.value)
        categories = None
        shown = "(from the factory)"
        if spec.weights.lower() not in ("default", "none"):
            found = checkpoint.read(spec.weights, spec.storage_options)
            shown = found.shown
            files[shown] = found.sha256
            state, extras = checkpoint.split_checkpoint(shown, found.content())
            checkpoint.load_strict(model, state, f"checkpoint {shown} does not fit py:{spec.value}")
            categories = checkpoint.categories_of(extras)
        cats = getattr(model, "categories", None)
        if categories is None and isinstance(cats, list | tuple):
            categories = [str(c) for c in cats]
        return Built(network=model, preprocess=pre or imagenet_preprocess(), categories=categories,
                     weights=shown, files=files)

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        return _call_factory(spec.value)[1] or imagenet_preprocess()

    def files(self, spec: ModelSpec) -> dict[str, str]:
        # The checkpoint's hash, then the factory's own files (the order model_identity kept).
        return {**super().files(spec), **py_files(spec.value)}
