"""Weights files: read once per process through :mod:`sgcore.io`, hashed, loaded.

Every source reads its weights here: a checkpoint (``torch.load(weights_only=True)``
or safetensors), a TorchScript / ``torch.export`` archive, an archive's
preprocessing sidecar. :func:`read` fetches the bytes through ``sgcore.io``'s
retries with one-line errors (auth hints, credentials redacted) and hashes
those same bytes; inside :func:`read_once` a URL is fetched at most once, so the
driver's preprocessing, identity and probe share one download.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.redact import redact_text

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"})
# How torch.save files begin: a zip archive whose first member is <name>/data.pkl, or
# (legacy format) a pickle of torch's magic number 0x1950a86a20f9469cfc6c.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SCOPE: contextvars.ContextVar[dict[tuple[str, str], WeightsFile] | None] = contextvars.ContextVar(
    "sgcore_weights_scope", default=None)


@dataclass(frozen=True)
class WeightsFile:
    """The bytes of one weights file, its URL as shown (redacted) and their sha256."""

    url: str
    shown: str
    data: bytes
    sha256: str

    def content(self) -> Any:
        """The file's object: ``torch.load(weights_only=True)``, or safetensors for ``.safetensors``."""
        return load_bytes(self.url, self.data, shown=self.shown)


def redact(text: str, storage_options: dict | None) -> str:
    """``text`` without userinfo, signed-URL queries or any storage-option value."""
    text = redact_text(text)
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


def reason(e: BaseException) -> str:
    """An exception's text, shortened."""
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (the weights' content identity in the manifest)."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Within this block each weights URL is downloaded at most once (the bytes are kept
    until the block ends). Outside it every :func:`read` fetches again, so a file replaced
    at the same URL is seen by the next job of the same process."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def read(url: str, storage_options: dict | None, *, what: str = "checkpoint") -> WeightsFile:
    """The file at ``url`` (any fsspec URL or path) with its sha256; one-line ConfigErrors."""
    cache = _SCOPE.get()
    key = (url, json.dumps(storage_options or {}, sort_keys=True, default=str))
    if cache is not None and key in cache:
        return cache[key]
    data = read_weights_bytes(url, storage_options, what=what)
    found = WeightsFile(url=url, shown=redact(url, storage_options), data=data, sha256=sha256_bytes(data))
    if cache is not None:
        cache[key] = found
    return found


def read_weights_bytes(url: str, storage_options: dict | None, *, what: str = "checkpoint") -> bytes:
    """The bytes at ``url`` through ``sgcore.io`` (transient errors retried); one-line
    ConfigErrors with the URL redacted. Prefer :func:`read`, which reads once per scope."""
    import fsspec

    from sgcore.io import StorageAuthError, check_url_credentials, retry_call

    check_url_credentials(url)
    shown = redact(url, storage_options)

    def fetch() -> bytes:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return f.read()

    try:
        data = retry_call(fetch, what=f"read {what} {shown}")  # transient errors are retried
    except FileNotFoundError as e:
        raise ConfigError(f"{what} {shown} not found") from e
    except Exception as e:  # any backend error; `from None`: its text may hold secrets
        if isinstance(e, StorageAuthError) and e.__cause__ is not None:
            e = e.__cause__  # the backend's own error, as before retrying
        why = redact(reason(e), storage_options)
        if {c.__name__ for c in type(e).__mro__} & _NO_CREDENTIALS:  # botocore, matched by name
            why += ("; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), "
                    "or --storage-options")
        raise ConfigError(f"could not read {what} {shown}: {why}") from None
    if not data:
        raise ConfigError(f"{what} {shown} is empty (0 bytes)")
    return data


# --------------------------------------------------------------------------- decoding


def load_bytes(url: str, data: bytes, *, shown: str) -> Any:
    """``torch.load(weights_only=True)`` of ``data``, or safetensors when ``url`` ends so."""
    if url.lower().endswith(".safetensors"):
        return _load_safetensors(shown, data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types
        raise ConfigError(_load_failure(shown, data, e)) from None


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
        raise ConfigError(f"checkpoint {shown} is not a safetensors file ({reason(e)})") from None


def _load_failure(shown: str, data: bytes, e: Exception) -> str:
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
    why = redact_text(_short_torch_reason(e))
    torch_file = (data.startswith(_ZIP_MAGIC) and b"data.pkl" in data[:4096]) or data.startswith(_LEGACY_MAGIC)
    if torch_file and isinstance(e, pickle.UnpicklingError):
        return (f"checkpoint {shown} is not a PyTorch state_dict loadable with torch.load(weights_only=True) "
                f"(save model.state_dict(), not the model): {why}")
    if torch_file:
        return f"checkpoint {shown} is a damaged PyTorch file (torch.load: {why}); save or copy it again"
    return (f"checkpoint {shown} is not a PyTorch checkpoint (torch.load: {why}); "
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


# --------------------------------------------------------------------------- state dicts


def split_checkpoint(shown: str, obj: Any, keys: tuple[str, ...] = ("state_dict", "model"),
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
            f"checkpoint {shown} holds {type(obj).__name__}, not a state_dict "
            f"(a dict of tensors, or {{'state_dict': ...}} / {{'model': ...}})"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"checkpoint {shown} is not a state_dict: entries {bad[:3]} are not named tensors")
    return {_strip_prefixes(k): v for k, v in state.items()}, extras


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def categories_of(extras: dict[str, Any]) -> list[str] | None:
    """A checkpoint's optional ``"categories"`` entry, as strings."""
    found = extras.get("categories")
    return None if found is None else [str(c) for c in found]


def num_outputs(model: nn.Module) -> int:
    """Output size of the last Linear (or conv) layer."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    if last is None:
        raise ConfigError(f"cannot tell the number of classes of {type(model).__name__}")
    return int(last)


def infer_num_classes(model: nn.Module, state: dict[str, torch.Tensor], default: int) -> int | None:
    """The checkpoint's class count when only the head's size differs from ``default``, else None."""
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


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
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
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", mismatched)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{label} {keys[:5]}{more}")
    return "; ".join(parts)


__all__ = ["WeightsFile", "categories_of", "infer_num_classes", "load_bytes", "load_strict", "num_outputs",
           "read", "read_once", "read_weights_bytes", "redact", "sha256_bytes", "split_checkpoint"]
