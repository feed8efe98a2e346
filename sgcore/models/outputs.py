"""What a classifier returns -> the logits; which score of them is explained."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

SCORES: tuple[str, ...] = ("logit", "softmax", "log_softmax")


def logits_of(out: Any) -> torch.Tensor:
    """The ``(B, classes)`` logits in a model's output.

    A tensor is taken as is; a tuple or list gives its first element; a dict
    (Hugging Face's ``ModelOutput`` is one) its ``"logits"``.

    Raises:
        TypeError: anything else, saying what came back and how to wrap it.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    what = type(out).__name__
    if isinstance(out, Mapping):
        what += f" with keys {sorted(map(str, out))[:5]}"
    raise TypeError(
        f"the model returned {what}; it must return the (batch, classes) logits as a tensor, "
        "a tuple/list whose first item is that tensor, or a dict/ModelOutput with 'logits' "
        "(else wrap it in a py: factory whose module returns the logits)"
    )


class Classifier(nn.Module):
    """A model whose forward returns the logits tensor, whatever the model returns.

    ``train()``/``eval()`` do not reach a ``torch.export`` module (which
    refuses them; an exported program is fixed in the mode it was exported in).
    """

    def __init__(self, model: nn.Module, *, frozen_mode: bool = False) -> None:
        super().__init__()
        self.inner = model
        self._frozen_mode = frozen_mode

    @property
    def frozen_mode(self) -> bool:
        return self._frozen_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(x))

    def train(self, mode: bool = True) -> Classifier:
        self.training = mode
        if not self._frozen_mode:
            self.inner.train(mode)
        return self


class Score(nn.Module):
    """The quantity whose gradient SmoothGrad explains: logits, softmax or log-softmax."""

    def __init__(self, model: nn.Module, score: str) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
        self.model = model
        self.score = score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.score == "softmax":
            return torch.softmax(out.float(), dim=1)
        if self.score == "log_softmax":
            return torch.log_softmax(out.float(), dim=1)
        return out


def with_score(model: nn.Module, score: str) -> nn.Module:
    """``model`` itself for logits, else wrapped in :class:`Score` in the model's own mode.

    A fresh wrapper module starts in training mode; it takes the wrapped model's
    mode so that ``prepare_model`` (which folds BatchNorm only in eval mode)
    sees what the caller set.
    """
    if score == "logit":
        return model
    return Score(model, score).train(model.training)


def map_network(model: nn.Module, fn: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``model`` with ``fn`` applied to the network inside its :class:`Score` / :class:`Classifier`
    wrappers, wrapped again alike (as :meth:`~sgcore.models.LoadedModel.wrap` does): folding BatchNorm
    needs the network itself, since torch.fx cannot trace the wrappers."""
    if isinstance(model, Score):
        out: nn.Module = Score(map_network(model.model, fn), model.score)
    elif isinstance(model, Classifier):
        out = Classifier(map_network(model.inner, fn), frozen_mode=model.frozen_mode)
    else:
        return fn(model)
    out.training = model.training  # the flag only: train() would reach the prepared network
    return out
