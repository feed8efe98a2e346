"""``hf:DIR_OR_URL_OR_HUB_ID``: a Hugging Face image classifier, from a
``save_pretrained`` directory (local or any fsspec URL, copied once by content)
or a hub id, with its image processor's preprocessing."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from sgcore.models.sources.base import Built, ModelSpec, SourceBase, digest_files, need, short

_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _is_location(value: str) -> bool:
    return "://" in value or value.startswith(("/", "./", "../", "~")) or Path(value).exists()


def hf_local_dir(value: str, storage_options: dict | None) -> tuple[Path | str, dict[str, str]]:
    """A local directory for ``value`` (copied once, keyed by content), and its sha256.

    Every file is read through :func:`sgcore.models.checkpoint.read` (retries; once
    per :func:`~sgcore.models.checkpoint.read_once` scope). A hub id (not a path or
    URL) comes back unchanged, with no hash.
    """
    from sgcore.io import url_to_fs

    if not _is_location(value):
        return value, {}
    shown = checkpoint.redact(value, storage_options)
    fs, root = url_to_fs(value, storage_options)
    root = root.rstrip("/")
    try:
        paths = [p for p in fs.find(root) if not posixpath.basename(p).startswith(".")]
    except (FileNotFoundError, OSError):
        paths = []
    rels = {posixpath.relpath(p, root): p for p in paths}
    if "config.json" not in rels:
        raise ConfigError(
            f"hf:{shown} has no config.json; give a directory written by model.save_pretrained(dir) "
            "(and image_processor.save_pretrained(dir))"
        )
    data = {rel: checkpoint.read(fs.unstrip_protocol(p), storage_options, what="model file").data
            for rel, p in rels.items()}
    digest = digest_files(data)
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
    transformers = need("transformers", "hf", spec)
    try:
        return transformers.AutoImageProcessor.from_pretrained(directory).to_dict()
    except Exception as e:
        raise ConfigError(f"could not get the image processor of {spec} ({short(e)}); no network?") from None


class HuggingFaceSource(SourceBase):
    prefix = "hf"
    example = "hf:s3://bucket/vit (a save_pretrained directory) or hf:google/vit-base-patch16-224"

    def load(self, spec: ModelSpec) -> Built:
        shown = spec.shown
        transformers = need("transformers", "hf", shown)
        directory, files = hf_local_dir(spec.value, spec.storage_options)
        try:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                str(directory), local_files_only=isinstance(directory, Path))
        except Exception as e:
            raise ConfigError(f"could not load {shown} with AutoModelForImageClassification ({short(e)})") from None
        pre = hf_preprocess(_hf_config(directory, shown), shown)
        id2label = getattr(model.config, "id2label", None) or {}
        n = int(getattr(model.config, "num_labels", len(id2label)))
        categories = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)] if id2label else None
        return Built(network=model, preprocess=pre, categories=categories,
                     weights="(in the directory)" if files else f"hub:{spec.value}", files=files)

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        directory, _ = hf_local_dir(spec.value, spec.storage_options)
        return hf_preprocess(_hf_config(directory, f"hf:{spec.value}"), f"hf:{spec.value}")

    def files(self, spec: ModelSpec) -> dict[str, str]:
        return hf_local_dir(spec.value, spec.storage_options)[1]
