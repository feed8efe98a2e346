"""The same metrics as Quantus (Hedström et al., JMLR 2023) where it has them.

Quantus is a test-only dependency; its batch kernels are called directly
with non-negative maps (sgcore's metrics read magnitudes).
"""

from __future__ import annotations

import numpy as np
import pytest

from sgcore.audit.metrics import entropy, gini, mass_in_mask, pointing_game, spearman

quantus = pytest.importorskip("quantus")


@pytest.fixture
def maps_and_masks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    maps = np.abs(rng.normal(size=(6, 1, 16, 16))) ** 3  # heavy-tailed, like saliency
    masks = np.zeros((6, 1, 16, 16))
    for i in range(6):
        r, c = rng.integers(0, 10, size=2)
        masks[i, 0, r : r + 6, c : c + 6] = 1
        if i % 2:  # a clear peak on the object for half of the maps
            maps[i, 0, r + 2, c + 3] = 50.0
    return maps, masks


def test_gini_matches_quantus_sparseness(maps_and_masks: tuple[np.ndarray, np.ndarray]) -> None:
    maps, _ = maps_and_masks
    expected = quantus.Sparseness(disable_warnings=True).evaluate_batch(x_batch=maps, a_batch=maps.copy())
    np.testing.assert_allclose(gini(maps[:, 0]), expected, atol=1e-6)


def test_entropy_matches_quantus_complexity(maps_and_masks: tuple[np.ndarray, np.ndarray]) -> None:
    maps, _ = maps_and_masks
    expected = quantus.Complexity(disable_warnings=True).evaluate_batch(x_batch=maps, a_batch=maps.copy())
    np.testing.assert_allclose(entropy(maps[:, 0], normalized=False), expected, atol=1e-6)


def test_mass_in_mask_matches_quantus_relevance_mass_accuracy(maps_and_masks: tuple[np.ndarray, np.ndarray]) -> None:
    maps, masks = maps_and_masks
    expected = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(a_batch=maps, s_batch=masks)
    np.testing.assert_allclose(mass_in_mask(maps[:, 0], masks[:, 0]), expected, rtol=1e-9)


def test_pointing_game_matches_quantus(maps_and_masks: tuple[np.ndarray, np.ndarray]) -> None:
    maps, masks = maps_and_masks
    expected = quantus.PointingGame(disable_warnings=True).evaluate_batch(a_batch=maps, s_batch=masks)
    got = pointing_game(maps[:, 0], masks[:, 0])
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=bool))
    assert 0 < got.sum() < len(got)  # both outcomes are exercised


def test_spearman_matches_quantus(maps_and_masks: tuple[np.ndarray, np.ndarray]) -> None:
    from quantus.functions.similarity_func import correlation_spearman

    maps, _ = maps_and_masks
    other = maps[::-1].copy() + maps
    for a, b in zip(maps[:, 0], other[:, 0], strict=True):
        assert spearman(a, b) == pytest.approx(correlation_spearman(a.ravel(), b.ravel()))
