"""What every model source is: the :class:`ModelSource` protocol, the resolved
:class:`ModelSpec` it is called with and the :class:`Built` network it returns."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.preprocess import Preprocess


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """``--model``/``--weights`` resolved once: the source that owns them and its argument.

    Attributes:
        name: ``--model`` as given (``"timm:resnet50"``, ``"resnet50"``).
        value: what follows the source's prefix (the name itself for bare names).
        weights: ``--weights`` as given.
        storage_options: fsspec options for the weights' URLs (never echoed).
        overrides: ``--preprocess`` overrides (an archive without a sidecar needs them).
        source: the :class:`ModelSource` from the table.
    """

    name: str
    value: str
    weights: str
    storage_options: dict | None
    overrides: dict[str, Any] | None
    source: ModelSource

    @property
    def shown(self) -> str:
        """``name`` with credentials redacted, for messages and the manifest."""
        return checkpoint.redact(self.name, self.storage_options)

    def redact(self, text: str) -> str:
        return checkpoint.redact(text, self.storage_options)


@dataclass(kw_only=True)
class Built:
    """A source's network, before ``--image-size``/``--preprocess`` are applied.

    Attributes:
        network: the module as the source built it (eval mode not yet set). It is
            prepared (BatchNorm folded, channels_last) before it is wrapped to logits.
        preprocess: the preprocessing the source declares.
        categories: class names by index, when known.
        weights: the weights as shown in the manifest.
        files: ``{shown name: sha256}`` of every file read (the config hash covers them).
        num_classes: known without a forward pass, else None (a probe finds it).
        returns_logits: the network returns the logits tensor itself (torchvision);
            otherwise :class:`~sgcore.models.outputs.Classifier` picks them out.
        frozen_mode: ``train()``/``eval()`` must not reach the network (``torch.export``).
        source: the manifest's ``source``; empty means the prefix.
    """

    network: nn.Module
    preprocess: Preprocess
    categories: list[str] | None
    weights: str
    files: dict[str, str] = field(default_factory=dict)
    num_classes: int | None = None
    returns_logits: bool = False
    frozen_mode: bool = False
    source: str = ""


@runtime_checkable
class ModelSource(Protocol):
    """One ``--model`` prefix: how to build, preprocess, identify and check its models.

    ``prefix`` is what comes before ``:`` in ``--model`` (``""`` for the bare
    torchvision names and ``demo``); ``example`` is shown when the spec is empty.
    Register a new one with :func:`sgcore.models.sources.register_source`.
    """

    prefix: str
    example: str

    def load(self, spec: ModelSpec) -> Built:
        """Builds the network with its weights, preprocessing and categories."""
        ...

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        """The preprocessing :meth:`load` would declare, without building the network."""
        ...

    def identity(self, spec: ModelSpec) -> dict[str, Any]:
        """The manifest's ``model`` record: ``source``, ``spec``, ``weights`` and ``files``
        (the sha256 of every file the network is built from), without building it."""
        ...

    def check_base(self, spec: ModelSpec, base: str) -> None:
        """Raises ConfigError when attribution ``base`` cannot run on this source's networks."""
        ...

    def probe_on_driver(self, spec: ModelSpec) -> bool:
        """Whether the driver builds the network once to check it before Ray starts
        (False where that would mean a download the replicas make anyway)."""
        ...


class SourceBase:
    """Defaults for a :class:`ModelSource`: no extra base check, probed on the driver,
    identity from the spec and the files :meth:`files` lists."""

    prefix = ""
    example = ""

    def check_base(self, spec: ModelSpec, base: str) -> None:
        del spec, base

    def probe_on_driver(self, spec: ModelSpec) -> bool:
        del spec
        return True

    def files(self, spec: ModelSpec) -> dict[str, str]:
        """``{shown name: sha256}`` of the files the network is built from."""
        if spec.weights.lower() in ("default", "none"):
            return {}
        found = checkpoint.read(spec.weights, spec.storage_options)
        return {found.shown: found.sha256}

    def identity(self, spec: ModelSpec) -> dict[str, Any]:
        return {"source": self.prefix, "spec": spec.shown, "weights": spec.redact(spec.weights),
                "files": self.files(spec)}


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Random init that is the same in every process: the actors of one job
    (and a resumed job) must hold the same "random" network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def need(module: str, extra: str, spec: str) -> Any:
    """Imports an optional library, or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"--model {spec} needs {module}: pip install 'sgcore[{extra}]'") from e


def short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 240 else text[:240] + "..."


def digest_files(files: dict[str, bytes]) -> str:
    """One sha256 for a directory: over sorted (relative path, sha256 of content)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\x00" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    return h.hexdigest()


def probe_num_classes(model: nn.Module, pre: Preprocess, spec: str) -> int:
    """Runs a 2-image batch once; returns the number of classes (checks the output type)."""
    x = torch.zeros(2, pre.channels, *pre.map_shape)
    try:
        with torch.no_grad():
            out = model(x)
    except TypeError as e:
        if "the model returned" in str(e):
            raise ConfigError(f"--model {spec}: {e}") from None
        raise ConfigError(f"--model {spec} fails on a (2, {pre.channels}, {pre.height}, {pre.width}) input: "
                          f"{short(e)}") from None
    except Exception as e:  # shape errors, export guards, ...
        text = short(e)
        if "Guard failed" in str(e) or "guard" in text.lower():
            text += ("; export with a dynamic batch: torch.export.export(model, (x,), "
                     "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})")
        raise ConfigError(
            f"--model {spec} fails on a (2, {pre.channels}, {pre.height}, {pre.width}) input "
            f"(does its preprocessing fit?): {text}"
        ) from None
    if out.ndim != 2 or out.shape[0] != 2:
        raise ConfigError(f"--model {spec} returned logits of shape {tuple(out.shape)}; expected (batch, classes)")
    return int(out.shape[1])
