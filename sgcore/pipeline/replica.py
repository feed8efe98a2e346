"""One model replica: load → prepare → explain, on its device with its threads (no Ray in here).

Every place that holds a model to compute maps holds a :class:`Replica`: the
job's actor (through :class:`~sgcore.pipeline.worker.ShardProcessor`), the Ray
Data stage (:class:`sgcore.ray_data.SmoothGradMaps`, the same processor), the
audit's workers (:class:`sgcore.audit._workers.AuditWorker`) and the sweep
(:func:`sgcore.audit.sweep_runner.run_sweep`). So a map is computed the same
way wherever it is computed: the same network, prepared the same way (eval
mode, BatchNorm folded, channels_last, compiled on request) on the same
device, differentiating the same score.
"""

from __future__ import annotations

from typing import Any

import torch

from sgcore.attribution import prepare_model
from sgcore.models import LoadedModel, Preprocess, load_model, with_score
from sgcore.models.outputs import map_network


def pick_device(want_gpu: bool) -> torch.device:
    """CUDA when a GPU was assigned and torch sees one; the CPU otherwise."""
    if want_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class Replica:
    """One model, loaded once and prepared once on its device, explaining batches.

    Args:
        model, weights, image_size, preprocess, storage_options: as for
            :func:`~sgcore.models.load_model` (``preprocess``: the job's
            ``--preprocess`` overrides, or a resolved preprocessing given whole).
        score: what is differentiated: ``logit``, ``softmax`` or ``log_softmax``.
        fold_bn, compile: how the network is prepared (:func:`~sgcore.attribution.prepare_model`).
        device: where it runs (default: the CPU).
        threads: torch's intra-op threads of this process, set before the model
            is built (a CPU replica's share of its node); None leaves them as they are.
        loaded: a model already loaded (the driver's probe, a test's), used instead of loading.
        quiet: False: a model whose BatchNorm cannot be folded warns once, here.

    Attributes:
        loaded: the :class:`~sgcore.models.LoadedModel` (preprocess, categories, classes).
        model: the prepared network returning the logits (what predicts).
        explained: ``model`` with the score on top (what the kernel differentiates).
        plain: the unprepared model with the score, in eval mode on the device (what
            the sanity cascade randomizes, :meth:`prepare` preparing each step).
        threads: torch's intra-op threads in this process once the replica was built.
    """

    def __init__(self, model: str, weights: str = "default", *, image_size: int | None = None,
                 preprocess: dict[str, Any] | None = None, storage_options: dict[str, Any] | None = None,
                 score: str = "logit", fold_bn: bool = True, compile: bool = False,
                 device: torch.device | None = None, threads: int | None = None,
                 loaded: LoadedModel | None = None, quiet: bool = True) -> None:
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.threads = torch.get_num_threads()
        self.device = device or torch.device("cpu")
        self.score = score
        self.fold_bn = fold_bn
        self.compile = compile
        self.loaded = loaded or load_model(model, weights, image_size=image_size,
                                           storage_options=storage_options or {}, preprocess=preprocess)
        self.preprocess: Preprocess = self.loaded.preprocess
        self.plain = with_score(_eval_mode(self.loaded.model.to(self.device)), score)
        self.model = self.prepare(self.loaded.model, quiet=quiet)
        self.explained = with_score(self.model, score)

    @classmethod
    def for_job(cls, config: Any, *, device: torch.device | None = None, threads: int | None = None,
                loaded: LoadedModel | None = None) -> Replica:
        """The replica of a job's :class:`~sgcore.config.JobConfig` (model, weights, score, preparation)."""
        return cls(config.model, config.weights, image_size=config.image_size, preprocess=config.preprocess,
                   storage_options=config.storage_options, score=config.score, fold_bn=config.fold_bn,
                   compile=config.compile, device=device, threads=threads, loaded=loaded)

    def prepare(self, model: torch.nn.Module, *, quiet: bool = True) -> torch.nn.Module:
        """``model`` (a variant of :attr:`plain`, e.g. with randomized layers) prepared as this replica's
        own network was: the network inside its score/logits wrappers is prepared, then wrapped again."""
        return map_network(model, lambda net: prepare_network(net, self.preprocess, self.device,
                                                              fold_bn=self.fold_bn, compile=self.compile,
                                                              quiet=quiet))

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decoded ``(B, H, W, C)`` uint8 pixels -> the model's ``(B, C, H, W)`` input on the device."""
        return self.preprocess.normalize(pixels).to(self.device)

    def explain(self, x: torch.Tensor, targets: torch.Tensor, **kernel: Any) -> Any:
        """:func:`~sgcore.attribution.smoothgrad` of :attr:`explained` (keywords: the kernel's)."""
        from sgcore.attribution import smoothgrad

        return smoothgrad(self.explained, x, targets, **kernel)

    def explain_adaptive(self, x: torch.Tensor, targets: torch.Tensor, **kernel: Any) -> Any:
        """:func:`~sgcore.attribution.adaptive.smoothgrad_adaptive` of :attr:`explained`."""
        from sgcore.attribution.adaptive import smoothgrad_adaptive

        return smoothgrad_adaptive(self.explained, x, targets, **kernel)


def prepare_network(network: torch.nn.Module, pre: Preprocess, device: torch.device, *, fold_bn: bool,
                    compile: bool = False, quiet: bool = True) -> torch.nn.Module:
    """:func:`~sgcore.attribution.prepare_model` of a model's network (not its logits wrapper) on ``device``,
    with a fixed example batch of its input size, so that models fx cannot trace (or timm's BatchNormAct)
    fold from an observed forward; wrap the result afterwards (:class:`Replica` does)."""
    return prepare_model(_eval_mode(network.to(device)), fold_bn=fold_bn, compile=compile, example=example_batch(pre, device),
                         quiet=quiet)


def _eval_mode(network: torch.nn.Module) -> torch.nn.Module:
    """eval() as every replica did before (a network swapped in after loading may be in training mode);
    an exported program's module refuses eval(), so its flags are cleared directly, as load_model does."""
    try:
        return network.eval()
    except NotImplementedError:
        for module in network.modules():
            module.training = False
        return network


def example_batch(pre: Preprocess, device: torch.device) -> torch.Tensor:
    """A fixed random batch of the model's input size (folding checks its outputs on it)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, pre.channels, *pre.map_shape, generator=gen).to(device)


__all__ = ["Replica", "example_batch", "pick_device", "prepare_network"]
