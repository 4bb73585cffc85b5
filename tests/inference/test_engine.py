"""The inference engine against hand-written per-tile loops: sources, runner, mergers, GPU JPEG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsipipe.grid import grid_coords
from wsipipe.inference.engine import (
    Blender,
    ImageTiles,
    Runner,
    predict_tiled,
    read_tiles,
    reader_count,
    run,
    slide_batches,
)
from wsipipe.inference.sliding import blend_window
from wsipipe.models.io import IMAGENET_NORMALISATION, ModelBundle

TILE, OVERLAP = 32, 8


def _bundle(net, classes=2) -> ModelBundle:
    return ModelBundle(
        net.eval(),
        {"classes": [str(i) for i in range(classes)], "tile_size": TILE, "input_normalisation": IMAGENET_NORMALISATION},
    )


def _conv_net(out=2) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, out, 3, padding=1)
    )


def _image(height=75, width=90) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predict_tiled_equals_a_naive_per_tile_loop():
    """One tile at a time, written out by hand: glass padding where segment puts the grid, the
    ImageNet normalisation, softmax, the blending window; the engine gives the same to float rounding."""
    net, image = _conv_net(), _image()
    height, width = image.shape[:2]
    coords = grid_coords((width, height), TILE, OVERLAP, 1.0)
    left, top = -coords[:, 0].min(), -coords[:, 1].min()
    padded = np.full((height + 2 * TILE, width + 2 * TILE, 3), 255, np.uint8)
    padded[top : top + height, left : left + width] = image
    sums = np.zeros((2, *padded.shape[:2]), np.float64)
    weights = np.zeros(padded.shape[:2], np.float64)
    window = blend_window(TILE, OVERLAP)
    mean, std = (np.array(IMAGENET_NORMALISATION[k]).reshape(3, 1, 1) for k in ("mean", "std"))
    for x, y in coords + [left, top]:
        pixels = padded[y : y + TILE, x : x + TILE].transpose(2, 0, 1) / 255.0
        with torch.no_grad():
            logits = net(torch.from_numpy(((pixels - mean) / std)[None]).float())[0]
        sums[:, y : y + TILE, x : x + TILE] += torch.softmax(logits, 0).numpy() * window
        weights[y : y + TILE, x : x + TILE] += window
    inside = (slice(top, top + height), slice(left, left + width))
    naive = sums[:, inside[0], inside[1]] / weights[inside]
    engine = predict_tiled(_bundle(net), image, OVERLAP, batch_size=5)
    assert engine.shape == naive.shape
    assert np.abs(engine - naive).max() < 1e-5


def test_image_tiles_cover_the_image_as_a_slide_grid_does():
    image = _image()
    tiles = ImageTiles(image, TILE, OVERLAP, batch_size=4)
    batches = list(tiles)
    assert [len(p) for p, _ in batches[:-1]] == [4] * (len(batches) - 1) and sum(len(p) for p, _ in batches) == len(
        tiles
    )
    positions, pixels = batches[1]
    x, y = positions[0]
    assert np.array_equal(pixels[0], tiles.padded[y : y + TILE, x : x + TILE])
    canvas = np.zeros((1, tiles.height, tiles.width))
    canvas[0, tiles.top : tiles.top + image.shape[0], tiles.left : tiles.left + image.shape[1]] = 1
    assert tiles.crop(canvas).shape == (1, *image.shape[:2]) and tiles.crop(canvas).min() == 1


class TwoHeads(torch.nn.Module):
    """A US-Net-like dict of heads: a dense map that depends on orientation, and a detection head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dense = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.scores = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=x.dtype).view(1, 1, 1, -1) / x.shape[-1]
        return {"segmentation": self.dense(x) + ramp, "scores": self.scores(x)}


def test_dict_outputs_and_test_time_augmentation_match_the_nuclei_stage_views():
    """views=8 averages the named heads over the four turns, each mirrored, turned back (as the
    nuclei stage's numpy loop does); other heads come from the tile as it is."""
    net, tiles = TwoHeads().eval(), _image(TILE, TILE)[None].repeat(3, 0)
    bundle = _bundle(net, 1)
    plain = Runner(bundle, "cpu", 8, outputs=lambda out: out)(tiles)
    views = Runner(bundle, "cpu", 8, outputs=lambda out: out, views=8, averaged=("segmentation",))(tiles)
    assert set(views) == {"segmentation", "scores"} and views["segmentation"].shape == (3, 1, TILE, TILE)
    x = bundle.preprocess(torch.from_numpy(tiles[:1]))[0].numpy().transpose(1, 2, 0)  # HWC
    expected = plain["segmentation"][0, 0]
    for turns, mirror in [(t, m) for t in range(4) for m in (False, True)][1:]:
        view = np.ascontiguousarray(np.rot90(x[:, ::-1] if mirror else x, turns))
        with torch.no_grad():
            out = net(torch.from_numpy(view.transpose(2, 0, 1))[None])["segmentation"][0, 0].numpy()
        back = np.rot90(out, -turns)
        expected = expected + (back[:, ::-1] if mirror else back)
    assert np.abs(views["segmentation"][0, 0] - expected / 8).max() < 1e-5
    assert np.array_equal(views["scores"], plain["scores"])
    assert np.abs(views["segmentation"] - plain["segmentation"]).max() > 0.01  # the ramp is not turn-invariant


def test_test_time_augmentation_of_a_head_that_outputs_derives():
    """``averaged`` names what ``outputs`` returns: a head computed from a differently named network
    head is averaged as one the network returns itself."""
    net, tiles = TwoHeads().eval(), _image(TILE, TILE)[None].repeat(2, 0)
    bundle = _bundle(net, 1)
    as_is = Runner(bundle, "cpu", 8, outputs=lambda out: out, views=8, averaged=("segmentation",))(tiles)
    derived = Runner(
        bundle, "cpu", 8, outputs=lambda out: {"doubled": 2 * out["segmentation"]}, views=8, averaged=("doubled",)
    )(tiles)
    assert np.abs(derived["doubled"] - 2 * as_is["segmentation"]).max() < 1e-5


def test_out_of_memory_halves_the_batch_and_goes_on():
    """The OOM path, exercised on the CPU with a model that fails on batches over 2 tiles."""

    class Picky(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return torch.cat([x[:, :1] * 0, x[:, :1]], dim=1)

    messages = []
    bundle = ModelBundle(Picky(), {"input_normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3}})
    runner = Runner(bundle, "cpu", batch_size=8, say=messages.append)
    tiles = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    probs = runner(tiles)
    assert probs.shape == (8, 2, 16, 16) and runner.batch_size == 2
    expected = torch.softmax(
        torch.cat([torch.zeros(8, 1, 16, 16), torch.from_numpy(tiles[..., :1]).permute(0, 3, 1, 2) / 255.0], 1), 1
    )
    assert np.allclose(probs, expected.numpy(), atol=1e-6)
    assert messages == ["CUDA out of memory: batch size halved to 4", "CUDA out of memory: batch size halved to 2"]


def test_run_hands_each_tile_to_the_merger_at_its_position_and_reraises_merge_errors():
    values = {}

    class Recorder:
        def add(self, value, x, y):
            values[(x, y)] = value

    source = [([(0, 0), (5, 7)], np.zeros((2, 4, 4, 3), np.uint8)), ([(9, 1)], np.full((1, 4, 4, 3), 255, np.uint8))]
    bundle = ModelBundle(torch.nn.Conv2d(3, 2, 1), {"input_normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3}})
    runner = Runner(bundle, "cpu", 4, outputs=lambda out: out[:, :1] * 0 + out.new_tensor(1.0))
    spent = run(source, runner, Recorder())
    assert sorted(values) == [(0, 0), (5, 7), (9, 1)] and values[(9, 1)].shape == (1, 4, 4)
    assert set(spent) == {"read_wait", "model", "merge"}

    class Failing:
        def add(self, value, x, y):
            raise ValueError("merge failed")

    with pytest.raises(ValueError, match="merge failed"):
        run(source, runner, Failing())


def test_blender_takes_x_then_y():
    blender = Blender(1, 40, 50, TILE, OVERLAP)
    blender.add(np.full((1, TILE, TILE), 2.0, np.float32), 18, 0)
    out = blender.finish()
    assert out[0, 0, 18] == pytest.approx(2.0) and out[0, 0, 17] == 0 and out[0, 32, 18] == 0


def test_reader_count_follows_the_device_and_the_cores():
    assert (
        reader_count("cuda", cores=16) == 8
        and reader_count("cuda", cores=4) == 3
        and reader_count("cuda", cores=1) == 1
    )
    assert reader_count("cpu", cores=16) == 2 and reader_count("cpu", cores=1) == 1


def test_slide_batches_pair_positions_with_the_slides_own_tiles(slides_dir):
    from wsipipe.slide import open_slide

    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        coords = np.array([(0, 0), (240, 240), (1000, 500)])
        batches = list(slide_batches(coords, ["a", "b", "c"], tile=240, mpp=reader.mpp, batch_size=2, reader=reader))
        assert [p for p, _ in batches] == [["a", "b"], ["c"]]
        assert np.array_equal(batches[1][1][0], reader.read_region((1000, 500), 0, (240, 240)))


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide

    return write_synthetic_slide(
        tmp_path_factory.mktemp("jpeg") / "s.svs", SyntheticSpec(3000, 2600, tile_size=256, levels=2, seed=3)
    )


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mpp", "tile"), [(0.25, 256), (0.5, 128), (0.7, 96)])
def test_jpeg_tiles_decoded_on_the_device_equal_the_cpu_reader(jpeg_slide, device, mpp, tile):
    """nvJPEG (the CPU decoder stands in without CUDA) and the device's area resampling against
    the reader processes' pixels: within a grey level on average."""
    from wsipipe.inference.gpu_jpeg import JpegLevelTiles
    from wsipipe.slide import open_slide

    coords = np.array([(0, 0), (256, 512), (2900, 2500), (-64, 100), (1024, 1000)])
    with open_slide(jpeg_slide) as reader:
        tiles = JpegLevelTiles.open(reader, mpp, tile, device, coords)
        assert tiles is not None
        on_device = tiles.read(coords).cpu().numpy()
        expected = read_tiles(reader, coords, tile, mpp)
    difference = np.abs(on_device.astype(int) - expected)
    assert on_device.shape == expected.shape and difference.mean() < 1
    if device == "cpu":  # the same libjpeg-turbo decode: only the resampling's rounding differs
        assert difference.max() <= 1


def test_the_gpu_path_leaves_aperio_rgb_jpeg_and_unaligned_reads_to_the_readers(slides_dir, jpeg_slide):
    from wsipipe.inference.gpu_jpeg import JpegLevelTiles
    from wsipipe.slide import open_slide

    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        assert JpegLevelTiles.open(reader, reader.mpp, 256, "cpu", np.zeros((1, 2))) is None
    with open_slide(jpeg_slide) as reader:
        assert JpegLevelTiles.open(reader, 0.5, 128, "cpu", np.array([(1, 0)])) is None  # level 1: odd level-0 x
