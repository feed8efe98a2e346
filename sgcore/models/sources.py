"""Model sources beyond torchvision: timm, Hugging Face, TorchScript / torch.export
archives and Python factories, each with the preprocessing it declares.

``--model`` spells the source as a prefix: ``timm:NAME``, ``hf:DIR_OR_URL_OR_HUB_ID``,
``torchscript:URL``, ``export:URL``, ``py:MODULE:CALLABLE``. Each loader returns
the network (wrapped so that it returns logits), its :class:`Preprocess`, its
categories, and the sha256 of every weights file it read, an archive's
preprocessing sidecar included (the manifest's provenance and part of the config hash).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import io
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.models.outputs import Classifier
from sgcore.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, imagenet_preprocess

SOURCES: tuple[str, ...] = ("timm", "hf", "torchscript", "export", "py")
# Sources whose networks hold no Python modules: guided backprop cannot see their ReLUs.
ARCHIVES: tuple[str, ...] = ("torchscript", "export")
SIDECAR_SUFFIX = ".preprocess.json"
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(kw_only=True)
class Source:
    """A loaded model of one source, before ``--image-size``/``--preprocess``."""

    model: nn.Module
    preprocess: Preprocess
    categories: list[str] | None
    weights: str
    files: dict[str, str] = field(default_factory=dict)


def split_spec(name: str) -> tuple[str, str] | None:
    """``("timm", "resnet10t")`` for ``"timm:resnet10t"``; None for a torchvision/demo name."""
    kind, sep, value = name.partition(":")
    if not sep or kind not in SOURCES:
        return None
    if not value:
        raise ConfigError(f"--model {name!r} names no model after '{kind}:'; e.g. {_EXAMPLES[kind]}")
    return kind, value


_EXAMPLES = {
    "timm": "timm:resnet50",
    "hf": "hf:s3://bucket/vit (a save_pretrained directory) or hf:google/vit-base-patch16-224",
    "torchscript": "torchscript:s3://bucket/model.pt",
    "export": "export:s3://bucket/model.pt2",
    "py": "py:acme.nets:build",
}


def _need(module: str, extra: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"--model {spec} needs {module}: pip install 'sgcore[{extra}]'") from e


def _probe(model: nn.Module, pre: Preprocess, spec: str) -> int:
    """Runs a 2-image batch once; returns the number of classes (checks the output type)."""
    x = torch.zeros(2, pre.channels, *pre.map_shape)
    try:
        with torch.no_grad():
            out = model(x)
    except TypeError as e:
        if "the model returned" in str(e):
            raise ConfigError(f"--model {spec}: {e}") from None
        raise ConfigError(f"--model {spec} fails on a (2, {pre.channels}, {pre.height}, {pre.width}) input: {_short(e)}") from None
    except Exception as e:  # shape errors, export guards, ...
        text = _short(e)
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


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 240 else text[:240] + "..."


def _digest_files(files: dict[str, bytes]) -> str:
    """One sha256 for a directory: over sorted (relative path, sha256 of content)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\x00" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- timm


def timm_preprocess(cfg: dict[str, Any]) -> Preprocess:
    """A :class:`Preprocess` equal to ``timm.data.create_transform(**cfg)`` (eval)."""
    c, h, w = (int(v) for v in cfg["input_size"])
    mode = {"center": "center_crop", "squash": "squash", "border": "letterbox"}.get(cfg.get("crop_mode") or "center")
    if mode is None:
        raise ConfigError(f"timm crop_mode {cfg.get('crop_mode')!r} is not supported (center, squash, border)")
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation == "random":
        interpolation = "bilinear"
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if c == 1 and len(mean) == 3:  # timm keeps RGB stats for 1-channel models; it averages them
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocess(
        crop_size=h if h == w else (h, w),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        resize_mode=mode,
        interpolation=interpolation,
        channels=c,
        mean=mean,
        std=std,
    )


def _timm_check(timm: Any, name: str, spec: str) -> None:
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown timm model {name!r} (--model {spec}){hint}")


def resolve_timm_preprocess(name: str) -> Preprocess:
    """timm's data config of ``name`` without building its weights (on the meta device)."""
    spec = f"timm:{name}"
    timm = _need("timm", "timm", spec)
    _timm_check(timm, name, spec)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return timm_preprocess(timm.data.resolve_model_data_config(model))


def load_timm(name: str, weights: str, storage_options: dict | None) -> Source:
    from sgcore.models import registry as reg

    spec = f"timm:{name}"
    timm = _need("timm", "timm", spec)
    _timm_check(timm, name, spec)
    files: dict[str, str] = {}
    categories = None
    lowered = weights.lower()
    if lowered == "none":
        with reg._seeded_init():
            model = timm.create_model(name, pretrained=False)
        shown = "none"
    elif lowered == "default":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as e:  # no network, no pretrained tag, hub errors
            raise ConfigError(
                f"could not get timm's pretrained weights for {name} ({_short(e)}); "
                "no network? pass --weights CHECKPOINT (a .pth/.pt/.safetensors URL or path)"
            ) from None
        shown = f"timm-pretrained:{model.pretrained_cfg.get('hf_hub_id') or name}"
        info = getattr(timm.data, "ImageNetInfo", None)
        if info is not None and model.num_classes == 1000:
            categories = list(info().label_descriptions())
    else:
        shown = reg._redact(weights, storage_options)
        data = reg.read_weights_bytes(weights, storage_options)
        files[shown] = reg.sha256_bytes(data)
        obj = reg._state_from_bytes(weights, data, storage_options)
        state, extras = reg._split_checkpoint(shown, obj, keys=("state_dict", "model", "state_dict_ema"))
        with reg._seeded_init():
            model = timm.create_model(name, pretrained=False)
        n = reg._infer_num_classes(model, state)
        if n is not None and n != model.num_classes:
            with reg._seeded_init():
                model = timm.create_model(name, pretrained=False, num_classes=n)
        reg._load_strict(model, state, f"checkpoint {shown} does not fit {spec}")
        if extras.get("categories") is not None:
            categories = [str(c) for c in extras["categories"]]
    pre = timm_preprocess(timm.data.resolve_model_data_config(model))
    return Source(model=Classifier(model), preprocess=pre, categories=categories, weights=shown, files=files)


# --------------------------------------------------------------------------- Hugging Face


def _is_location(value: str) -> bool:
    return "://" in value or value.startswith(("/", "./", "../", "~")) or Path(value).exists()


def hf_local_dir(value: str, storage_options: dict | None) -> tuple[Path | str, dict[str, str]]:
    """A local directory for ``value`` (copied once, keyed by content), and its sha256.

    A hub id (not a path or URL) comes back unchanged, with no hash.
    """
    from sgcore.io import url_to_fs
    from sgcore.models import registry as reg

    if not _is_location(value):
        return value, {}
    shown = reg._redact(value, storage_options)
    fs, root = url_to_fs(value, storage_options)
    root = root.rstrip("/")
    try:
        paths = [p for p in fs.find(root) if not posixpath.basename(p).startswith(".")]
    except (FileNotFoundError, OSError):
        paths = []
    rels = {posixpath.relpath(p, root) for p in paths}
    if "config.json" not in rels:
        raise ConfigError(
            f"hf:{shown} has no config.json; give a directory written by model.save_pretrained(dir) "
            "(and image_processor.save_pretrained(dir))"
        )
    data = {}
    for p in paths:
        rel = posixpath.relpath(p, root)
        with fs.open(p, "rb") as f:
            data[rel] = f.read()
    digest = _digest_files(data)
    if "://" not in value or value.startswith("file://"):
        return Path(os.path.expanduser(root)), {shown: digest}
    cache = Path(os.environ.get("SGCORE_CACHE", Path(tempfile.gettempdir()) / "sgcore-cache")) / "hf" / digest
    if not (cache / "config.json").exists():
        tmp = cache.with_name(f".{digest}.{os.getpid()}")
        for rel, blob in data.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
        try:
            tmp.rename(cache)
        except OSError:  # another replica got there first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return cache, {shown: digest}


def hf_preprocess(cfg: dict[str, Any], spec: str) -> Preprocess:
    """A :class:`Preprocess` equal to a Hugging Face image processor's config."""
    size = cfg.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    do_crop = cfg.get("do_center_crop", False)
    crop = cfg.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    interpolation = _HF_RESAMPLE.get(int(cfg.get("resample", 2)), "bilinear")
    scale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if cfg.get("do_normalize", True):
        mean, std = tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std", IMAGENET_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    common = {"interpolation": interpolation, "scale": scale, "mean": mean, "std": std, "crop_offset": "floor"}
    if not cfg.get("do_resize", True):
        raise ConfigError(f"{spec}: the image processor does not resize (do_resize false); pass --preprocess '{{...}}'")
    if "height" in size and "width" in size:
        resize = (int(size["height"]), int(size["width"]))
        out = (int(crop["height"]), int(crop["width"])) if do_crop and crop else resize
        return Preprocess(crop_size=out, resize_size=resize, resize_mode="squash", **common)
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and not do_crop:  # ConvNeXT's own rule
            if edge < 384:
                return Preprocess(crop_size=edge, resize_size=int(edge / float(cfg["crop_pct"])), **common)
            return Preprocess(crop_size=edge, resize_size=edge, resize_mode="squash", **common)
        if do_crop and crop:
            return Preprocess(crop_size=(int(crop["height"]), int(crop["width"])), resize_size=edge, **common)
    raise ConfigError(
        f"{spec}: image processor size {size} without a fixed crop is not supported; "
        "pass --preprocess '{\"crop_size\": ..., \"mean\": ..., \"std\": ...}'"
    )


def _hf_config(directory: Path | str, spec: str) -> dict[str, Any]:
    if isinstance(directory, Path):
        path = directory / "preprocessor_config.json"
        if not path.exists():
            raise ConfigError(f"{spec} has no preprocessor_config.json; save the image processor too "
                              "(AutoImageProcessor...save_pretrained(dir)) or pass --preprocess '{...}'")
        return json.loads(path.read_text())
    transformers = _need("transformers", "hf", spec)
    try:
        return transformers.AutoImageProcessor.from_pretrained(directory).to_dict()
    except Exception as e:
        raise ConfigError(f"could not get the image processor of {spec} ({_short(e)}); no network?") from None


def resolve_hf_preprocess(value: str, storage_options: dict | None) -> Preprocess:
    spec = f"hf:{value}"
    directory, _ = hf_local_dir(value, storage_options)
    return hf_preprocess(_hf_config(directory, spec), spec)


def load_hf(value: str, storage_options: dict | None) -> Source:
    from sgcore.models import registry as reg

    spec = f"hf:{reg._redact(value, storage_options)}"
    transformers = _need("transformers", "hf", spec)
    directory, files = hf_local_dir(value, storage_options)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(directory), local_files_only=isinstance(directory, Path))
    except Exception as e:
        raise ConfigError(f"could not load {spec} with AutoModelForImageClassification ({_short(e)})") from None
    pre = hf_preprocess(_hf_config(directory, spec), spec)
    id2label = getattr(model.config, "id2label", None) or {}
    n = int(getattr(model.config, "num_labels", len(id2label)))
    categories = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)] if id2label else None
    return Source(model=Classifier(model), preprocess=pre, categories=categories,
                  weights="(in the directory)" if files else f"hub:{value}", files=files)


# --------------------------------------------------------------------------- archives


def _sidecar(url: str, storage_options: dict | None) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The archive's ``<url>.preprocess.json`` and {its shown URL: sha256} (part of the job's
    identity, like the archive's own bytes), or None when there is none."""
    from sgcore.models import registry as reg

    side = url + SIDECAR_SUFFIX
    try:
        data = reg.read_weights_bytes(side, storage_options, what="preprocess sidecar")
    except ConfigError as e:
        if "not found" in str(e):
            return None
        raise
    shown = reg._redact(side, storage_options)
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ConfigError(f"{shown} is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{shown} must hold a JSON object")
    return obj, {shown: reg.sha256_bytes(data)}


def sidecar_files(url: str, storage_options: dict | None) -> dict[str, str]:
    """{shown URL: sha256} of an archive's preprocessing sidecar; empty when it has none."""
    found = _sidecar(url, storage_options)
    return found[1] if found is not None else {}


def archive_preprocess(kind: str, url: str, storage_options: dict | None, overrides: dict[str, Any] | None
                       ) -> tuple[Preprocess, list[str] | None, dict[str, str]]:
    """An archive's preprocessing: its ``<archive>.preprocess.json``, else a complete ``--preprocess``.

    Returns the preprocessing, the sidecar's categories and {sidecar URL: sha256} (empty without one).
    """
    from sgcore.models import registry as reg

    found = _sidecar(url, storage_options)
    categories = None
    if found is not None:
        side, files = found
        body = side.get("preprocess", side)
        if "categories" in side:
            categories = [str(c) for c in side["categories"]]
            body = {k: v for k, v in body.items() if k != "categories"}
        return Preprocess.from_dict(body), categories, files
    if overrides and {"crop_size", "mean", "std"} <= set(overrides):
        return Preprocess.from_dict(dict(overrides)), None, {}
    shown = reg._redact(url, storage_options)
    raise ConfigError(
        f"{kind}:{shown} declares no preprocessing: write {shown}{SIDECAR_SUFFIX} "
        "(a Preprocess.to_dict(), optionally under 'preprocess' with 'categories') or pass "
        "--preprocess '{\"crop_size\": 224, \"resize_size\": 256, \"mean\": [...], \"std\": [...]}'"
    )


def load_archive(kind: str, url: str, storage_options: dict | None,
                 overrides: dict[str, Any] | None) -> Source:
    from sgcore.models import registry as reg

    shown = reg._redact(url, storage_options)
    data = reg.read_weights_bytes(url, storage_options, what=f"{kind} archive")
    pre, categories, side_files = archive_preprocess(kind, url, storage_options, overrides)
    how = ("torch.jit.save(torch.jit.script(model), path)" if kind == "torchscript"
           else "torch.export.save(torch.export.export(model, (x,)), path)")
    what = "TorchScript" if kind == "torchscript" else "torch.export (.pt2)"
    if not data.startswith(b"PK\x03\x04"):  # both are zip archives; torch would log a traceback
        raise ConfigError(f"{kind}:{shown} is not a {what} archive (not a zip file); write one with {how}")
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # a failed load logs a traceback before raising
    try:
        if kind == "torchscript":
            model = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            model = torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        raise ConfigError(f"{kind}:{shown} is not a {what} archive ({_short(e)}); write one with {how}") from None
    finally:
        export_log.setLevel(level)
    return Source(model=Classifier(model, frozen_mode=kind == "export"), preprocess=pre,
                  categories=categories, weights="(in the archive)",
                  files={shown: reg.sha256_bytes(data), **side_files})


# --------------------------------------------------------------------------- Python factories


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
    from sgcore.models import registry as reg

    spec = f"py:{value}"
    fn = _factory(value)
    with reg._seeded_init():
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


def resolve_py_preprocess(value: str) -> Preprocess:
    _, pre = _call_factory(value)
    return pre or imagenet_preprocess()


def load_py(value: str, weights: str, storage_options: dict | None) -> Source:
    from sgcore.models import registry as reg

    spec = f"py:{value}"
    model, pre = _call_factory(value)
    files: dict[str, str] = py_files(value)
    categories = None
    shown = "(from the factory)"
    if weights.lower() not in ("default", "none"):
        shown = reg._redact(weights, storage_options)
        data = reg.read_weights_bytes(weights, storage_options)
        files[shown] = reg.sha256_bytes(data)
        state, extras = reg._split_checkpoint(shown, reg._state_from_bytes(weights, data, storage_options))
        reg._load_strict(model, state, f"checkpoint {shown} does not fit {spec}")
        if extras.get("categories") is not None:
            categories = [str(c) for c in extras["categories"]]
    cats = getattr(model, "categories", None)
    if categories is None and isinstance(cats, list | tuple):
        categories = [str(c) for c in cats]
    return Source(model=Classifier(model), preprocess=pre or imagenet_preprocess(), categories=categories,
                  weights=shown, files=files)


def probe_num_classes(model: nn.Module, pre: Preprocess, spec: str) -> int:
    """Number of classes, from one small forward (also checks the output type and input size)."""
    return _probe(model, pre, spec)


__all__ = ["ARCHIVES", "SOURCES", "Source", "hf_preprocess", "split_spec", "timm_preprocess"]
