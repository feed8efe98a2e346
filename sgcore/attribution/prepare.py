"""One-off model preparation for fast input gradients (per actor, not per call)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn


def prepare_model(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
    example: torch.Tensor | None = None,
    quiet: bool = False,
) -> nn.Module:
    """Returns a copy of ``model`` made cheaper to differentiate; ``model`` is untouched.

    - ``fold_bn``: folds every eval-mode ``BatchNorm`` that directly follows a
      convolution or linear layer into that layer's weight and bias (Ioffe &
      Szegedy 2015, arXiv:1502.03167: in eval mode BN is an affine map, so the
      fold is exact up to float rounding). It halves the memory traffic of
      conv-BN blocks in the forward and backward pass. Needs ``model.eval()``
      (a model in training mode is refused with a ``ValueError``) and a model
      that ``torch.fx`` can trace, or an ``example`` input to fold by one
      observed forward pass instead (see :func:`fold_batchnorm`); otherwise
      nothing is folded and a warning says why (none with ``quiet``).
    - ``channels_last``: stores 4-D weights channels_last (NHWC), which cuDNN
      tensor cores and oneDNN prefer; ``smoothgrad`` then feeds inputs in the
      same layout. None means: on when the model has a ``Conv2d``. Measured
      (docs/performance.md): resnet18 on a 2-core AVX2 CPU, 7.7 → 10.1
      images/s; on CUDA NHWC is what cuDNN's tensor-core kernels want.
    - ``compile``: wraps the result in ``torch.compile`` (first call compiles;
      the chunk size should stay fixed to avoid recompiles).

    The copy's parameters have ``requires_grad=False``: SmoothGrad needs only
    input gradients.

    Args:
        model: classifier to prepare.
        fold_bn: fold eval-mode BatchNorm into the preceding layer.
        channels_last: NHWC weights; None picks as described above.
        compile: apply ``torch.compile``.
        example: an input batch, for models torch.fx cannot trace.
        quiet: no warning when nothing could be folded (the caller reports it once).

    Returns:
        A new ``nn.Module`` with the same outputs (to rounding) as ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or a flag is not a bool.
        ValueError: ``fold_bn=True`` on a model in training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    for name, value in (("fold_bn", fold_bn), ("compile", compile)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool or None; got {type(channels_last).__name__}")
    if fold_bn and model.training:
        raise ValueError(
            "fold_bn=True needs a model in eval mode (BatchNorm folds only with "
            "running statistics); got a model in training mode: call model.eval() first"
        )
    prepared = try_fold_batchnorm(model, example)[0] if fold_bn and quiet else (
        fold_batchnorm(model, example=example) if fold_bn else copy.deepcopy(model))
    if channels_last is None:
        channels_last = _has_conv2d(prepared)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    for p in prepared.parameters():
        p.requires_grad_(False)
    if compile:
        prepared = torch.compile(prepared)
    return prepared


def fold_batchnorm(model: nn.Module, *, example: torch.Tensor | None = None) -> nn.Module:
    """A copy of an eval-mode ``model`` with BatchNorm folded into conv/linear layers.

    Uses ``torch.fx`` to find each BatchNorm whose only input is a Conv1d/2d/3d
    (or a Linear before BatchNorm1d) used nowhere else, and
    ``torch.nn.utils.fusion`` for the arithmetic. A model torch.fx cannot trace
    is folded from one forward pass on ``example`` instead: each BatchNorm module
    fed directly by a convolution's output is folded into it, and the copy is
    kept only if its outputs equal the model's on ``example``. A model with
    timm's ``BatchNormAct2d`` (BatchNorm, dropout and activation in one module,
    which fx traces into functions) is folded that way too: the module becomes
    its dropout (identity in eval mode) and activation. A TorchScript
    module is frozen (``torch.jit.freeze`` folds conv-BatchNorm). When nothing
    can be folded the copy comes back unfolded, with a warning saying why.
    """
    folded, why = try_fold_batchnorm(model, example)
    if why is not None:
        warnings.warn(f"BatchNorm not folded: {why}", RuntimeWarning, stacklevel=2)
    return folded


def try_fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> tuple[nn.Module, str | None]:
    """(:func:`fold_batchnorm`'s copy, why nothing could be folded or None), without warning."""
    from torch.fx.experimental.optimization import fuse

    if model.training:
        raise ValueError(
            "fold_bn=True needs a model in eval mode (BatchNorm folds only with "
            "running statistics); got a model in training mode: call model.eval() first"
        )
    if isinstance(model, torch.jit.ScriptModule):
        try:
            return torch.jit.freeze(model), None
        except Exception as e:  # a module that cannot be frozen (e.g. already frozen, or traced in training)
            return model, f"torch.jit.freeze failed on {type(model).__name__} ({_one_line(e)})"
    acts = sum(1 for m in model.modules() if _is_bn_act(m))
    if acts:  # fx traces through these into batch_norm functions that fuse() does not match
        traced = (f"{acts} BatchNorm+activation modules (timm BatchNormAct) of {type(model).__name__} "
                  "fold only from an observed forward, and no example input was given")
        if example is None:
            return copy.deepcopy(model), traced
        return _fold_observed(model, example, traced)
    try:
        fused = fuse(model, inplace=False)
    except Exception as e:  # torch.fx raises many kinds of tracing errors
        traced = f"torch.fx cannot trace {type(model).__name__} ({e})"
    else:
        left = [n for n in fused.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
        if left:  # e.g. a torch.export program, or a BatchNorm subclass fx traced through
            return fused, (f"{len(left)} BatchNorm of {type(model).__name__} are graph functions, "
                           "not modules, and stay unfolded")
        return fused, None
    if example is None:
        return copy.deepcopy(model), traced
    return _fold_observed(model, example, traced)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_bn_act(module: nn.Module) -> bool:
    """A BatchNorm followed by its own dropout and activation, as timm's ``BatchNormAct2d``
    (and its variants) are; recognised by shape, so that timm stays optional."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) not in _BATCHNORMS
            and isinstance(getattr(module, "act", None), nn.Module)
            and isinstance(getattr(module, "drop", None), nn.Module))


def _foldable_bn(module: nn.Module) -> bool:
    return (type(module) in _BATCHNORMS or _is_bn_act(module)) and getattr(module, "running_mean", None) is not None


def _after_fold(bn: nn.Module) -> nn.Module:
    """What stays of a folded BatchNorm: nothing, or a BatchNormAct's dropout (identity in eval) and activation."""
    return nn.Sequential(bn.drop, bn.act) if _is_bn_act(bn) else nn.Identity()


def _fold_observed(model: nn.Module, example: torch.Tensor, traced: str) -> tuple[nn.Module, str | None]:
    """Folds each BatchNorm whose input is the very tensor a convolution returned (seen in
    one forward on ``example``); kept only if the outputs on ``example`` do not change."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model)
    made: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []  # holds the outputs so that their ids stay unique
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def on_conv(module: nn.Module, args: tuple, out: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(out, torch.Tensor):
            made[id(out)] = module
            keep.append(out)

    def on_bn(module: nn.Module, args: tuple, out: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        conv = made.get(id(args[0])) if args else None
        if conv is not None:
            pairs.append((conv, module))

    # Conv subclasses too (timm's Conv2dSame pads, then convolves with .weight/.bias); one whose forward
    # transforms its weight would change the outputs, and the check below then keeps the model unfolded.
    if not any(_foldable_bn(m) for m in folded.modules()):
        return folded, None  # no BatchNorm: nothing to fold, and no forward to run
    hooks = [m.register_forward_hook(on_conv) for m in folded.modules() if isinstance(m, _CONVS)]
    hooks += [m.register_forward_hook(on_bn) for m in folded.modules() if _foldable_bn(m)]
    try:
        with torch.no_grad():
            before = _tensors(folded(example))
    except Exception as e:  # noqa: BLE001 - the model's own failure surfaces where it runs, named there
        return folded, f"{traced}; the model failed on an example batch ({type(e).__name__}: {e})"
    finally:
        for hook in hooks:
            hook.remove()
    keep.clear()
    parents = {id(child): (parent, name) for parent in folded.modules() for name, child in parent.named_children()}
    pairs = [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and id(b) in parents]
    if not pairs:
        return folded, traced + "; no BatchNorm directly after a convolution was seen on the example input"
    for conv, bn in pairs:
        fused = fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = fused.weight, fused.bias
        parent, name = parents[id(bn)]
        setattr(parent, name, _after_fold(bn))
    with torch.no_grad():
        after = _tensors(folded(example))
    same = len(before) == len(after) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(b.abs().max())))
        for a, b in zip(after, before, strict=True))
    if not same:
        return copy.deepcopy(model), traced + "; folding from an observed forward changed the outputs"
    return folded, None


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in a model's output (a tensor, a tuple/list, a dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in _tensors(v)]
    return []


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prefers_channels_last(model: nn.Module) -> bool:
    """True when the model's first 4-D weight is stored channels_last (the kernels then feed NHWC rows)."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False
