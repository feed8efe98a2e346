"""Channel reduction and percentile clipping of attribution maps."""

from __future__ import annotations

import pytest
import torch

from sgcore.attribution import REDUCTIONS, clip_percentile, reduce_channels


def test_reductions_by_hand():
    m = torch.zeros(1, 2, 1, 2)
    m[0, 0, 0] = torch.tensor([1.0, -2.0])
    m[0, 1, 0] = torch.tensor([-3.0, 0.5])
    assert torch.equal(reduce_channels(m, "abs_sum"), torch.tensor([[[4.0, 2.5]]]))
    assert torch.equal(reduce_channels(m, "sum"), torch.tensor([[[-2.0, -1.5]]]))
    assert torch.equal(reduce_channels(m, "max_abs"), torch.tensor([[[3.0, 2.0]]]))
    assert reduce_channels(m).shape == (1, 1, 2)


def test_clip_percentile_grayscale_and_diverging():
    m = torch.arange(1, 101, dtype=torch.float32).view(1, 10, 10)
    m[0, 0, 0] = -1000.0
    gray = clip_percentile(m, 99.0)
    assert gray.min() >= 0 and gray.max() == 1.0
    assert gray[0, 0, 0] == 1.0  # the outlier is clipped, not allowed to dim the rest
    assert gray[0, 4, 9] == pytest.approx(50.0 / torch.quantile(m.abs().flatten(), 0.99).item())
    div = clip_percentile(m, 99.0, signed=True)
    q = torch.quantile(m.abs().flatten(), 0.99).item()
    assert div[0, 0, 0] == -1.0 and div.max() == pytest.approx(100.0 / q)
    single = clip_percentile(m[0], 90.0)
    torch.testing.assert_close(single, clip_percentile(m, 90.0)[0])


def test_clip_percentile_all_zero_map_is_zero():
    assert torch.equal(clip_percentile(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: reduce_channels(torch.zeros(2, 3, 3)), ValueError, r"maps must be a tensor of shape \(B, C, H, W\); got \(2, 3, 3\)"),
        (lambda: reduce_channels("map"), ValueError, r"maps must be a tensor of shape \(B, C, H, W\); got str"),
        (lambda: reduce_channels(torch.zeros(1, 3, 2, 2), "l2"), ValueError, r"reduction must be one of abs_sum, sum, max_abs; got 'l2'"),
        (lambda: clip_percentile(torch.zeros(3, 3), 0.0), ValueError, r"q must be in \(0, 100\]; got 0.0"),
        (lambda: clip_percentile(torch.zeros(3, 3), 101), ValueError, r"q must be in \(0, 100\]; got 101"),
        (lambda: clip_percentile(torch.zeros(3, 3), "99"), TypeError, r"q must be a float; got str"),
        (lambda: clip_percentile(torch.zeros(1, 1, 3, 3)), ValueError, r"maps must be a tensor of shape \(B, H, W\) or \(H, W\); got \(1, 1, 3, 3\)"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reductions_constant():
    assert REDUCTIONS == ("abs_sum", "sum", "max_abs")
