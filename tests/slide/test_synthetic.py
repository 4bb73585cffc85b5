"""The synthetic slide generator: readable, right metadata, real pixels, deterministic, lean."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import tracemalloc

import cv2
import numpy as np
import openslide
import pytest
import tiffslide
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.slide import open_slide
from wsipipe.slide.synthetic import DEFAULT_SOURCE, SyntheticSpec, TileRenderer, load_source, write_synthetic_slide

SPEC = SyntheticSpec(3000, 2200, mpp=0.5, tile_size=256, levels=3, seed=7)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("synth") / "slide.tif", SPEC)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_opens_in_openslide_with_levels_and_mpp(slide):
    with openslide.OpenSlide(str(slide)) as osr:
        assert osr.level_dimensions == ((3000, 2200), (1500, 1100), (750, 550))
        assert osr.level_downsamples == (1.0, 2.0, 4.0)
        assert float(osr.properties["openslide.mpp-x"]) == 0.5
        assert float(osr.properties["openslide.mpp-y"]) == 0.5
        assert osr.properties["openslide.vendor"] == "aperio"
        assert "thumbnail" in osr.associated_images


def test_opens_in_tiffslide_with_levels_and_mpp(slide):
    with tiffslide.TiffSlide(slide) as tsr:
        assert tsr.level_dimensions == ((3000, 2200), (1500, 1100), (750, 550))
        assert float(tsr.properties["tiffslide.mpp-x"]) == 0.5


def test_both_backends_read_the_same_pixels(slide):
    with open_slide(slide, backend="openslide") as a, open_slide(slide, backend="tiffslide") as b:
        assert a.mpp == b.mpp == 0.5
        for level in range(3):
            np.testing.assert_array_equal(
                a.read_region((0, 0), level, (600, 500)), b.read_region((0, 0), level, (600, 500))
            )


def test_levels_show_the_same_slide(slide):
    """Level 1 is level 0 halved (up to JPEG error): a pyramid, not unrelated images."""
    with open_slide(slide, backend="openslide") as reader:
        full = reader.read_region((0, 0), 0, (3000, 2200)).astype(np.float32)
        half = reader.read_region((0, 0), 1, (1500, 1100)).astype(np.float32)
    reduced = cv2.resize(full, (1500, 1100), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced - half).mean() < 4.0
    assert np.abs(np.roll(reduced, 64, axis=1) - half).mean() > 10.0  # the check can fail


def test_has_tissue_and_white_glass(slide):
    with open_slide(slide) as reader:
        image = reader.read_region((0, 0), 2, (750, 550))
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = (saturation > 25).mean()
    assert 0.1 < tissue < 0.8
    glass = image[saturation < 8]
    assert glass.size and glass.mean() > 235


def test_tiles_come_from_the_source_image(slide):
    """A tissue tile's interior matches (by normalised correlation) a place in the source image."""
    renderer = TileRenderer(SPEC)
    tile = SPEC.tile_size
    full = [
        (tx, ty)
        for ty in range(SPEC.height // tile)
        for tx in range(SPEC.width // tile)
        if renderer.tissue.alpha(np.array([tx * tile, (tx + 1) * tile]), np.array([ty * tile, (ty + 1) * tile])).min()
        == 1
    ]
    assert full, "the test slide needs a tile fully inside tissue"
    tx, ty = full[0]
    with open_slide(slide) as reader:
        pixels = reader.read_region((tx * tile + 64, ty * tile + 64), 0, (128, 128))
    source = cv2.cvtColor(load_source(DEFAULT_SOURCE), cv2.COLOR_RGB2GRAY)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)

    def best_match(patch):
        grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        scores = []
        for k in range(4):
            for mirror in (False, True):
                template = np.ascontiguousarray(np.rot90(grey[:, ::-1] if mirror else grey, k))
                scores.append(cv2.matchTemplate(source, template, cv2.TM_CCOEFF_NORMED).max())
        return max(scores)

    assert best_match(pixels) > 0.9
    assert best_match(noise) < 0.5


def test_same_seed_same_file_other_seed_other_pixels(tmp_path):
    spec = SyntheticSpec(1200, 900, tile_size=256, seed=3)
    first = write_synthetic_slide(tmp_path / "a.tif", spec)
    second = write_synthetic_slide(tmp_path / "b.tif", spec)
    other = write_synthetic_slide(tmp_path / "c.tif", SyntheticSpec(1200, 900, tile_size=256, seed=4))
    assert _digest(first) == _digest(second)
    with open_slide(first) as a, open_slide(other) as c:
        assert not np.array_equal(a.read_region((0, 0), 0, (1200, 900)), c.read_region((0, 0), 0, (1200, 900)))


def test_memory_does_not_grow_with_size(tmp_path):
    """Peak traced memory for 2600 px and 10400 px slides (16x the pixels) is about the same."""
    peaks = []
    for side in (2600, 10400):
        tracemalloc.start()
        write_synthetic_slide(tmp_path / f"{side}.tif", SyntheticSpec(side, side, tile_size=512, seed=1))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        (tmp_path / f"{side}.tif").unlink()
    small, large = peaks
    print(f"peak traced memory {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB")
    assert large < small * 1.25 + 4 * 2**20, f"peak {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB"


def test_cli_writes_a_slide_and_refuses_bad_options(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.tif"
    result = runner.invoke(app, ["synth", str(out), "--width", "1000", "--height", "800", "--mpp", "0.3", "--quiet"])
    assert result.exit_code == 0, result.output
    with openslide.OpenSlide(str(out)) as osr:
        assert osr.dimensions == (1000, 800) and float(osr.properties["openslide.mpp-x"]) == 0.3
    again = runner.invoke(app, ["synth", str(out), "--width", "1000", "--height", "800"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(
        app, ["synth", str(tmp_path / "x.tif"), "--width", "100", "--height", "100", "--tile-size", "100"]
    )
    assert bad.exit_code == 2 and "--tile-size" in bad.output
    missing = runner.invoke(
        app,
        ["synth", str(tmp_path / "y.tif"), "--width", "100", "--height", "100", "--source", str(tmp_path / "no.png")],
    )
    assert missing.exit_code == 2 and "no.png" in missing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no y.tif, no temporary left


def test_cli_subprocess_with_extra_source(tmp_path, stain_dir):
    out = tmp_path / "lung.tif"
    source = stain_dir / "tiatoolbox_target.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "synth",
            str(out),
            "--width",
            "800",
            "--height",
            "600",
            "--source",
            str(source),
            "--levels",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with tiffslide.TiffSlide(out) as tsr:
        assert tsr.level_dimensions == ((800, 600), (400, 300))


def test_ndpi_variant_is_read_by_openslide_as_hamamatsu(tmp_path, slide):
    """Same seed and size as the TIFF fixture: openslide's NDPI reader shows the same slide."""
    ndpi = write_synthetic_slide(
        tmp_path / "slide.ndpi", SyntheticSpec(3072, 2208, mpp=0.5, tile_size=256, levels=3, seed=7), ndpi=True
    )
    tiff = write_synthetic_slide(
        tmp_path / "slide.tif", SyntheticSpec(3072, 2208, mpp=0.5, tile_size=256, levels=3, seed=7)
    )
    with openslide.OpenSlide(str(ndpi)) as osr, openslide.OpenSlide(str(tiff)) as ref:
        assert osr.properties["openslide.vendor"] == "hamamatsu"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
        assert float(osr.properties["openslide.objective-power"]) == 20
        assert osr.level_dimensions[:3] == ((3072, 2208), (1536, 1104), (768, 552))
        assert osr.properties["openslide.level[0].tile-width"] == "256"  # restart intervals found
        for level in range(3):
            width, height = osr.level_dimensions[level]
            got = np.asarray(osr.read_region((0, 0), level, (width, height)))[..., :3].astype(int)
            want = np.asarray(ref.read_region((0, 0), level, (width, height)))[..., :3].astype(int)
            assert np.abs(got - want).mean() < 2.0  # 4:2:2 vs 4:2:0 JPEG of the same pixels


def test_ndpi_refuses_sizes_one_jpeg_per_level_cannot_hold(tmp_path):
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "x.ndpi"), "--width", "3000", "--height", "2000", "--levels", "2", "--ndpi"]
    )
    assert result.exit_code == 2 and "multiple of 1024" in result.output and "3072" in result.output


def test_the_next_synth_of_a_target_removes_what_a_killed_one_left(tmp_path):
    out = tmp_path / "k.tif"
    argv = [sys.executable, "-m", "wsipipe", "synth", str(out), "--width", "30000", "--height", "30000", "--quiet"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.suffix == ".tmp" for p in tmp_path.iterdir()):
            time.sleep(0.02)
        time.sleep(0.5)  # some tiles written
    finally:
        process.kill()  # kill -9 mid-write
        process.wait()
    (left,) = [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert left.name.startswith(".k.tif.") and left.stat().st_size > 0
    kept = [".k.tif.0123abcd.tmp", ".other.tif.wsipipe-89abcdef.tmp"]  # a user's own file; another output's
    for name in kept:
        (tmp_path / name).write_text("not this run's")
    result = CliRunner().invoke(app, ["synth", str(out), "--width", "300", "--height", "200", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "k.tif"])
