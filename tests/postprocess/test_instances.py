"""The seeded watershed against skimage's, and the size filter, on hand-made and random cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from wsipipe.postprocess.instances import drop_small, seeded_watershed


def _random_case(seed: int, size: int = 160):
    """Blobs of every kind (no seed, one, several), a surface without ties, seeds inside the mask."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((size, size)), 3) > 0.5
    components, count = ndimage.label(mask)
    surface = -ndimage.gaussian_filter(rng.random((size, size)), 2) + rng.random((size, size)) * 1e-6
    inside = np.flatnonzero(mask)
    seeds = rng.choice(inside, size=count * 2, replace=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers.ravel()[seeds] = rng.permutation(np.arange(1, seeds.size + 1))
    return surface, markers, components


@pytest.mark.parametrize("compactness", [0.0, 0.01, 1.0])
def test_seeded_watershed_equals_skimage(compactness):
    kinds = np.zeros(3, dtype=int)
    for seed in range(6):
        surface, markers, components = _random_case(seed)
        per_component = np.bincount(components[markers > 0], minlength=components.max() + 1)[1:]
        kinds += [np.sum(per_component == 0), np.sum(per_component == 1), np.sum(per_component >= 2)]
        expected = watershed(surface, markers, mask=components > 0, compactness=compactness)
        got = seeded_watershed(surface, markers, components, compactness)
        assert got.dtype == np.int32
        assert np.array_equal(got, expected)
    assert kinds.min() > 10  # every kind of component was exercised


def test_seeded_watershed_by_hand():
    components = np.array([[1, 1, 0, 2, 2, 2, 0, 3]])
    markers = np.array([[0, 7, 0, 4, 0, 5, 0, 0]])
    surface = np.array([[0.0, 0.0, 0, 0.0, 1.0, 0.5, 0, 0]])
    # component 1: all of seed 7; component 2: the ridge pixel goes to seed 4, whose basin is
    # lower and floods it first; component 3 has no seed and stays 0
    assert seeded_watershed(surface, markers, components).tolist() == [[7, 7, 0, 4, 4, 5, 0, 0]]
    assert seeded_watershed(surface, np.zeros_like(markers), components).tolist() == [[0] * 8]


def test_drop_small_renumbers_in_order():
    labels = np.array([[3, 3, 0, 1], [5, 5, 5, 0], [0, 0, 7, 7]])
    assert drop_small(labels, 2).tolist() == [[1, 1, 0, 0], [2, 2, 2, 0], [0, 0, 3, 3]]
    assert drop_small(labels, 0).tolist() == [[3, 3, 0, 1], [5, 5, 5, 0], [0, 0, 7, 7]]
    assert drop_small(labels, 4).max() == 0
