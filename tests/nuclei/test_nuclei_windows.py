"""The nuclei stage through the inference engine gives the nuclei one window at a time gives.

The reference is the stage as it was before the engine: each window alone through the network,
its eight views made with numpy, the normalised view mapped in numpy, and painted in raster order.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from wsipipe.inference.engine import run
from wsipipe.models.io import load_model
from wsipipe.nuclei.classical import calibrate, haematoxylin_od
from wsipipe.nuclei.data import load_cpm15
from wsipipe.nuclei.stage import (
    BUNDLED_NUCLEI_MODEL,
    input_stain,
    normalised_view,
    split_views,
)
from wsipipe.nuclei.tiled import (
    WindowPainter,
    plan_windows,
    segment_tiled,
    start_workers,
)
from wsipipe.nuclei.windows import (
    NormalisedView,
    UsnetWindows,
    WindowedInput,
    open_windowed,
    usnet_labels,
)

torch = pytest.importorskip("torch")


def one_window_alone(bundle, views: int, stain):
    """rgb -> (segmentation, boxes, scores, distance) as the stage computed them before the engine."""
    from wsipipe.models.io import normalisation_tensors
    from wsipipe.models.usnet import decode

    network = bundle.model
    multiple = 2 ** (len(network.encoder) - 1)
    mean, std = normalisation_tensors(bundle.input_normalisation)
    normaliser = normalised_view(bundle.metadata)

    def run_network(canvas):
        x = torch.as_tensor(canvas).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            return network((x - mean) / std)

    def as_is(rgb):
        height, width = rgb.shape[:2]
        canvas = np.pad(rgb, ((0, -height % multiple), (0, -width % multiple), (0, 0)), constant_values=255)
        out = run_network(canvas)
        boxes = decode(out["offsets"][0], network.anchors(*canvas.shape[:2])).numpy()
        scores = torch.sigmoid(out["scores"][0]).numpy()
        maps = np.stack([out[name][0, 0].numpy() for name in ("segmentation", "distance")])
        for turns, mirror in [(t, m) for t in range(4) for m in (False, True)][1:views]:
            view = np.ascontiguousarray(np.rot90(canvas[:, ::-1] if mirror else canvas, turns))
            out = run_network(view)
            back = np.rot90(
                np.stack([out[name][0, 0].numpy() for name in ("segmentation", "distance")]), -turns, axes=(1, 2)
            )
            maps = maps + (back[:, :, ::-1] if mirror else back)
        maps = (maps / views)[:, :height, :width]
        return maps[0], boxes, scores, maps[1]

    def forward(rgb):
        mapped = as_is(normaliser.transform(rgb, source=stain))
        return tuple((a + b) / 2 for a, b in zip(as_is(rgb), mapped))

    return forward


@pytest.fixture(scope="module")
def bundle():
    return load_model(BUNDLED_NUCLEI_MODEL)


def test_windows_in_batches_with_a_worker_pool_give_the_nuclei_of_one_window_at_a_time(bundle, data_dir):
    """Windows of several shapes (square and not, so the views turn both), batched two by two
    where they share a shape, the watershed in a worker process: label map and nuclei identical."""
    rgb = np.ascontiguousarray(load_cpm15(data_dir / "nuclei" / "cpm15")[0].rgb[:96, :208])
    views, settings = split_views(bundle.metadata["instances"])
    stain = input_stain(bundle.metadata, rgb)
    haematoxylin = functools.partial(haematoxylin_od, stain_matrix=calibrate(rgb).stain_matrix)
    core, margin = 64, 16
    naive = one_window_alone(bundle, views, stain)
    expected = np.zeros(rgb.shape[:2], np.int32)
    expected_nuclei = segment_tiled(
        lambda y0, x0, y1, x1: rgb[y0:y1, x0:x1],
        rgb.shape[:2],
        lambda window: usnet_labels(
            dict(zip(("segmentation", "boxes", "scores", "distance"), naive(window))), **settings
        ),
        haematoxylin,
        expected,
        core,
        margin,
        min_pixels=settings["min_pixels"],
    )
    assert len(expected_nuclei) > 10

    image = WindowedInput("crop", rgb.shape[:2], 1.0, rgb, rgb.shape[:2], 0.5, image=rgb)
    plan = plan_windows(image.shape, core, margin)
    windows = [window for _, window in plan]
    shapes = [(w[2] - w[0], w[3] - w[1]) for w in windows]
    assert len(set(shapes)) < len(shapes) and any(h != w for h, w in shapes)  # a batch of two; turned non-square views
    runner = UsnetWindows(bundle, "cpu", 1, views, True, settings["score_threshold"])
    got = np.zeros(rgb.shape[:2], np.int32)
    pool = start_workers(1)
    try:
        painter = WindowPainter(
            plan,
            functools.partial(usnet_labels, **settings),
            haematoxylin,
            got,
            pool=pool,
            min_pixels=settings["min_pixels"],
        )
        run(image.batches(windows, 2, NormalisedView(normalised_view(bundle.metadata), stain)), runner, painter)
        nuclei = painter.finish()
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(got, expected)
    assert [(n.id, n.centroid_x, n.centroid_y, n.area_px, n.mean_haematoxylin_od) for n in nuclei] == [
        (n.id, n.centroid_x, n.centroid_y, n.area_px, n.mean_haematoxylin_od) for n in expected_nuclei
    ]


def test_reader_processes_read_each_window_as_one_read_alone(slides_dir):
    """A slide resampled to the working µm/px (0.499 -> 0.5): windows of several shapes read by
    reader processes, batched by shape, equal the reads of each window in this process."""
    slide = open_windowed(slides_dir / "CMU-1-Small-Region.svs", None, None, 0.5, False, 0.25, 4.0)
    plan = plan_windows(slide.shape, 1024, 64)
    windows = [window for _, window in plan][:4]
    seen = []
    for corners, tiles in slide.batches(windows, 2, readers=2):
        assert len({tile.shape for tile in tiles}) == 1
        seen += list(zip(corners, tiles))
    assert [corner for corner, _ in seen] == [(x0, y0) for y0, x0, _, _ in windows]
    for (_, tile), window in zip(seen, windows):
        np.testing.assert_array_equal(tile, slide.read(window))
