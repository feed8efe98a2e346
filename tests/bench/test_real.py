"""The pooled calibration of the real model (sgcore.bench.real): each pooled map and its estimates are
the kernel's own for that n and seed, so the table measures what the job computes."""

from __future__ import annotations

import pytest
import torch

from sgcore.attribution.smoothgrad import smoothgrad
from sgcore.bench.real import map_of, pooled_calibration, sample_gradients


@pytest.mark.parametrize("n", [4, 10, 16])
def test_a_pools_first_n_samples_give_the_kernels_map_and_estimates(cnn, n):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    seed, target = 12_345, 3
    grads = sample_gradients(cnn, x[0], target, n=16, seed=seed, chunk=5)
    whole, rel, rep = map_of(grads, n, seed)
    got = smoothgrad(cnn, x, torch.tensor([target]), n_samples=n, seeds=torch.tensor([seed]),
                     return_reliability=True)
    torch.testing.assert_close(whole, got.maps[0], rtol=1e-4, atol=1e-6)
    assert rel == pytest.approx(float(got.reliability[0]), abs=2e-3)
    assert rep == pytest.approx(float(got.reproducibility[0]), abs=2e-3)


def test_pooled_calibration_rows_and_seed_only_flags(cnn):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 16, 16)
    targets = torch.tensor([0, 1, 2])
    ref = smoothgrad(cnn, x, targets, n_samples=256, seeds=torch.arange(3) + 7_000_000, return_reliability=True)
    partial: list[int] = []
    res = pooled_calibration(cnn, x, targets, reference=ref, ns=(8, 32),
                             on_image=lambda r: partial.append(r["images_done"]))
    assert partial == [1, 2, 3]  # a table after every image: a stopped run keeps the images done
    assert [r["n"] for r in res["rows"]] == [8, 32]
    for row in res["rows"]:
        assert row["maps"] == 6 and row["pairs"] == 3
        assert 0 <= row["flagged_seed_only"] <= 3
        assert -1 <= row["measured"] <= 1 and -1 <= row["twin_measured"] <= 1
    # More samples: closer to the reference and to each other.
    assert res["rows"][1]["measured"] > res["rows"][0]["measured"]
    assert res["rows"][1]["twin_measured"] > res["rows"][0]["twin_measured"]
