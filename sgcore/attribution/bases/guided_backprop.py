"""Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sgcore.attribution.bases.base import Pointwise


class GuidedBackprop(Pointwise):
    """The gradient with negative gradients zeroed at every ReLU (and ReLU6) on the way back."""

    name = "guided_backprop"

    def hooks(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return guided_relus(model)


def _positive_part(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


# Every way a model can call a ReLU in eager PyTorch: ``nn.ReLU`` modules go
# through ``F.relu``; forward methods also call the functional and tensor
# forms directly (torchvision's ResNet uses the module, many others do not).
# ReLU6 (MobileNet, EfficientNet-Lite) counts too: ``F.relu6`` and ``nn.ReLU6``,
# which calls ``F.hardtanh(x, 0, 6)``; a hardtanh whose floor is not 0 does not.
_RELUS = frozenset({
    torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
})
_HARDTANHS = frozenset({F.hardtanh, F.hardtanh_})


def _is_relu(func, args: tuple, kwargs: dict) -> bool:  # noqa: ANN001 - any torch callable
    if func in _RELUS:
        return True
    if func in _HARDTANHS:
        floor = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        return float(floor) == 0.0
    return False


class _GuidedReLUs(TorchFunctionMode):
    """Clamps the gradient arriving at the output of every ReLU call to >= 0."""

    def __init__(self) -> None:
        super().__init__()
        self.relus_seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.requires_grad and _is_relu(func, args, kwargs):
            self.relus_seen += 1
            # ReLU's own backward then masks by (input > 0), which gives guided
            # backprop's (input > 0) * max(grad, 0). A tensor hook also works
            # for the in-place forms, whose output is the modified input.
            out.register_hook(_positive_part)
        return out


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Makes every ReLU evaluated inside the block a guided-backprop ReLU.

    Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806) zeroes
    negative gradients at each ReLU on the way back. ``nn.ReLU`` modules and
    the functional forms (``F.relu``, ``torch.relu``, ``Tensor.relu`` and
    their in-place variants) are all caught, through a torch function mode;
    so is ReLU6 (``nn.ReLU6``, ``F.relu6``, ``F.hardtanh`` with floor 0: the
    activation of MobileNet and EfficientNet-Lite), whose backward then masks
    by ``0 < input < 6``;
    nothing is left on the model after the block, also after an error.
    Not seen: TorchScript modules and ReLUs written as ``clamp``/``maximum``.
    A model in which no ReLU ran (GELU transformers, say) gets a warning: its
    guided maps are plain gradients. (A compiled model runs its graph without
    calling the mode again, so it is not checked.)
    """
    mode = _GuidedReLUs()
    with mode:
        yield
    if mode.relus_seen == 0 and not isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        # stacklevel 4: this generator, contextlib's __exit__, the kernel, its caller.
        warnings.warn(
            f"guided_backprop: no ReLU ran in {type(model).__name__}, so its maps are plain "
            "gradients; guided backprop is defined for ReLU networks",
            RuntimeWarning, stacklevel=4,
        )
