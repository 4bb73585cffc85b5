"""The slide-level path (``tile`` + ``normalize``: one stain estimate per slide) against the
whole-image fit and transform, on an image written as the whole slide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.slide import open_slide
from wsipipe.stain import get_normalizer
from wsipipe.store import open_tile_store

MPP = 0.5
TILE = 128


@pytest.fixture(scope="module")
def slide(tmp_path_factory, lung_dir):
    """lung_01 (1024 x 1024 real H&E with background) as a two-level pyramidal TIFF, lossless."""
    image = np.asarray(Image.open(lung_dir / "images" / "lung_01.png").convert("RGB"))
    path = tmp_path_factory.mktemp("slide") / "lung_01.tif"
    with tifffile.TiffWriter(path) as tif:
        for level in (image, np.asarray(Image.fromarray(image).resize((512, 512), Image.BILINEAR))):
            level_mpp = MPP * image.shape[0] / level.shape[0]
            tif.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                subfiletype=0 if level is image else 1,  # level 1: a reduced-resolution image
                resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                resolutionunit="CENTIMETER",
            )
    with open_slide(path) as reader:
        assert len(reader.levels) == 2 and reader.mpp == pytest.approx(MPP)
    return path, image


def _reassemble(store) -> np.ndarray:
    size = store.tile_size
    coords = store.coords[...]
    out = np.zeros((coords[:, 1].max() + size, coords[:, 0].max() + size, 3), np.uint8)
    for (x, y), tile in zip(coords, store.tiles[...]):
        out[y : y + size, x : x + size] = tile
    return out


@pytest.mark.parametrize("method", ["vahadane", "macenko", "reinhard"])
def test_tile_and_normalize_equal_the_whole_image_fit(slide, method, tmp_path, stain_dir):
    path, image = slide
    target = stain_dir / "warwick_target_p.png"
    tiles, out = tmp_path / "tiles.zarr", tmp_path / "normalised.zarr"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "tile",
            str(path),
            "-o",
            str(tiles),
            "--mpp",
            str(MPP),
            "--tile-size",
            str(TILE),
            "--tissue-threshold",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(_reassemble(open_tile_store(tiles)), image)  # the store is the whole slide
    result = runner.invoke(
        app,
        [
            "normalize",
            str(tiles),
            "-o",
            str(out),
            "--method",
            method,
            "--target",
            str(target),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output

    whole = get_normalizer(method).fit(np.asarray(Image.open(target).convert("RGB"))).transform(image)
    slide_level = _reassemble(open_tile_store(out))
    mad = np.abs(slide_level.astype(int) - whole.astype(int)).mean()
    assert mad <= 0.5
