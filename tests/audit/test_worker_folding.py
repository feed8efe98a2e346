"""The audit's replicas fold BatchNorm as the job's do: the network inside the score/logits wrappers
is prepared, then wrapped again (torch.fx cannot trace the wrappers), at every cascade step too."""

from __future__ import annotations

import warnings

import pytest
import torch

from sgcore.audit._workers import AuditWorker, WorkerSpec
from sgcore.audit.sanity import MapSettings, cascading_randomization
from sgcore.models import load_model
from tests.models.test_folding import batchnorm_ops


@pytest.mark.parametrize("score", ["logit", "softmax"])
def test_audit_worker_folds_batchnorm_without_warning(score):
    pytest.importorskip("timm")
    pre = load_model("timm:resnet18", "none", image_size=64).preprocess
    x = torch.randn(2, pre.channels, *pre.map_shape, generator=torch.Generator().manual_seed(0))
    prepared: list[torch.nn.Module] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 'BatchNorm not folded' warning fails the test
        worker = AuditWorker(WorkerSpec(model="timm:resnet18", weights="none", image_size=64,
                                        preprocess=pre.to_dict(), settings=MapSettings(), score=score))

        def prepare(model: torch.nn.Module) -> torch.nn.Module:
            prepared.append(worker._prepare(model))
            return prepared[-1]

        cascading_randomization(worker.model, x, torch.tensor([0, 1]), settings=MapSettings(n_samples=2),
                                layers=[n for n, _ in worker.model.named_modules() if n.endswith("fc")],
                                prepare=prepare)
    assert batchnorm_ops(worker.model, x) > 0
    assert [batchnorm_ops(m, x) for m in [worker.prepared, *prepared]] == [0, 0, 0]
    assert type(worker.prepared) is type(worker.model) and not worker.prepared.training
    with torch.no_grad():
        want, got = worker.model(x), worker.prepared(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
