"""The public model functions: each resolves ``--model`` once and makes one call
into its source (:mod:`sgcore.models.sources`).

Names are ``"demo"``, any torchvision classification architecture, or a source
prefix: ``timm:NAME``, ``hf:DIR_OR_URL``, ``torchscript:URL``, ``export:URL``,
``py:MODULE:CALLABLE`` (or one a package registered). Weights files are read
through :mod:`sgcore.models.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sgcore.errors import ConfigError
from sgcore.models.checkpoint import read_weights_bytes, redact, sha256_bytes
from sgcore.models.outputs import Classifier
from sgcore.models.preprocess import Preprocess
from sgcore.models.sources import Built, ModelSpec, resolve
from sgcore.models.sources import torchvision as _names
from sgcore.models.sources.base import probe_num_classes

DEMO = _names.DEMO
DEMO_WEIGHTS_PATH = _names.DEMO_WEIGHTS_PATH


@dataclass(kw_only=True)
class LoadedModel:
    """A ready-to-run classifier with everything needed to feed and label it.

    Attributes:
        model: the network in ``eval()`` mode on the CPU, returning the logits,
            parameters frozen (``requires_grad=False``: SmoothGrad needs input gradients only).
        preprocess: how to turn decoded images into its input.
        categories: class names by index, when known.
        name: architecture name as given.
        weights: resolved weights (``"ResNet50_Weights.IMAGENET1K_V2"``,
            ``"none"``, the checkpoint URL, or ``"demo-shipped"``).
        num_classes: size of the output layer.
        network: the module the source built, before it is wrapped to return the
            logits (``model`` itself for torchvision); prepare this one (BatchNorm
            folding needs a module torch.fx can trace) and :meth:`wrap` the result.
    """

    model: nn.Module
    preprocess: Preprocess
    categories: list[str] | None
    name: str
    weights: str
    num_classes: int
    source: str = "torchvision"
    files: dict[str, str] = field(default_factory=dict)
    network: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.network is None:
            self.network = self.model.inner if isinstance(self.model, Classifier) else self.model

    def wrap(self, network: nn.Module) -> nn.Module:
        """``network`` (a prepared copy of :attr:`network`) returning the logits, as :attr:`model` does."""
        if isinstance(self.model, Classifier):
            return Classifier(network, frozen_mode=self.model.frozen_mode)
        return network

    def identity(self) -> dict[str, Any]:
        """Provenance for the manifest: source, spec, weights and their sha256."""
        return {"source": self.source, "spec": redact(self.name, None), "weights": redact(self.weights, None),
                "files": {redact(k, None): v for k, v in self.files.items()}}


def list_models() -> list[str]:
    """Architecture names :func:`load_model` accepts: ``"demo"`` + torchvision classifiers."""
    return _names.list_models()


def resolve_preprocess(
    name: str,
    weights: str = "default",
    *,
    image_size: int | None = None,
    storage_options: dict | None = None,
    preprocess: dict[str, Any] | None = None,
) -> Preprocess:
    """The preprocessing :func:`load_model` would use, without building the model.

    No weights are downloaded. For torchvision weights it reads the enum's
    ``transforms()``; for a checkpoint URL it reads the checkpoint only for
    its optional ``"preprocess"`` entry.

    Args:
        name: architecture, as for :func:`load_model`.
        weights: weights, as for :func:`load_model`.
        image_size: overrides ``crop_size``; ``resize_size`` scales alike.
        storage_options: fsspec options for a checkpoint URL.
        preprocess: ``--preprocess`` overrides, applied last.

    Returns:
        The :class:`Preprocess`, equal to ``load_model(...).preprocess``.
    """
    spec = resolve(name, weights, storage_options=storage_options, overrides=preprocess)
    return spec.source.preprocess(spec).scaled(image_size).with_overrides(preprocess)


def load_model(
    name: str,
    weights: str = "default",
    *,
    image_size: int | None = None,
    storage_options: dict | None = None,
    preprocess: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build a classifier and its preprocessing.

    Args:
        name: ``"demo"``, a torchvision classification architecture (see
            :func:`list_models`) or a source prefix (``timm:``, ``hf:``, ...).
        weights: ``"default"`` (torchvision: the architecture's DEFAULT
            weights; demo: the shipped file), ``"none"`` (random init), a
            torchvision weight name, or a checkpoint URL/path holding a
            state_dict (bare, or under ``"state_dict"``/``"model"``, optionally
            with ``"categories"`` and ``"preprocess"``).
        image_size: overrides the crop size (maps have this size); the resize
            size scales proportionally.
        storage_options: passed to ``fsspec.open`` for a checkpoint URL. Never
            echoed in errors.
        preprocess: ``--preprocess`` overrides, applied last.

    Returns:
        A :class:`LoadedModel` whose model is in eval mode on the CPU.

    Raises:
        ConfigError: unknown architecture or weight name, a failed download,
            or a checkpoint that is missing, unreadable or does not fit.
    """
    spec = resolve(name, weights, storage_options=storage_options, overrides=preprocess)
    return _finish(spec, spec.source.load(spec), image_size)


def _finish(spec: ModelSpec, built: Built, image_size: int | None) -> LoadedModel:
    """What every source's network goes through: eval mode, frozen, wrapped to logits, checked."""
    network = built.network
    model = network if built.returns_logits else Classifier(network, frozen_mode=built.frozen_mode)
    model.eval().requires_grad_(False)
    if built.frozen_mode:  # runs as exported (eval() is refused); the flags tell prepare_model so
        for module in network.modules():
            module.training = False
    pre = built.preprocess.scaled(image_size).with_overrides(spec.overrides)
    num_classes = built.num_classes
    if num_classes is None:
        num_classes = probe_num_classes(model, pre, spec.name)
        if built.categories is not None and len(built.categories) != num_classes:
            raise ConfigError(f"--model {spec.name} lists {len(built.categories)} categories but returns "
                              f"{num_classes} classes")
    return LoadedModel(model=model, network=network, preprocess=pre, categories=built.categories, name=spec.name,
                       weights=built.weights, num_classes=num_classes, source=built.source or spec.source.prefix,
                       files=built.files)


def model_identity(name: str, weights: str = "default", *, storage_options: dict | None = None
                   ) -> dict[str, Any]:
    """What the manifest records about the model, without building it: the source,
    the spec, the weights and the sha256 of every weights file, archive (and its
    preprocessing sidecar) or directory.

    The job's config hash includes these hashes, so a checkpoint replaced at the
    same URL makes a resume refuse instead of mixing maps of two models.
    """
    spec = resolve(name, weights, storage_options=storage_options)
    return spec.source.identity(spec)


def check_base(name: str, base: str) -> None:
    """Refuses an attribution base the model's source cannot run (guided backprop on an archive)."""
    spec = resolve(name)
    spec.source.check_base(spec, base)


def probe_on_driver(name: str, weights: str = "default") -> bool:
    """Whether the driver builds the model once to check it before Ray starts (not for
    downloadable torchvision weights: the driver downloads nothing the replicas fetch)."""
    spec = resolve(name, weights)
    return spec.source.probe_on_driver(spec)


__all__ = ["DEMO", "DEMO_WEIGHTS_PATH", "LoadedModel", "check_base", "list_models", "load_model", "model_identity",
           "probe_on_driver", "read_weights_bytes", "resolve_preprocess", "sha256_bytes"]
