import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wsipipe.grid import grid_coords
from wsipipe.inference import Blender, predict_image, predict_tiled
from wsipipe.inference.sliding import blend_window
from wsipipe.models.io import ModelBundle


def _tiny_net() -> nn.Module:
    """Three 3x3 convs: receptive field 7 px, so a pixel 3+ px inside a tile sees no padding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1),
    ).eval()


@pytest.fixture(scope="module")
def lung_crop(lung_dir) -> np.ndarray:
    image = np.array(Image.open(lung_dir / "images" / "lung_01.png").convert("RGB"))
    return image[200:501, 300:563]  # 301 x 263: not a multiple of anything


def _tiled(net, image, overlap):
    """``predict_tiled`` of a net taking [0, 1] inputs, 64 px tiles, batches of 4."""
    bundle = ModelBundle(
        net, {"classes": ["a", "b"], "tile_size": 64, "input_normalisation": {"mean": [0] * 3, "std": [1] * 3}}
    )
    return predict_tiled(bundle, image, overlap, batch_size=4)


def _whole_image_probs(net, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return torch.softmax(net(x), 1)[0].numpy()


def test_blender_normalises_to_the_tile_values():
    blender = Blender(1, 100, 100, 64, 16)
    for x, y in [(0, 0), (36, 0), (0, 36), (36, 36)]:
        blender.add(np.full((1, 64, 64), 3.0, np.float32), x, y)
    np.testing.assert_allclose(blender.finish(), 3.0, rtol=1e-6)
    assert blend_window(64, 16).min() > 0 and blend_window(64, 16)[16:48, 16:48].min() == 1


def test_blended_equals_whole_image_forward_and_has_no_seams(lung_crop):
    net = _tiny_net()
    whole = _whole_image_probs(net, lung_crop)
    blended = _tiled(net, lung_crop, overlap=32)
    assert blended.shape == whole.shape
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(blended[inner] - whole[inner]).max() < 0.01

    # seams: differences between neighbouring columns at tile borders vs everywhere
    def seam_ratio(probs, borders):
        diffs = np.abs(np.diff(probs[1], axis=1)).mean(axis=0)
        return diffs[borders].mean() / diffs.mean()

    blended_borders = [x + 63 for x in grid_coords((263, 301), 64, 32, 1.0)[:, 0] if 0 < x + 63 < 262]
    assert seam_ratio(blended, sorted(set(blended_borders))) < 1.2
    # control: a mosaic of non-overlapping tiles does show its seams to the same measure
    mosaic = _tiled(net, lung_crop, overlap=0)
    mosaic_borders = [x + 63 for x in grid_coords((263, 301), 64, 0, 1.0)[:, 0] if x + 63 < 262]
    assert seam_ratio(mosaic, sorted(set(mosaic_borders))) > 1.5


def test_predict_image_resizes_to_model_scale_and_back(lung_crop):
    bundle = ModelBundle(
        _tiny_net(),
        {"classes": ["a", "b"], "mpp": 2.0, "tile_size": 64, "input_normalisation": {"mean": [0] * 3, "std": [1] * 3}},
    )
    probs = predict_image(bundle, lung_crop, mpp_of_image=1.0, overlap=16, batch_size=4, device="cpu")
    assert probs.shape == (2,) + lung_crop.shape[:2]
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)
    half = np.array(Image.fromarray(lung_crop).resize((132, 151), Image.BILINEAR))
    direct = _whole_image_probs(bundle.model, half)
    # the same picture at the model's scale: compare the centre after upscaling
    assert np.abs(probs[1, 150, 130] - direct[1, 75, 65]) < 0.1


def test_beyond_the_image_edge_is_white_as_beyond_a_slide_edge(lung_crop):
    """The border pixels' context is white glass, as a slide reads beyond its edge (what segment sees)."""
    net = _tiny_net()
    with torch.no_grad():
        net[-1].weight *= 20  # confident outputs, so that what the border sees shows
    margin = 16  # half the overlap: the padding predict_tiled adds
    on_glass = np.pad(lung_crop, ((margin, margin), (margin, margin), (0, 0)), constant_values=255)
    expected = _whole_image_probs(net, on_glass)[:, margin:-margin, margin:-margin]
    blended = _tiled(net, lung_crop, overlap=2 * margin)
    edge = np.zeros(lung_crop.shape[:2], bool)
    edge[:3], edge[-3:], edge[:, :3], edge[:, -3:] = True, True, True, True  # within the receptive field of the edge
    assert np.abs(blended[:, edge] - expected[:, edge]).max() < 0.01
    mirrored = _whole_image_probs(net, np.pad(lung_crop, ((margin, margin), (margin, margin), (0, 0)), mode="reflect"))
    assert (
        np.abs(blended[:, edge] - mirrored[:, margin:-margin, margin:-margin][:, edge]).max() > 0.05
    )  # it is not mirrored
