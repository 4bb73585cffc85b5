"""Overlay building from untrusted outputs: polygons far outside the slide, failed builds."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.view.deepzoom import TileBox
from wsipipe.view.overlays import Lazy, PolygonOverlay


def test_polygons_are_indexed_within_the_slide_only_and_drawn_where_they_are():
    square = np.array([[100.0, 100.0], [300.0, 100.0], [300.0, 300.0], [100.0, 300.0]])
    far = np.array([[-1e300, 0.0], [10.0, 0.0], [10.0, 10.0]])  # bins to -1e297: a loop for ever if indexed
    huge = np.array([[0.0, 0.0], [1e7, 0.0], [1e7, 20.0], [0.0, 20.0]])  # 1e8 bins of a 1024 px grid if indexed
    broken = np.array([[np.nan, 0.0], [10.0, 0.0], [10.0, 10.0]])
    overlay = PolygonOverlay([square, far, huge, broken], [(255, 0, 0)] * 4, (2048, 1024), thickness=1)
    assert set(overlay.bins) == {(0, 0), (1, 0)}  # a 2048 x 1024 slide has two bins
    assert overlay.bins[(0, 0)] == [0, 1, 2] and 3 not in overlay.bins[(1, 0)]
    canvas = overlay.render(TileBox(0, 0, 512, 512, 1))
    drawn = canvas[..., 3] > 0
    assert drawn[100, 100:300].all() and drawn[100:300, 300].all()  # the square's outline
    assert not drawn[150:250, 150:250].any()  # and nothing inside it from the others' wild lines


def test_a_failed_build_is_not_repeated_on_every_request():
    calls = []

    def build():
        calls.append(1)
        raise MemoryError("too big")

    lazy = Lazy(build)
    for _ in range(3):
        with pytest.raises(MemoryError):
            lazy.get()
    assert len(calls) == 1
