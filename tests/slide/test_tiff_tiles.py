"""The direct tile decoder returns exactly the backend's own pixels, wherever it is used."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from wsipipe.slide import open_slide
from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide
from wsipipe.slide.tiff_tiles import ENV_SWITCH, TiledPages


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "small.tif"
    # 2600 x 1900 is not a multiple of the tile size: every level has partial edge tiles.
    write_synthetic_slide(path, SyntheticSpec(2600, 1900, tile_size=256, levels=3, seed=5))
    return path


def _openslide_reference(path, x, y, level, width, height):
    """openslide's own read_region, composited on white by hand (alpha is all-or-nothing here)."""
    with openslide.OpenSlide(str(path)) as slide:
        rgba = np.asarray(slide.read_region((x, y), level, (width, height)))
    assert set(np.unique(rgba[..., 3])) <= {0, 255}
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def _regions(reader, level):
    """Tile-aligned, unaligned, multi-tile, across the right/bottom edge, before the origin, outside."""
    lvl = reader.levels[level]
    tile = reader._direct_tiles._pages[level].tilewidth
    at = [
        (0, 0, tile, tile),
        (tile, tile, tile, tile),
        (37, 91, 2 * tile + 45, tile + 77),
        (lvl.width - 100, lvl.height - 50, 300, 200),
        (-20, -30, 100, 90),
        (lvl.width + 10, 0, 50, 50),
    ]
    # Level coordinates -> level-0 coordinates that map back to whole level pixels.
    return [(round(lx * lvl.downsample), round(ly * lvl.downsample), w, h) for lx, ly, w, h in at]


# (slide, levels the fast path must serve): CMU is JPEG, TCGA is Aperio JPEG 2000 (RGB).
OPENSLIDE_CASES = [("cmu_small_svs", [0]), ("jp2k_svs", [0, 1]), ("synthetic_slide", [0, 1, 2])]


@pytest.mark.parametrize(("name", "levels"), OPENSLIDE_CASES)
def test_openslide_backend_equals_openslide(name, levels, request):
    path = request.getfixturevalue(name)
    with open_slide(path, backend="openslide") as reader:
        assert [i for i in range(len(reader.levels)) if reader._direct_tiles.covers(i)] == levels
        for level in levels:
            for x, y, w, h in _regions(reader, level):
                if not (x / reader.levels[level].downsample).is_integer():
                    continue  # TCGA level 1 has a non-integer downsample; covered below
                expected = _openslide_reference(path, x, y, level, w, h)
                np.testing.assert_array_equal(reader.read_region((x, y), level, (w, h)), expected)


@pytest.mark.parametrize(("name", "levels"), [*OPENSLIDE_CASES, ("ome_tiff", [0])])
def test_tiffslide_backend_equals_tiffslide_and_openslide(name, levels, request, monkeypatch):
    path = request.getfixturevalue(name)
    monkeypatch.setenv(ENV_SWITCH, "0")
    plain = open_slide(path, backend="tiffslide")
    assert plain._direct_tiles is None
    monkeypatch.delenv(ENV_SWITCH)
    with open_slide(path, backend="tiffslide") as reader, plain:
        assert [i for i in range(len(reader.levels)) if reader._direct_tiles.covers(i)] == levels
        for level in levels:
            for x, y, w, h in _regions(reader, level):
                fast = reader.read_region((x, y), level, (w, h))
                np.testing.assert_array_equal(fast, plain.read_region((x, y), level, (w, h)))
                if name != "ome_tiff" and (x / reader.levels[level].downsample).is_integer():
                    np.testing.assert_array_equal(fast, _openslide_reference(path, x, y, level, w, h))


def test_fractional_level_position_is_left_to_openslide(jp2k_svs):
    """At a level-0 position that is not a whole level pixel openslide resamples; so do we."""
    path = jp2k_svs
    with open_slide(path, backend="openslide") as reader:
        assert reader._direct_tiles.covers(1)
        x, y = 1001, 777
        assert not (x / reader.levels[1].downsample).is_integer()
        with openslide.OpenSlide(str(path)) as slide:
            rgba = np.asarray(slide.read_region((x, y), 1, (300, 200)))
        assert (rgba[..., 3] == 255).all()
        np.testing.assert_array_equal(reader.read_region((x, y), 1, (300, 200)), rgba[..., :3])


def test_levels_map_to_pages_only_by_exact_size(synthetic_slide):
    with open_slide(synthetic_slide, backend="openslide") as reader:
        levels = list(reader.levels)
    pages = TiledPages.open(synthetic_slide, [levels[0], type(levels[0])(1299, 950, 2.0)])
    try:
        assert pages.covers(0) and not pages.covers(1)
    finally:
        pages.close()


def test_ndpi_is_read_by_the_backend(slides_dir):
    """NDPI levels are JPEG strips, not tiles: no fast path, with either backend."""
    path = next(slides_dir.glob("*.ndpi"))
    with open_slide(path, backend="openslide") as reader:
        assert reader._direct_tiles is None
    with open_slide(path, backend="tiffslide") as reader:
        assert reader._direct_tiles is None or not any(
            reader._direct_tiles.covers(i) for i in range(len(reader.levels))
        )


def test_switch_turns_the_fast_path_off(synthetic_slide, monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "0")
    with open_slide(synthetic_slide, backend="openslide") as reader:
        assert reader._direct_tiles is None


def test_corrupt_tile_is_a_clear_error(tmp_path, cmu_small_svs):
    """Garbage in one tile's bytes: a one-line SlideOpenError naming the file, not a codec trace."""
    import tifffile

    from wsipipe.errors import SlideOpenError

    source = cmu_small_svs
    broken = tmp_path / "corrupt.svs"
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[20], page.databytecounts[20]
        tile_w, across = page.tilewidth, -(-page.imagewidth // page.tilewidth)
    data[offset : offset + count] = bytes(count)  # no JPEG markers left
    broken.write_bytes(data)
    with open_slide(broken, backend="tiffslide") as reader:
        assert reader._direct_tiles.covers(0)
        x, y = (20 % across) * tile_w, (20 // across) * tile_w
        with pytest.raises(SlideOpenError, match="corrupt.svs: cannot read pixels"):
            reader.read_region((x, y), 0, (10, 10))
        with pytest.raises(SlideOpenError, match="corrupt.svs: cannot read pixels"):
            reader.read_region((x, y), 0, (tile_w, tile_w), out=np.empty((tile_w, tile_w, 3), np.uint8))


def _whole_tiles(reader, level):
    """Level-0 positions of the level's tiles that lie wholly inside the image, and the tile size."""
    page = reader._direct_tiles._pages[level]
    downsample = reader.levels[level].downsample
    positions = [
        (round(tx * downsample), round(ty * downsample))
        for ty in range(0, page.imagelength - page.tilelength + 1, page.tilelength)
        for tx in range(0, page.imagewidth - page.tilewidth + 1, page.tilewidth)
    ]
    return positions, (page.tilewidth, page.tilelength)


def _count_general_decodes(monkeypatch):
    """Counts the tiles the general path asks for (decoded through tifffile or cached), not in place."""
    calls = []
    general = TiledPages._decoded
    monkeypatch.setattr(
        TiledPages, "_decoded", lambda self, level, index: calls.append(index) or general(self, level, index)
    )
    return calls


# JPEG tiles in each colour-space case: Aperio RGB without JFIF (CMU), JFIF RGB (OME-TIFF), YCbCr (synthetic).
IN_PLACE_CASES = [
    ("cmu_small_svs", "openslide"),
    ("cmu_small_svs", "tiffslide"),
    ("synthetic_slide", "openslide"),
    ("synthetic_slide", "tiffslide"),
    ("ome_tiff", "tiffslide"),
]


@pytest.mark.parametrize(("name", "backend"), IN_PLACE_CASES)
def test_whole_jpeg_tiles_decoded_in_place_equal_the_backend(name, backend, request, monkeypatch):
    """Every whole tile of every JPEG level, read into a buffer, is decoded in place (no general
    decode) and equals openslide's read_region (tiffslide's for the OME-TIFF, which openslide
    does not read)."""
    path = request.getfixturevalue(name)
    monkeypatch.setenv(ENV_SWITCH, "0")
    plain = open_slide(path, backend=backend)
    monkeypatch.delenv(ENV_SWITCH)
    with open_slide(path, backend=backend) as reader, plain:
        general_decodes = _count_general_decodes(monkeypatch)  # opening decodes a pixel through it
        jpeg_levels = [i for i in range(len(reader.levels)) if i in reader._direct_tiles._jpeg_colorspaces]
        assert jpeg_levels
        for level in jpeg_levels:
            positions, (width, height) = _whole_tiles(reader, level)
            assert positions
            out = np.empty((height, width, 3), np.uint8)
            for x, y in positions:
                assert reader.read_region((x, y), level, (width, height), out=out) is out
                if backend == "openslide" or name == "ome_tiff":
                    expected = plain.read_region((x, y), level, (width, height))
                else:
                    expected = _openslide_reference(path, x, y, level, width, height)
                np.testing.assert_array_equal(out, expected)
        assert general_decodes == []


def test_other_reads_into_a_buffer_take_the_general_path(synthetic_slide, monkeypatch):
    """Edge tiles (padded in the file), unaligned or other-sized regions and non-contiguous
    buffers are decoded through tifffile and copied, with openslide's pixels."""
    with open_slide(synthetic_slide, backend="openslide") as reader:
        general_decodes = _count_general_decodes(monkeypatch)
        level, lvl = 1, reader.levels[1]
        tile = reader._direct_tiles._pages[level].tilewidth
        edge_x = (lvl.width // tile) * tile  # the last column of tiles is cut by the image edge
        cases = [
            (edge_x, 0, tile, tile, np.empty((tile, tile, 3), np.uint8)),
            (7, 0, tile, tile, np.empty((tile, tile, 3), np.uint8)),
            (0, 0, tile // 2, tile // 2, np.empty((tile // 2, tile // 2, 3), np.uint8)),
            (tile, tile, tile, tile, np.empty((tile, 2 * tile, 3), np.uint8)[:, ::2]),
        ]
        for lx, ly, w, h, out in cases:
            before = len(general_decodes)
            x, y = round(lx * lvl.downsample), round(ly * lvl.downsample)
            assert reader.read_region((x, y), level, (w, h), out=out) is out
            np.testing.assert_array_equal(out, _openslide_reference(synthetic_slide, x, y, level, w, h))
            assert len(general_decodes) > before


def test_reads_within_a_tile_decode_it_once_per_thread(synthetic_slide, monkeypatch):
    """Four quarter-tile reads decode their tile once; another thread decodes it for itself; the
    cache stays bounded."""
    import threading

    from wsipipe.slide.tiff_tiles import CACHED_TILES_PER_THREAD

    decoded = []
    decode = TiledPages._decode
    with open_slide(synthetic_slide, backend="openslide") as reader:
        monkeypatch.setattr(
            TiledPages, "_decode", lambda self, page, index: decoded.append(index) or decode(self, page, index)
        )
        tile = reader._direct_tiles._pages[0].tilewidth
        half = tile // 2
        quarters = [(x, y) for y in (0, half) for x in (0, half)]
        for x, y in quarters:
            np.testing.assert_array_equal(
                reader.read_region((x, y), 0, (half, half)), _openslide_reference(synthetic_slide, x, y, 0, half, half)
            )
        assert decoded == [0]
        other = threading.Thread(target=reader.read_region, args=((0, 0), 0, (half, half)))
        other.start()
        other.join()
        assert decoded == [0, 0]
        reader.read_region((0, 0), 0, ((CACHED_TILES_PER_THREAD + 2) * tile, tile))
        assert len(reader._direct_tiles._thread.tiles) == CACHED_TILES_PER_THREAD
