"""``torchscript:URL`` and ``export:URL``: a saved TorchScript or ``torch.export``
archive, with its preprocessing from ``<URL>.preprocess.json`` (or a complete
``--preprocess``)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import torch

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.preprocess import Preprocess
from sgcore.models.sources.base import Built, ModelSpec, SourceBase, short

SIDECAR_SUFFIX = ".preprocess.json"


def _sidecar(url: str, storage_options: dict | None) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The archive's ``<url>.preprocess.json`` and {its shown URL: sha256} (part of the job's
    identity, like the archive's own bytes), or None when there is none."""
    try:
        found = checkpoint.read(url + SIDECAR_SUFFIX, storage_options, what="preprocess sidecar")
    except ConfigError as e:
        if "not found" in str(e):
            return None
        raise
    try:
        obj = json.loads(found.data)
    except ValueError as e:
        raise ConfigError(f"{found.shown} is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{found.shown} must hold a JSON object")
    return obj, {found.shown: found.sha256}


def sidecar_files(url: str, storage_options: dict | None) -> dict[str, str]:
    """{shown URL: sha256} of an archive's preprocessing sidecar; empty when it has none."""
    found = _sidecar(url, storage_options)
    return found[1] if found is not None else {}


def archive_preprocess(kind: str, url: str, storage_options: dict | None, overrides: dict[str, Any] | None
                       ) -> tuple[Preprocess, list[str] | None, dict[str, str]]:
    """An archive's preprocessing: its ``<archive>.preprocess.json``, else a complete ``--preprocess``.

    Returns the preprocessing, the sidecar's categories and {sidecar URL: sha256} (empty without one).
    """
    found = _sidecar(url, storage_options)
    if found is not None:
        side, files = found
        body = side.get("preprocess", side)
        categories = None
        if "categories" in side:
            categories = [str(c) for c in side["categories"]]
            body = {k: v for k, v in body.items() if k != "categories"}
        return Preprocess.from_dict(body), categories, files
    if overrides and {"crop_size", "mean", "std"} <= set(overrides):
        return Preprocess.from_dict(dict(overrides)), None, {}
    shown = checkpoint.redact(url, storage_options)
    raise ConfigError(
        f"{kind}:{shown} declares no preprocessing: write {shown}{SIDECAR_SUFFIX} "
        "(a Preprocess.to_dict(), optionally under 'preprocess' with 'categories') or pass "
        "--preprocess '{\"crop_size\": 224, \"resize_size\": 256, \"mean\": [...], \"std\": [...]}'"
    )


class ArchiveSource(SourceBase):
    """A saved archive: ``torchscript`` (``torch.jit.save``) or ``export`` (``torch.export.save``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.example = f"{prefix}:s3://bucket/model.{'pt' if prefix == 'torchscript' else 'pt2'}"

    def load(self, spec: ModelSpec) -> Built:
        kind = self.prefix
        found = checkpoint.read(spec.value, spec.storage_options, what=f"{kind} archive")
        shown = found.shown
        pre, categories, side_files = archive_preprocess(kind, spec.value, spec.storage_options, spec.overrides)
        how = ("torch.jit.save(torch.jit.script(model), path)" if kind == "torchscript"
               else "torch.export.save(torch.export.export(model, (x,)), path)")
        what = "TorchScript" if kind == "torchscript" else "torch.export (.pt2)"
        if not found.data.startswith(b"PK\x03\x04"):  # both are zip archives; torch would log a traceback
            raise ConfigError(f"{kind}:{shown} is not a {what} archive (not a zip file); write one with {how}")
        export_log = logging.getLogger("torch.export")
        level = export_log.level
        export_log.setLevel(logging.ERROR)  # a failed load logs a traceback before raising
        try:
            if kind == "torchscript":
                model = torch.jit.load(io.BytesIO(found.data), map_location="cpu")
            else:
                model = torch.export.load(io.BytesIO(found.data)).module()
        except Exception as e:
            raise ConfigError(f"{kind}:{shown} is not a {what} archive ({short(e)}); write one with {how}") from None
        finally:
            export_log.setLevel(level)
        return Built(network=model, preprocess=pre, categories=categories, weights="(in the archive)",
                     files={shown: found.sha256, **side_files}, frozen_mode=kind == "export")

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        return archive_preprocess(self.prefix, spec.value, spec.storage_options, spec.overrides)[0]

    def files(self, spec: ModelSpec) -> dict[str, str]:
        found = checkpoint.read(spec.value, spec.storage_options, what=f"{self.prefix} archive")
        return {found.shown: found.sha256, **sidecar_files(spec.value, spec.storage_options)}

    def check_base(self, spec: ModelSpec, base: str) -> None:
        """Refuses guided backprop: an archive has no ReLU modules or calls to hook."""
        if base == "guided_backprop":
            kind = self.prefix
            raise ConfigError(
                f"--base guided_backprop cannot run on --model {kind}:...: a {kind} archive holds no Python "
                "ReLU modules to guide; use --base gradient (or another base), or load the network "
                "with a py:MODULE:CALLABLE factory"
            )
