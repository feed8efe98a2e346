"""Model registry: architecture by name, weights by name or checkpoint URL.

Names are ``"demo"`` (:class:`~sgcore.models.demo_net.DemoNet`, weights shipped
in ``sgcore/models/weights/demo.pt``) or any torchvision classification
architecture (``torchvision.models.list_models(module=torchvision.models)``).
Weights are ``"default"``, ``"none"`` (random init), a torchvision weight name
(``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``) or a checkpoint
at any fsspec URL, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.models import sources
from sgcore.models.demo_net import DEMO_CATEGORIES, DEMO_PREPROCESS, DemoNet
from sgcore.models.preprocess import Preprocess, imagenet_preprocess
from sgcore.redact import redact_text

DEMO = "demo"
DEMO_WEIGHTS_PATH = Path(__file__).parent / "weights" / "demo.pt"
_SHIPPED = "demo-shipped"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(kw_only=True)
class LoadedModel:
    """A ready-to-run classifier with everything needed to feed and label it.

    Attributes:
        model: the network in ``eval()`` mode on the CPU, parameters frozen
            (``requires_grad=False``: SmoothGrad needs input gradients only).
        preprocess: how to turn decoded images into its input.
        categories: class names by index, when known.
        name: architecture name as given.
        weights: resolved weights (``"ResNet50_Weights.IMAGENET1K_V2"``,
            ``"none"``, the checkpoint URL, or ``"demo-shipped"``).
        num_classes: size of the output layer.
    """

    model: nn.Module
    preprocess: Preprocess
    categories: list[str] | None
    name: str
    weights: str
    num_classes: int
    source: str = "torchvision"
    files: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """Provenance for the manifest: source, spec, weights and their sha256."""
        return {"source": self.source, "spec": _redact(self.name, None), "weights": _redact(self.weights, None),
                "files": {_redact(k, None): v for k, v in self.files.items()}}


def list_models() -> list[str]:
    """Architecture names :func:`load_model` accepts: ``"demo"`` + torchvision classifiers."""
    import torchvision

    return [DEMO, *torchvision.models.list_models(module=torchvision.models)]


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
    return _resolve_preprocess(name, weights, image_size, storage_options, preprocess).with_overrides(preprocess)


def _resolve_preprocess(name: str, weights: str, image_size: int | None,
                        storage_options: dict | None, overrides: dict[str, Any] | None) -> Preprocess:
    src = sources.split_spec(name) if isinstance(name, str) else None
    if src is not None:
        kind, value = src
        if kind == "timm":
            return sources.resolve_timm_preprocess(value).scaled(image_size)
        if kind == "hf":
            return sources.resolve_hf_preprocess(value, storage_options).scaled(image_size)
        if kind == "py":
            return sources.resolve_py_preprocess(value).scaled(image_size)
        return sources.archive_preprocess(kind, value, storage_options, overrides)[0].scaled(image_size)
    _check_name(name)
    kind, value = _classify_weights(name, weights)
    if kind == "checkpoint":
        state = _read_checkpoint(value, storage_options)
        return _checkpoint_preprocess(name, state).scaled(image_size)
    if name == DEMO:
        return DEMO_PREPROCESS.scaled(image_size)
    if kind == "none":
        return imagenet_preprocess().scaled(image_size)
    return _enum_preprocess(_torchvision_weight(name, value)).scaled(image_size)


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
        name: ``"demo"`` or a torchvision classification architecture
            (see :func:`list_models`).
        weights: ``"default"`` (torchvision: the architecture's DEFAULT
            weights; demo: the shipped file), ``"none"`` (random init), a
            torchvision weight name, or a checkpoint URL/path holding a
            state_dict (bare, or under ``"state_dict"``/``"model"``, optionally
            with ``"categories"`` and ``"preprocess"``).
        image_size: overrides the crop size (maps have this size); the resize
            size scales proportionally.
        storage_options: passed to ``fsspec.open`` for a checkpoint URL. Never
            echoed in errors.

    Returns:
        A :class:`LoadedModel` whose model is in eval mode on the CPU.

    Raises:
        ConfigError: unknown architecture or weight name, a failed download,
            or a checkpoint that is missing, unreadable or does not fit.
    """
    src = sources.split_spec(name) if isinstance(name, str) else None
    if src is not None:
        loaded = _load_source(name, *src, weights, storage_options, preprocess)
        loaded.preprocess = loaded.preprocess.scaled(image_size).with_overrides(preprocess)
        loaded.num_classes = sources.probe_num_classes(loaded.model.eval(), loaded.preprocess, name)
        if loaded.categories is not None and len(loaded.categories) != loaded.num_classes:
            raise ConfigError(f"--model {name} lists {len(loaded.categories)} categories but returns "
                              f"{loaded.num_classes} classes")
        loaded.model.eval().requires_grad_(False)
        return loaded
    _check_name(name)
    kind, value = _classify_weights(name, weights)
    if kind == "checkpoint":
        loaded = _load_checkpoint_model(name, value, storage_options)
    elif name == DEMO:
        if kind == "none":
            with _seeded_init():
                net = DemoNet()
            loaded = LoadedModel(
                model=net,
                preprocess=DEMO_PREPROCESS,
                categories=list(DEMO_CATEGORIES),
                name=name,
                weights="none",
                num_classes=len(DEMO_CATEGORIES),
            )
        else:
            loaded = _load_checkpoint_model(name, str(DEMO_WEIGHTS_PATH), None)
            loaded.weights = _SHIPPED
    elif kind == "none":
        import torchvision

        with _seeded_init():
            model = torchvision.models.get_model(name, weights=None)
        loaded = LoadedModel(
            model=model,
            preprocess=imagenet_preprocess(),
            categories=None,
            name=name,
            weights="none",
            num_classes=_num_outputs(model),
        )
    else:
        loaded = _load_torchvision(name, _torchvision_weight(name, value))
    loaded.preprocess = loaded.preprocess.scaled(image_size).with_overrides(preprocess)
    if kind == "checkpoint":
        loaded.files = {loaded.weights: _file_sha(value, storage_options)}
    elif name == DEMO and kind == "default":
        loaded.files = {_SHIPPED: sha256_bytes(DEMO_WEIGHTS_PATH.read_bytes())}
    loaded.source = DEMO if name == DEMO else "torchvision"
    loaded.model.eval().requires_grad_(False)
    return loaded


def _file_sha(url: str, storage_options: dict | None) -> str:
    return sha256_bytes(read_weights_bytes(url, storage_options))


def _load_source(name: str, kind: str, value: str, weights: str, storage_options: dict | None,
                 preprocess: dict[str, Any] | None) -> LoadedModel:
    if kind == "timm":
        src = sources.load_timm(value, weights, storage_options)
    elif kind == "hf":
        src = sources.load_hf(value, storage_options)
    elif kind == "py":
        src = sources.load_py(value, weights, storage_options)
    else:
        src = sources.load_archive(kind, value, storage_options, preprocess)
    return LoadedModel(model=src.model, preprocess=src.preprocess, categories=src.categories, name=name,
                       weights=src.weights, num_classes=0, source=kind, files=src.files)


def model_identity(name: str, weights: str = "default", *, storage_options: dict | None = None
                   ) -> dict[str, Any]:
    """What the manifest records about the model, without building it: the source,
    the spec, the weights and the sha256 of every weights file, archive (and its
    preprocessing sidecar) or directory.

    The job's config hash includes these hashes, so a checkpoint replaced at the
    same URL makes a resume refuse instead of mixing maps of two models.
    """
    src = sources.split_spec(name) if isinstance(name, str) else None
    files: dict[str, str] = {}
    if src is None:
        _check_name(name)
        kind, value = _classify_weights(name, weights)
        source = DEMO if name == DEMO else "torchvision"
        if kind == "checkpoint":
            files[_redact(value, storage_options)] = _file_sha(value, storage_options)
        elif name == DEMO and kind == "default":
            files[_SHIPPED] = sha256_bytes(DEMO_WEIGHTS_PATH.read_bytes())
        return {"source": source, "spec": name, "weights": _redact(weights, storage_options), "files": files}
    kind, value = src
    if kind == "hf":
        _, files = sources.hf_local_dir(value, storage_options)
    elif kind in sources.ARCHIVES:
        files[_redact(value, storage_options)] = _file_sha(value, storage_options)
        files.update(sources.sidecar_files(value, storage_options))
    elif weights.lower() not in ("default", "none"):
        files[_redact(weights, storage_options)] = _file_sha(weights, storage_options)
    if kind == "py":  # the files a factory reads by itself (sources.py_files)
        files.update(sources.py_files(value))
    return {"source": kind, "spec": _redact(name, storage_options), "weights": _redact(weights, storage_options),
            "files": files}


def check_base(name: str, base: str) -> None:
    """Refuses guided backprop on an archive: it has no ReLU modules or calls to hook."""
    src = sources.split_spec(name) if isinstance(name, str) else None
    if base == "guided_backprop" and src is not None and src[0] in sources.ARCHIVES:
        raise ConfigError(
            f"--base guided_backprop cannot run on --model {src[0]}:...: a {src[0]} archive holds no Python "
            "ReLU modules to guide; use --base gradient (or another base), or load the network "
            "with a py:MODULE:CALLABLE factory"
        )


@contextlib.contextmanager
def _seeded_init() -> Iterator[None]:
    """Random init that is the same in every process: the actors of one job
    (and a resumed job) must hold the same "random" network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


# --------------------------------------------------------------------------- names


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string; got {type(name).__name__}")
    if name == DEMO:
        return  # without importing torchvision
    names = list_models()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"unknown model {name!r}; {hint}choose one of list_models() "
        f"(--model demo, resnet50, vit_b_16, ...) or a source prefix: timm:NAME, hf:DIR_OR_URL, "
        f"torchscript:URL, export:URL, py:MODULE:CALLABLE"
    )


def _classify_weights(name: str, weights: str) -> tuple[str, str]:
    """('default'|'none'|'enum'|'checkpoint', value)."""
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"weights must be a non-empty string; got {weights!r}")
    lowered = weights.lower()
    if lowered in ("default", "none"):
        return lowered, lowered
    if _looks_like_path(weights):
        return "checkpoint", weights
    if name == DEMO:
        raise ConfigError(
            f"weights {weights!r} is not valid for demo; use 'default' (shipped), "
            f"'none' (random init) or a checkpoint URL/path"
        )
    return "enum", weights


def _looks_like_path(weights: str) -> bool:
    if "://" in weights or weights.startswith(("/", "./", "../", "~")):
        return True
    if weights.lower().endswith(_CHECKPOINT_SUFFIXES):
        return True
    return "/" in weights or Path(weights).exists()


def _weights_enum(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name)


def _torchvision_weight(name: str, value: str) -> Any:
    enum = _weights_enum(name)
    key = value
    if "." in value:
        prefix, _, key = value.rpartition(".")
        if prefix != enum.__name__:
            raise ConfigError(
                f"weights {value!r} belong to {prefix}, not to {name} ({enum.__name__}); "
                f"choose one of {_weight_choices(enum)}"
            )
    if key.upper() == "DEFAULT":
        key = "DEFAULT"
    if key not in enum.__members__:
        raise ConfigError(
            f"unknown weights {value!r} for {name}; choose one of {_weight_choices(enum)}"
        )
    return enum.__members__[key]


def _weight_choices(enum: Any) -> str:
    names = ", ".join(enum.__members__)  # includes the DEFAULT alias
    return f"{names}, 'none' or a checkpoint URL/path"


# --------------------------------------------------------------------------- torchvision


def _enum_preprocess(weight: Any) -> Preprocess:
    transform = weight.transforms()
    crop = transform.crop_size
    resize = transform.resize_size
    crop = int(crop[0] if isinstance(crop, list | tuple) else crop)
    resize = int(resize[0] if isinstance(resize, list | tuple) else resize)
    interpolation = getattr(transform.interpolation, "value", str(transform.interpolation))
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=str(interpolation),
    )


def _load_torchvision(name: str, weight: Any) -> LoadedModel:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=weight)
    except (OSError, RuntimeError) as e:  # URLError, timeouts, hash mismatch
        raise ConfigError(
            f"could not download weights {weight.name} for {name} ({_reason(e)}); "
            f"no network? pass --weights with a local or s3:// checkpoint"
        ) from e
    categories = weight.meta.get("categories")
    return LoadedModel(
        model=model,
        preprocess=_enum_preprocess(weight),
        categories=list(categories) if categories else None,
        name=name,
        weights=f"{type(weight).__name__}.{weight.name}",
        num_classes=_num_outputs(model),
    )


def _num_outputs(model: nn.Module) -> int:
    """Output size of the last Linear (or 1x1 conv) layer."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    if last is None:
        raise ConfigError(f"cannot tell the number of classes of {type(model).__name__}")
    return int(last)


# --------------------------------------------------------------------------- checkpoints


def _redact(text: str, storage_options: dict | None) -> str:
    text = redact_text(text)  # userinfo and signed-URL queries
    for value in _secret_values(storage_options):
        text = text.replace(value, "***")
    return text


def _secret_values(options: Any) -> list[str]:
    found: list[str] = []
    if isinstance(options, dict):
        for value in options.values():
            found.extend(_secret_values(value))
    elif isinstance(options, list | tuple):
        for value in options:
            found.extend(_secret_values(value))
    elif isinstance(options, str) and len(options) >= 4:
        found.append(options)
    return found


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _read_checkpoint(url: str, storage_options: dict | None) -> Any:
    """A checkpoint's content: ``torch.load(weights_only=True)``, or safetensors for ``.safetensors``."""
    shown = _redact(url, storage_options)
    del shown
    return _state_from_bytes(url, read_weights_bytes(url, storage_options, what="checkpoint"), storage_options)


def _state_from_bytes(url: str, data: bytes, storage_options: dict | None) -> Any:
    shown = _redact(url, storage_options)
    if url.lower().endswith(".safetensors"):
        return _load_safetensors(shown, data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types
        raise ConfigError(_load_failure(shown, data, e, storage_options)) from None


def _load_safetensors(shown: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load as load_safetensors
    except ImportError as e:
        raise ImportError(
            f"reading {shown} needs safetensors: pip install 'sgcore[timm]' (or 'sgcore[hf]')"
        ) from e
    try:
        return dict(load_safetensors(data))
    except Exception as e:  # SafetensorError and friends
        raise ConfigError(f"checkpoint {shown} is not a safetensors file ({_reason(e)})") from None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (the weights' content identity in the manifest)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_weights_bytes(url: str, storage_options: dict | None, *, what: str = "checkpoint") -> bytes:
    """The bytes at ``url`` (any fsspec URL or path); one-line ConfigErrors, no secrets."""
    import fsspec

    from sgcore.io import StorageAuthError, check_url_credentials, retry_call

    check_url_credentials(url)
    shown = _redact(url, storage_options)

    def read() -> bytes:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return f.read()

    try:
        data = retry_call(read, what=f"read {what} {shown}")  # transient errors are retried
    except FileNotFoundError as e:
        raise ConfigError(f"{what} {shown} not found") from e
    except Exception as e:  # any backend error; `from None`: its text may hold secrets
        if isinstance(e, StorageAuthError) and e.__cause__ is not None:
            e = e.__cause__  # the backend's own error, as before retrying
        reason = _redact(_reason(e), storage_options)
        if {c.__name__ for c in type(e).__mro__} & _NO_CREDENTIALS:  # botocore, matched by name
            reason += ("; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), "
                       "or --storage-options")
        raise ConfigError(f"could not read {what} {shown}: {reason}") from None
    if not data:
        raise ConfigError(f"{what} {shown} is empty (0 bytes)")
    return data


_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"})
# How torch.save files begin: a zip archive whose first member is <name>/data.pkl, or
# (legacy format) a pickle of torch's magic number 0x1950a86a20f9469cfc6c.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _load_failure(shown: str, data: bytes, e: Exception, storage_options: dict | None) -> str:
    """Why torch.load(weights_only=True) failed, in one line.

    torch's own message always suggests ``weights_only=False``. That advice only
    fits a torch file that pickles Python objects (a whole model); for random
    bytes, a plain pickle or a damaged file it would invite running untrusted
    code for nothing, so it is kept for that case alone.
    """
    # Never repeat torch's advice to pass weights_only=False: that disables the guard
    # that just refused to run the file's code (a pickled os.system, say).
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", str(e))
    if blocked:
        return (f"checkpoint {shown} was refused by torch.load(weights_only=True): unsupported GLOBAL "
                f"{blocked.group(1)} (module {blocked.group(2)} is blocked); it is not a state_dict of "
                "tensors: save model.state_dict()")
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if refused:
        return (f"checkpoint {shown} is not a PyTorch state_dict loadable with torch.load(weights_only=True) "
                f"(save model.state_dict(), not the model): it pickles {refused.group(1)}")
    reason = _redact(_short_torch_reason(e), storage_options)
    torch_file = (data.startswith(_ZIP_MAGIC) and b"data.pkl" in data[:4096]) or data.startswith(_LEGACY_MAGIC)
    if torch_file and isinstance(e, pickle.UnpicklingError):
        return (f"checkpoint {shown} is not a PyTorch state_dict loadable with torch.load(weights_only=True) "
                f"(save model.state_dict(), not the model): {reason}")
    if torch_file:
        return f"checkpoint {shown} is a damaged PyTorch file (torch.load: {reason}); save or copy it again"
    return (f"checkpoint {shown} is not a PyTorch checkpoint (torch.load: {reason}); "
            "write one with torch.save(model.state_dict(), path)")


def _short_torch_reason(e: BaseException) -> str:
    """The informative part of a torch.load error, without its boilerplate advice."""
    text = str(e)
    inner = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if inner:
        text = inner.group(1)
    # "PytorchStreamReader failed reading zip archive: not a ZIP archive. This is an internal ..."
    text = " ".join(text.split())
    text = text.split(". This is an internal")[0].split(". Check the documentation")[0]
    if not text:
        return type(e).__name__
    if isinstance(e, IndexError | EOFError | KeyError | ValueError | TypeError):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) < 200 else text[:200] + "..."


def _split_checkpoint(url: str, obj: Any, keys: tuple[str, ...] = ("state_dict", "model"),
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, extras) from a bare state_dict or a {'state_dict'|'model': ...} dict."""
    extras: dict[str, Any] = {}
    state = obj
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                extras = {k: v for k, v in obj.items() if k != key}
                break
    if not isinstance(state, dict) or not state:
        raise ConfigError(
            f"checkpoint {url} holds {type(obj).__name__}, not a state_dict "
            f"(a dict of tensors, or {{'state_dict': ...}} / {{'model': ...}})"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(
            f"checkpoint {url} is not a state_dict: entries {bad[:3]} are not named tensors"
        )
    return {_strip_prefixes(k): v for k, v in state.items()}, extras


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _checkpoint_preprocess(name: str, obj: Any) -> Preprocess:
    if isinstance(obj, dict) and "preprocess" in obj and any(
        isinstance(obj.get(k), dict) for k in ("state_dict", "model")
    ):
        return Preprocess.from_dict(obj["preprocess"])
    return DEMO_PREPROCESS if name == DEMO else imagenet_preprocess()


def _build(name: str, num_classes: int | None) -> nn.Module:
    if name == DEMO:
        return DemoNet() if num_classes is None else DemoNet(num_classes)
    import torchvision

    if num_classes is None:
        return torchvision.models.get_model(name, weights=None)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _infer_num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The checkpoint's class count when only the head's size differs, else None."""
    default = _num_outputs(model)
    own = model.state_dict()
    found: set[int] = set()
    for key, tensor in state.items():
        mine = own.get(key)
        if mine is None or mine.shape == tensor.shape or mine.ndim == 0:
            continue
        if mine.shape[0] == default and tensor.ndim == mine.ndim and tensor.shape[1:] == mine.shape[1:]:
            found.add(int(tensor.shape[0]))
        else:
            return None
    return found.pop() if len(found) == 1 else None


def _load_checkpoint_model(name: str, url: str, storage_options: dict | None) -> LoadedModel:
    shown = _redact(url, storage_options)
    obj = _read_checkpoint(url, storage_options)
    state, extras = _split_checkpoint(shown, obj)
    model = _build(name, None)
    num_classes = _infer_num_classes(model, state)
    if num_classes is not None and num_classes != _num_outputs(model):
        model = _build(name, num_classes)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"checkpoint {shown} does not fit {name}: "
            + _key_report(missing, unexpected, mismatched)
        )
    model.load_state_dict(state, strict=True)
    categories = extras.get("categories")
    if categories is not None:
        categories = [str(c) for c in categories]
    elif name == DEMO and _num_outputs(model) == len(DEMO_CATEGORIES):
        categories = list(DEMO_CATEGORIES)
    n_out = _num_outputs(model)
    if categories is not None and len(categories) != n_out:
        raise ConfigError(
            f"checkpoint {shown} lists {len(categories)} categories but its model has {n_out} outputs"
        )
    return LoadedModel(
        model=model,
        preprocess=_checkpoint_preprocess(name, obj),
        categories=categories,
        name=name,
        weights=shown,
        num_classes=n_out,
    )


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line report of what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ConfigError(f"{prefix}: " + _key_report(missing, unexpected, mismatched))
    model.load_state_dict(state, strict=True)


def _key_report(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = []
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{label} {keys[:5]}{more}")
    return "; ".join(parts)
