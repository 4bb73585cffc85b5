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


def test_polygons_over_the_whole_slide_are_found_by_their_bounds():
    """Thousands of slide-wide polygons (a small foreign file) index at once and still draw."""
    import time

    triangle = np.array([[0.0, 0.0], [100_000.0, 0.0], [0.0, 100_000.0]])
    start = time.perf_counter()
    overlay = PolygonOverlay([triangle] * 2000 + [triangle / 1000], [(0, 255, 0)] * 2001, (100_000, 100_000), 1)
    assert time.perf_counter() - start < 1.0  # was 3 s and 19 million bin entries
    assert sum(map(len, overlay.bins.values())) == 1 and len(overlay.large) == 2000
    on_edge = overlay.render(TileBox(49_900, 49_900, 50_156, 50_156, 1))  # the hypotenuse crosses it
    assert on_edge[..., 3].any()
    assert not overlay.render(TileBox(90_000, 90_000, 90_256, 90_256, 1))[..., 3].any()  # beyond it


def test_a_failed_build_is_not_repeated_on_every_request():
    calls = []

    def build():
        calls.append(1)
        raise MemoryError("too big")

    lazy = Lazy(build)
    depths = []
    for _ in range(5):
        with pytest.raises(MemoryError) as raised:
            lazy.get()
        depths.append(len(list(_frames(raised.value.__traceback__))))
    assert len(calls) == 1
    assert depths[-1] == depths[1]  # earlier requests' frames are not kept on it


def _frames(traceback):
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next
