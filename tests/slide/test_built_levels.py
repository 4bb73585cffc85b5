"""Built pyramid levels: the area average of level 0 read through independent libraries, built
once in bounded memory, reused, never half-written, and used by segment and tile end to end."""

from __future__ import annotations

import json
import tracemalloc

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.errors import InvalidInputError
from wsipipe.slide import built, open_slide
from wsipipe.slide.built import LEVELS_FOLDER, with_level_for
from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide


def _level0(path) -> np.ndarray:
    """Level 0 as RGB, read by the format's own library (not through wsipipe)."""
    if path.suffix == ".svs":
        with openslide.OpenSlide(str(path)) as slide:
            rgba = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
        assert (rgba[..., 3] == 255).all()
        return rgba[..., :3]
    return tifffile.imread(path)


def _area_average(level0: np.ndarray, x: int, y: int, size: tuple[int, int], downsample: float) -> np.ndarray:
    """``size`` pixels at ``downsample`` from level-0 (x, y): cv2.INTER_AREA of the level-0 region, white beyond it."""
    width, height = round(size[0] * downsample), round(size[1] * downsample)
    region = np.full((height, width, 3), 255, np.uint8)
    part = level0[max(y, 0) : y + height, max(x, 0) : x + width]
    region[max(-y, 0) : max(-y, 0) + part.shape[0], max(-x, 0) : max(-x, 0) + part.shape[1]] = part
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize(("name", "mpp"), [("ome_tiff", 12.0), ("cmu_small_svs", 24.0)])  # one level each
def test_built_level_is_the_area_average_of_level_0(request, tmp_path, name, mpp):
    path = request.getfixturevalue(name)
    level0 = _level0(path)
    with open_slide(path) as reader:
        with pytest.raises(InvalidInputError, match="without building a coarser level"):
            reader.read_at_mpp((0, 0), (8, 8), mpp)  # no cache folder: refused
        levelled = with_level_for(reader, mpp, tmp_path)
        assert len(levelled.levels) == 2 and levelled.mpp == reader.mpp
        level = levelled.levels[1]
        downsample = mpp / reader.mpp
        assert level.downsample == pytest.approx(downsample)
        assert (level.width, level.height) == (-(-level0.shape[1] // downsample), -(-level0.shape[0] // downsample))
        whole = levelled.read_region((0, 0), 1, (level.width, level.height))
        expected = _area_average(level0, 0, 0, (level.width, level.height), downsample)
        assert np.abs(whole.astype(int) - expected).max() <= 2
        # Reads at the model's µm/px from where segment's tiles start (whole built pixels, rounded to level 0),
        # overhanging the slide's edges too. The reference starts up to half a level-0 pixel off the built
        # pixel's edge: at the slide's edge (tissue against white) that alone moves a pixel by up to 3.
        for kx, ky in [(-3, -2), (0, 0), (5, 7), (2, 3), (level.width - 6, level.height - 4)]:
            x, y = round(kx * downsample), round(ky * downsample)
            diff = np.abs(
                levelled.read_at_mpp((x, y), (10, 10), mpp).astype(int)
                - _area_average(level0, x, y, (10, 10), downsample)
            )
            assert diff.max() <= 3 and diff.mean() < 0.3, (kx, ky)


def test_a_rerun_and_other_readers_reuse_the_level(tmp_path, monkeypatch, cmu_small_svs, ome_tiff):
    path = ome_tiff
    with open_slide(path) as reader:
        first = with_level_for(reader, 12.0, tmp_path)
        pixels = first.read_at_mpp((-100, 50), (30, 30), 12.0)
        (stored,) = tmp_path.glob("*.zarr")
        modified = stored.stat().st_mtime_ns

        def no_second_build(*args):
            raise AssertionError("the level was built again")

        monkeypatch.setattr(built, "build_level", no_second_build)
        again = with_level_for(reader, 12.0, tmp_path)
        assert again.levels == first.levels
    with open_slide(path, levels_cache=tmp_path) as other:  # a reader process opens the slide so
        assert other.levels == first.levels
        assert np.array_equal(other.read_at_mpp((-100, 50), (30, 30), 12.0), pixels)
    assert stored.stat().st_mtime_ns == modified
    with open_slide(cmu_small_svs, levels_cache=tmp_path) as unrelated:
        assert len(unrelated.levels) == 1  # a level is found only by its own slide


def test_a_failed_build_leaves_no_level_behind(tmp_path, monkeypatch, cmu_small_svs):
    with open_slide(cmu_small_svs) as reader:
        calls = []

        def failing_read(*args, **kwargs):
            calls.append(args)
            if len(calls) > 2:
                raise OSError("disk gone")
            return type(reader).read_region(reader, *args, **kwargs)

        monkeypatch.setattr(reader, "read_region", failing_read)
        with pytest.raises(OSError, match="disk gone"):
            with_level_for(reader, 24.0, tmp_path / "levels")
    assert [p.name for p in (tmp_path / "levels").iterdir()] == [".wsipipe.lock"]


def test_impossible_scales_are_refused_before_anything_is_made(tmp_path, ome_tiff):
    with open_slide(ome_tiff) as reader:
        coarsest = reader.mpp * max(reader.dimensions) / 8  # the whole slide 8 px across
        message = (
            f"1000.0 µm/px is too coarse for this slide: at most {coarsest:.4g} can be read "
            "(the slide is then 8 px across)"
        )
        with pytest.raises(InvalidInputError) as refused:
            with_level_for(reader, 1000.0, tmp_path / "levels")
        assert str(refused.value) == message
        with pytest.raises(InvalidInputError, match="finer than the slide's level 0"):
            with_level_for(reader, 0.1, tmp_path / "levels")
        assert with_level_for(reader, 4.0, tmp_path / "levels") is reader  # resizing reaches 4 µm/px: nothing built
    assert not (tmp_path / "levels").exists()


@pytest.mark.slow
def test_building_a_level_of_a_20000_px_slide_keeps_memory_bounded(tmp_path):
    spec = SyntheticSpec(20_000, 20_000, mpp=0.25, levels=1, seed=3)
    path = write_synthetic_slide(tmp_path / "big.tif", spec)
    with open_slide(path) as reader:
        tracemalloc.start()
        try:
            levelled = with_level_for(reader, 12.0, tmp_path / "levels")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        full_image = spec.width * spec.height * 3  # 1.2 GB
        assert peak < 64e6 < full_image / 15, peak
        level = levelled.levels[1]
        assert (level.width, level.height) == (417, 417)
        x, y = round(200 * 48), round(150 * 48)
        expected = cv2.resize(reader.read_region((x, y), 0, (48 * 40, 48 * 30)), (40, 30), interpolation=cv2.INTER_AREA)
        assert np.abs(levelled.read_region((x, y), 1, (40, 30)).astype(int) - expected).max() <= 1


@pytest.mark.slow  # the bundled model and a reader process: ~15-25 s on a shared 2-core machine
def test_segment_on_a_single_level_ome_tiff(tmp_path, ome_tiff):
    """The bundled model (12 µm/px) on a slide whose only level is 0.227 µm/px; the reader process
    reads the built level too."""
    out = tmp_path / "out"
    args = ["segment", str(ome_tiff), "-o", str(out), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_tiles"] >= 1 and report["tissue_area_mm2"] > 0 and report["timings_s"]["level"] > 0
    (level,) = (out / LEVELS_FOLDER).glob("*.zarr")
    modified = level.stat().st_mtime_ns
    result = CliRunner().invoke(app, [*args, "--workers", "0"])  # a rerun uses the level it finds
    assert result.exit_code == 0, result.output
    assert level.stat().st_mtime_ns == modified


def test_tile_on_a_single_level_ome_tiff(tmp_path, ome_tiff):
    path = ome_tiff
    store = tmp_path / "tiles.zarr"
    result = CliRunner().invoke(
        app,
        [
            "tile",
            str(path),
            "-o",
            str(store),
            "--mpp",
            "12",
            "--tile-size",
            "8",
            "--tissue-threshold",
            "0",
            "--workers",
            "2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / LEVELS_FOLDER).glob("*.zarr"))) == 1  # beside the store
    from wsipipe.store import open_tile_store

    tiles = open_tile_store(store)
    level0 = _level0(path)
    downsample = 12.0 / open_slide(path).mpp
    coords, pixels = np.asarray(tiles.coords[:]), np.asarray(tiles.tiles[:])
    assert len(coords) == 9  # 21 x 21 px at 12 µm/px: 3 x 3 tiles of 8
    for (x, y), tile in zip(coords.tolist(), pixels):
        assert np.abs(tile.astype(int) - _area_average(level0, x, y, (8, 8), downsample)).max() <= 2


@pytest.mark.slow  # a Dask worker running the bundled model: ~30 s
def test_batch_segment_over_a_folder_with_a_single_level_ome_tiff(tmp_path, ome_tiff):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / ome_tiff.name).symlink_to(ome_tiff)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["batch", str(archive), "-o", str(out), "--job", "segment", "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (report,) = out.glob("*/report.json")
    assert json.loads(report.read_text())["n_tiles"] >= 1
    assert len(list(report.parent.glob(f"{LEVELS_FOLDER}/*.zarr"))) == 1
