"""``run_qc``: a slide's quality control from its thumbnail plus sampled tiles at 10-20x.

Everything but focus works on the tissue thumbnail (``wsipipe.tissue``'s, about 4 µm/px, so its
masks line up with the tissue masks of tile and segment); focus needs the slide's own pixels and
reads at most ``FOCUS_MAX_TILES`` tiles of 128 px at twice the slide's µm/px (at most 1 µm/px) over
the tissue. Deterministic: no training, no random sampling beyond the seeded stain estimate.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from wsipipe.qc import detectors as d
from wsipipe.slide.base import SlideReader

#: Artefact masks, in the order they are drawn (later ones on top) and reported.
ARTEFACTS = ("out_of_focus", "fold", "over_exposed", "under_exposed", "bubble", "pen")
#: µm/px assumed for level 0 when the slide records none (as ``wsipipe.tissue`` does).
ASSUMED_MPP = 0.25
#: Below this tissue area (mm²) a slide is unusable: nothing to analyse.
MIN_TISSUE_MM2 = 0.01
#: Below this share of usable tissue (of tissue and artefacts together) a slide is unusable.
MIN_USABLE_FRACTION = 0.5
#: Focus tiles read at once from a reader that several threads may share (decoding releases the GIL).
FOCUS_READ_THREADS = 4
#: Stain tiles pooled for the H&E estimate (a spread subset of the focus tiles).
STAIN_TILES = 64

_EXCITATION = re.compile(r"ExcitationWave[Ll]ength=(\d+)")
_CHANNEL_NAME = re.compile(r";Name=([^\r;]*)")
_OME_FLUORESCENCE = re.compile(r'IlluminationType="(?:Epi)?[Ff]luorescence"')


@dataclass
class QCResult:
    """Masks (uint8, 1 = flagged) on the thumbnail grid, and the figures qc.json holds."""

    thumbnail: np.ndarray
    tissue: np.ndarray
    masks: dict[str, np.ndarray]
    usable: np.ndarray
    downsample: float  # level-0 pixels per mask pixel
    mask_mpp: float | None  # µm/px of the masks (None when the slide records no µm/px)
    summary: dict = field(default_factory=dict)


def metadata_fluorescence(properties: dict) -> str | None:
    """Why the slide's metadata says fluorescence (an excitation wavelength, a fluorescence
    illumination), or None when it says nothing of the kind."""
    for key, value in sorted(properties.items()):
        text = str(value)
        key = re.split(r"[\r\n]", key)[0]  # NDPI's shading record comes as one key with its first line
        excitation = _EXCITATION.search(text)
        if excitation and int(excitation.group(1)) > 0:
            name = _CHANNEL_NAME.search(text)
            channel = f" (channel {name.group(1).strip()})" if name else ""
            return f"metadata {key!r} records an excitation wavelength of {excitation.group(1)} nm{channel}"
        if _OME_FLUORESCENCE.search(text):
            return f"metadata {key!r} records fluorescence illumination"
    return None


def judge_brightfield(properties: dict, thumbnail: np.ndarray) -> dict:
    """``brightfield`` true/false with the reason, from the metadata and from the pixels."""
    from_metadata = metadata_fluorescence(properties)
    dark, level = d.dark_background(thumbnail)
    reasons = []
    if from_metadata:
        reasons.append(from_metadata)
    if dark:
        reasons.append(
            f"dark background: {d.DARK_BACKGROUND_PERCENTILE:g}th percentile luminance {level:.0f} "
            f"< {d.DARK_BACKGROUND_LUMINANCE}"
        )
    value = not reasons
    reason = (
        "; ".join(reasons)
        if reasons
        else (
            f"bright background ({d.DARK_BACKGROUND_PERCENTILE:g}th percentile luminance {level:.0f}) and no "
            "fluorescence in the metadata"
        )
    )
    return {"value": value, "reason": reason, "metadata": from_metadata, "background_luminance": level}


def _glass_brightness(thumbnail: np.ndarray, tissue: np.ndarray) -> float | None:
    """The slide glass's brightest channel, median plus three median absolute deviations (the top
    of its noise), or None without glass. Robust to over-exposed glass under half of it."""
    glass = (tissue == 0) & (thumbnail.min(axis=2) > 200)
    if np.count_nonzero(glass) < 16:
        return None
    brightest = thumbnail.max(axis=2)[glass].astype(np.float32)
    median = float(np.median(brightest))
    return median + 3 * float(np.median(np.abs(brightest - median)))


def _background_brightness(thumbnail: np.ndarray, tissue: np.ndarray) -> float | None:
    """The median brightest channel off the tissue (glass, dim or not), or None without any."""
    background = tissue == 0
    if np.count_nonzero(background) < 16:
        return None
    return float(np.median(thumbnail.max(axis=2)[background]))


class _TileReader:
    """Tiles of a given side in µm at ``focus_mpp`` of the slide's µm/px, area-averaged from level
    0: pyramid levels are made by each scanner's own filter (JPEG 2000's wavelet levels are
    smoother than an average), which would move the focus measure. Unlike
    ``SlideReader.read_at_mpp`` it also reads a slide without µm/px (at the assumed µm/px)."""

    def __init__(self, reader: SlideReader, base_mpp: float):
        self.reader = reader
        self.base_mpp = base_mpp
        self.mpp = d.focus_mpp(base_mpp)
        self.threads = FOCUS_READ_THREADS if reader.thread_safe else 1
        self.stored_tile = _stored_tile_side(reader.properties)
        #: Wall-clock seconds spent reading: reads run in threads beside the focus measure, so the
        #: focus pass sets it, its wall time times the threads' share of time spent reading.
        self.seconds = 0.0

    def read(self, centre_x: float, centre_y: float, side_um: float, room: float = 0.0) -> np.ndarray:
        """The tile centred on (``centre_x``, ``centre_y``) in level-0 pixels, moved by up to
        ``room`` of them to lie within one of the slide's stored tiles (one decode, not four)."""
        size = max(8, round(side_um / self.mpp))
        source = max(1, round(side_um / self.base_mpp))  # at most 2 x size: focus_mpp <= 2 x base
        x0, y0 = round(centre_x - source / 2), round(centre_y - source / 2)
        if self.stored_tile and source <= self.stored_tile:
            x0, y0 = (_within_stored_tile(start, source, self.stored_tile, room) for start in (x0, y0))
        region = self.reader.read_region((max(0, x0), max(0, y0)), 0, (source, source))
        if source != size:
            region = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
        return region


def _stored_tile_side(properties: dict) -> int | None:
    """The side of level 0's stored tiles when the slide states it and they are square."""
    sides = {
        key.rsplit(".", 1)[-1]: value
        for key, value in properties.items()
        if key.endswith(("level[0].tile-width", "level[0].tile-height"))
    }
    try:
        width, height = int(sides["tile-width"]), int(sides["tile-height"])
    except (KeyError, ValueError):
        return None
    return width if width == height and width > 0 else None


def _within_stored_tile(start: int, length: int, tile: int, room: float) -> int:
    """``start`` moved (by at most ``room``) so that [start, start + length) is in one stored tile."""
    first = (start + length // 2) // tile * tile  # the stored tile holding the centre
    moved = min(max(start, first), first + tile - length)
    return moved if abs(moved - start) <= room else start


def _focus(tiles: _TileReader, tissue: np.ndarray, thumb_mpp: float, downsample: float, exclude: np.ndarray):
    """Focus grid over the tissue: the out-of-focus mask, figures, and tissue tiles for the stain."""
    tissue_um2 = float(np.count_nonzero(tissue)) * thumb_mpp**2
    cell_um = max(d.FOCUS_MIN_CELL_UM, math.sqrt(tissue_um2 / d.FOCUS_MAX_TILES))
    cell = max(1, math.ceil(cell_um / thumb_mpp - 1e-6))  # at most FOCUS_MAX_TILES cells; no float dust
    side_um = min(d.FOCUS_TILE_PX * tiles.mpp, cell * thumb_mpp)
    height, width = tissue.shape
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    flagged = np.zeros((rows, cols), np.uint8)
    cells = []
    for r in range(rows):
        for c in range(cols):
            block = tissue[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            if block.mean() >= d.FOCUS_MIN_TISSUE:
                cells.append(
                    (r, c, (c * cell + block.shape[1] / 2) * downsample, (r * cell + block.shape[0] / 2) * downsample)
                )

    room = max(0.0, (cell * thumb_mpp - side_um) / 2 / tiles.base_mpp)  # level-0 px the tile may move in its cell

    def measure(cell_centre):
        started = time.perf_counter()
        tile = tiles.read(cell_centre[2], cell_centre[3], side_um, room)
        read = time.perf_counter() - started
        return tile, d.focus_ratio(tile), read, time.perf_counter() - started

    ratios, stain_tiles = [], []
    reading = busy = 0.0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=tiles.threads) as pool:  # map keeps the cells' order
        for (r, c, _, _), (tile, ratio, read, spent) in zip(cells, pool.map(measure, cells)):
            reading, busy = reading + read, busy + spent
            ratios.append(ratio)
            flagged[r, c] = ratio < d.FOCUS_RATIO_THRESHOLD
            if not exclude[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].any() and not flagged[r, c]:
                stain_tiles.append(tile)
    tiles.seconds = (time.perf_counter() - started) * reading / busy if busy else 0.0
    mask = np.repeat(np.repeat(flagged, cell, axis=0), cell, axis=1)[:height, :width] & tissue
    values = np.asarray(ratios, np.float64)
    figures = {
        "tiles": len(ratios),
        "out_of_focus_tiles": int(flagged.sum()),
        "cell_um": cell * thumb_mpp,
        "tile_um": side_um,
        "mpp": tiles.mpp,
        "ratio_median": float(np.median(values)) if len(values) else None,
        "ratio_p10": float(np.percentile(values, 10)) if len(values) else None,
        "ratio_min": float(values.min()) if len(values) else None,
    }
    return mask.astype(np.uint8), figures, stain_tiles


def _reference_stains() -> np.ndarray:
    """The built-in Macenko target's 2 x 3 H and E matrix (CMU-1-Small-Region, CC0)."""
    from wsipipe.stain import default_target

    return default_target("macenko").array("stain_matrix")


def _stain(tiles: list[np.ndarray]) -> dict:
    """Macenko H and E vectors of the pooled tiles, their angles to the built-in reference, and an
    outlier score (the larger angle over ``STAIN_ANGLE_TOLERANCE``: above 1 is unusual)."""
    from wsipipe.errors import StainError
    from wsipipe.stain import MacenkoNormalizer, StainWarning

    out: dict[str, Any] = {
        "method": "macenko",
        "reference": "built-in target (CMU-1-Small-Region, CC0)",
        "h_vector": None,
        "e_vector": None,
        "h_angle_deg": None,
        "e_angle_deg": None,
        "outlier_score": None,
        "looks_like_he": None,
        "error": None,
    }
    if not tiles:
        out["error"] = "no sharp tissue tiles to estimate the stain from"
        return out
    step = max(1, len(tiles) // STAIN_TILES)
    pooled = np.stack(tiles[::step][:STAIN_TILES])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StainWarning)
            params = MacenkoNormalizer("cpu", seed=0).estimate(pooled)
    except StainError as exc:
        out["error"] = str(exc)
        return out
    matrix = params.array("stain_matrix")
    h_angle, e_angle = d.stain_angles(matrix, _reference_stains())
    out.update(
        h_vector=[round(float(v), 4) for v in matrix[0]],
        e_vector=[round(float(v), 4) for v in matrix[1]],
        h_angle_deg=round(h_angle, 2),
        e_angle_deg=round(e_angle, 2),
        outlier_score=round(max(h_angle, e_angle) / d.STAIN_ANGLE_TOLERANCE, 3),
        looks_like_he=params.looks_like_he,
    )
    return out


def _artefacts(thumbnail: np.ndarray, mpp: float, tissue: np.ndarray, tiles: _TileReader, downsample: float):
    """Every artefact mask (by name) and the figures that come with them."""
    over, under = d.detect_exposure(
        thumbnail, mpp, tissue, _glass_brightness(thumbnail, tissue), _background_brightness(thumbnail, tissue)
    )
    pen, pen_colours = d.detect_pen(thumbnail, mpp, tissue, _reference_stains(), under)
    bubble = d.detect_dark_debris(thumbnail, mpp, pen)
    fold, tissue_density = d.detect_fold(thumbnail, mpp, tissue, pen | bubble | under)
    # "Ink" over most of the tissue is the stain itself off H&E's gamut (DAB, special stains): the
    # stain estimate then sees it, and the verdict names the stain rather than the pen.
    stain_is_off_gamut = np.count_nonzero(pen & tissue) > 0.5 * np.count_nonzero(tissue)
    not_for_stain = bubble | fold if stain_is_off_gamut else bubble | fold | pen
    blur, focus, stain_tiles = _focus(tiles, tissue, mpp, downsample, not_for_stain)
    masks = {
        "out_of_focus": blur,
        "fold": fold,
        "over_exposed": over,
        "under_exposed": under,
        "bubble": bubble,
        "pen": pen,
    }
    figures = {
        "pen_colours": pen_colours,
        "focus": focus,
        "fold_reference_od": tissue_density,
        "stain": _stain(stain_tiles),
    }
    return masks, figures


def _verdict(brightfield: dict, stain: dict, tissue_mm2: float, usable_fraction: float | None) -> tuple[bool, str, str]:
    """(usable, the rule that decided, why): the first rule that fails, else all passed."""
    if not brightfield["value"]:
        return False, "brightfield", f"not brightfield: {brightfield['reason']}"
    if stain["looks_like_he"] is False:
        return False, "he_stain", "the stain vectors are not haematoxylin and eosin"
    if tissue_mm2 < MIN_TISSUE_MM2:
        return False, "min_tissue_mm2", f"tissue {tissue_mm2:.3f} mm² < {MIN_TISSUE_MM2} mm²"
    if usable_fraction is None or usable_fraction < MIN_USABLE_FRACTION:
        return False, "min_usable_fraction", f"usable tissue {usable_fraction or 0:.1%} < {MIN_USABLE_FRACTION:.0%}"
    return True, "all_passed", f"usable tissue {usable_fraction:.1%} >= {MIN_USABLE_FRACTION:.0%}, brightfield H&E"


def run_qc(reader: SlideReader) -> QCResult:
    """Quality control of an open slide: artefact masks, usable tissue, verdict and figures."""
    from wsipipe import __version__
    from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample

    started = time.perf_counter()
    downsample = thumbnail_downsample(reader)
    thumbnail = read_thumbnail(reader, downsample)
    thumbnail_s = time.perf_counter() - started
    slide_mpp = reader.mpp_x
    mpp_assumed = slide_mpp is None
    base_mpp = ASSUMED_MPP if slide_mpp is None else float(slide_mpp)
    thumb_mpp = base_mpp * downsample
    brightfield = judge_brightfield(reader.properties, thumbnail)

    tissue = detect_tissue(thumbnail, thumb_mpp)
    tiles = _TileReader(reader, base_mpp)
    if brightfield["value"]:
        masks, figures = _artefacts(thumbnail, thumb_mpp, tissue, tiles, downsample)
    else:  # H&E artefacts mean nothing on a dark background: the verdict says why
        masks = {name: np.zeros_like(tissue) for name in ARTEFACTS}
        figures = {
            "pen_colours": None,
            "focus": None,
            "fold_reference_od": None,
            "stain": {**_stain([]), "error": "not brightfield"},
        }
    stain = figures["stain"]
    flagged = np.zeros_like(tissue)
    for mask in masks.values():
        flagged |= mask
    usable = (tissue & (1 - flagged)).astype(np.uint8)
    region = tissue | flagged

    pixel_mm2 = thumb_mpp * (base_mpp if mpp_assumed else float(reader.mpp_y or base_mpp)) * downsample / 1e6
    region_px = int(np.count_nonzero(region))
    tissue_mm2 = np.count_nonzero(tissue) * pixel_mm2
    usable_fraction = np.count_nonzero(usable) / region_px if region_px else None
    ok, rule, why = _verdict(brightfield, stain, tissue_mm2, usable_fraction)
    width, height = reader.dimensions
    summary = {
        "slide": str(reader.path),
        "width": width,
        "height": height,
        "mpp": None if mpp_assumed else base_mpp,
        "mpp_assumed": ASSUMED_MPP if mpp_assumed else None,
        "usable": ok,
        "verdict_rule": rule,
        "verdict_reason": why,
        "brightfield": brightfield,
        "tissue_area_mm2": tissue_mm2,
        "usable_area_mm2": np.count_nonzero(usable) * pixel_mm2,
        "usable_fraction": usable_fraction,
        "artefacts": {
            name: {
                "fraction": np.count_nonzero(masks[name] & region) / region_px if region_px else 0.0,
                "area_mm2": np.count_nonzero(masks[name]) * pixel_mm2,
            }
            for name in ARTEFACTS
        },
        **figures,
        "masks": {
            "path": "qc.zarr",
            "mpp": thumb_mpp,
            "downsample": downsample,
            "names": ["tissue", *ARTEFACTS, "usable"],
        },
        "thresholds": {
            **d.thresholds(),
            "min_tissue_mm2": MIN_TISSUE_MM2,
            "min_usable_fraction": MIN_USABLE_FRACTION,
            "assumed_mpp": ASSUMED_MPP,
        },
        "timings_s": {
            "thumbnail": thumbnail_s,
            "focus_tiles_read": tiles.seconds,
            "reading": thumbnail_s + tiles.seconds,
            "total": time.perf_counter() - started,
        },
        "wsipipe_version": __version__,
    }
    return QCResult(thumbnail, tissue, masks, usable, downsample, None if mpp_assumed else thumb_mpp, summary)


def _artefact_fraction(name: str) -> Callable[[dict], Any]:
    return lambda s: s["artefacts"][name]["fraction"]


#: Stable batch-summary columns: name -> how to get it from a qc.json summary.
COLUMNS: dict[str, Callable[[dict], Any]] = {
    "qc_usable": lambda s: s["usable"],
    "qc_rule": lambda s: s["verdict_rule"],
    "qc_brightfield": lambda s: s["brightfield"]["value"],
    "qc_tissue_mm2": lambda s: s["tissue_area_mm2"],
    "qc_usable_fraction": lambda s: s["usable_fraction"],
    **{f"qc_{name}": _artefact_fraction(name) for name in ARTEFACTS},
    "qc_stain_outlier": lambda s: s["stain"]["outlier_score"],
    "qc_focus_median": lambda s: (s["focus"] or {}).get("ratio_median"),
}


def qc_columns(summary: dict) -> dict:
    """The stable ``qc_*`` figures of a qc.json summary (for batch summaries)."""
    return {name: get(summary) for name, get in COLUMNS.items()}
