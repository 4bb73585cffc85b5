"""The artefact detectors: small functions on numpy RGB images whose sizes are given in µm.

Each takes an RGB uint8 image and its µm/px and returns a uint8 mask (1 = artefact) of the same
height and width, or a figure. Every size is physical (µm, µm²) and converted to pixels with the
image's own µm/px, so a detector behaves the same on a 20x and a 40x scan; every threshold is a
named constant with the reason for its value, and all of them are recorded in qc.json.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# --- focus ---------------------------------------------------------------------------------------
#: The focus measure works at twice the slide's own µm/px (a 40x scan at 0.5 µm/px, a 20x one at
#: 1 µm/px), never coarser than FOCUS_MAX_MPP (10x) nor finer than the slide. A blur of σ = 2 px at
#: level 0 is then σ >= 1 px where it is measured, whatever the magnification: halving keeps the
#: detail the optics resolve (a 40x objective resolves about 2 of its 0.25 µm pixels) and drops
#: JPEG's 8-px blocks and the sensor's noise. Read from the slide's own pixels (never the thumbnail).
FOCUS_PIXELS_PER_SAMPLE = 2.0
FOCUS_MAX_MPP = 1.0
#: Focus ratio (``focus_ratio``) below which a tile is out of focus. The ratio tends to 0.25 for an
#: image with no detail finer than 2 px (a smooth surface: the Laplacian of a quadratic quadruples
#: when the pixel doubles); on sharp H&E measured at twice its µm/px it is 0.50-1.0 (1st
#: percentiles of CMU-1, OS-1, TCGA, MoNuSeg, CPM-15 at 20x and 40x, the lung crops), and a blur of
#: σ = 1 px where it is measured (σ = 2 px at level 0) leaves 0.35-0.41.
FOCUS_RATIO_THRESHOLD = 0.45
#: Focus tiles' side in pixels at the focus µm/px (64 µm at 0.5 µm/px, 128 µm at 1 µm/px: a few
#: cells either way) and the smallest spacing of the focus grid (µm).
FOCUS_TILE_PX = 128
FOCUS_MIN_CELL_UM = 64.0
#: At most this many focus tiles per slide (the grid coarsens on large slides: seconds, not minutes).
FOCUS_MAX_TILES = 600
#: A grid cell is measured when this share of it is tissue.
FOCUS_MIN_TISSUE = 0.25

# --- pen ink -------------------------------------------------------------------------------------
#: H&E's gamut in CIE L*a*b* (hue angle in degrees, chroma): haematoxylin's blue-purple to eosin's
#: pink lie between hue -85° and +35°, and thin stained tissue seen at 4 µm/px stays below chroma
#: 65 (99th percentiles 35-62 on the 40 public H&E images of the shared data; only eosin-rich
#: torchstain_source reaches 78). Marker inks lie outside: green (hue 120-180°), blue and cyan
#: (below -85°, or as saturated as chroma 75-85 at blue-purple hues), red-orange (above +35°,
#: chroma about 80). The four ink colours are those pathologists mark slides with (blue, green,
#: black, red: Ali et al., "Ink removal from histopathology whole slide images by combining
#: classification, detection and image generation models", ISBI 2021).
HE_HUE_RANGE = (-85.0, 35.0)
HE_MAX_CHROMA = 65.0
#: Below this chroma a colour is grey: not ink of any hue (glass, faint tissue, JPEG noise).
INK_MIN_CHROMA = 20.0
#: Black ink: lightness and chroma below these (carbon black marker: L* about 10, chroma < 5;
#: haematoxylin-dense nuclei stay coloured, chroma > 25, at the same lightness).
BLACK_MAX_LIGHTNESS = 25.0
BLACK_MAX_CHROMA = 15.0
#: Ink over tissue by Beer-Lambert: its optical density adds to the stains', so ink over dense
#: tissue keeps its own colour in OD space even where its hue in L*a*b* falls among the stains'
#: (red ink over haematoxylin reads as eosin or blood). H&E's OD lies on a plane through the
#: origin (two stains), fitted to the slide's own tissue; a pixel further than INK_OFF_PLANE_OD
#: from it holds a third absorber. On clean H&E 99.9 % of tissue lies within 0.15 of the plane;
#: red, green and black marker ink over tissue lie 0.8-1.3 off it (blue ink, near haematoxylin,
#: only 0.3: it is found by its hue). An area that lost half the light (0.69 OD in every channel,
#: the under-exposure criterion) moves 0.3-0.4 off the plane, below the threshold.
INK_OFF_PLANE_OD = 0.5
#: Pixels whose channels sum to less OD than this carry too little stain to fit the plane with.
PLANE_MIN_OD = 0.3
#: Refits of the plane to the slide's tissue (``off_stain_plane``).
PLANE_FIT_ROUNDS = 3
#: A marker stroke is at least ~0.3 mm wide: ink regions smaller than this are not pen (they go
#: to dark debris when black).
PEN_MIN_AREA_UM2 = 40_000.0
#: Ink pixels are joined over gaps of about this size (µm) before their area is measured.
PEN_CLOSE_UM = 40.0

# --- fold, debris, exposure ------------------------------------------------------------------------
#: A fold is two layers of tissue: by Beer-Lambert its optical density is twice the section's.
#: Smoothed over FOLD_SCALE_UM (several cells, so that a crowd of nuclei does not pass for a
#: second layer), tissue at FOLD_OD_RATIO x the slide's median tissue density or more is folded
#: (1.9: doubling, less 5 % for a fold of thinner tissue).
FOLD_OD_RATIO = 1.9
FOLD_SCALE_UM = 48.0
FOLD_MIN_AREA_UM2 = 10_000.0
#: Bubble rims and dark debris: near-black (every channel below this), achromatic, not pen.
DARK_MAX_RGB = 60
DEBRIS_MIN_AREA_UM2 = 200.0
#: Over-exposure: the sensor clipped (a channel >= 250 on the area-averaged thumbnail). A clipped
#: pixel that is still coloured (another channel <= 235) is always clipped tissue; a white one is
#: too when the slide's glass does not reach the clip even at the top of its noise (then nothing
#: should reach full white). Where clipping is dense (clipped pixels joined over gaps of
#: EXPOSURE_JOIN_UM: unclipped nuclei, an area at least OVER_EXPOSED_MIN_UM across) a field is
#: over-exposed; it extends over what stays under the clip within it, the densest tissue
#: (epithelium up to about 100 µm thick), by joining clipped pixels over EXPOSURE_SPAN_UM. Sparse
#: clipped specks of pale tissue are joined only when such a field holds them.
CLIPPED_LEVEL = 250
CLIPPED_COLOURED_BELOW = 235
OVER_EXPOSED_MIN_UM = 64.0
EXPOSURE_JOIN_UM = 32.0
EXPOSURE_SPAN_UM = 128.0
#: Under-exposure: in a well-exposed brightfield scan any area wider than a few cells holds some
#: pixel near the lamp's white (glass, lumen, pale cytoplasm), and even dense H&E passes most of
#: the light in one channel (haematoxylin and eosin both transmit blue). An area at least
#: UNDER_EXPOSED_MIN_UM across is under-exposed when no channel of any pixel in it passes half the
#: light of both the lamp (< 128 of 255: 0.69 OD lost in every channel) and the slide's typical
#: tissue area of that size (the median over tissue of each area's brightest pixel): a slide of
#: dense tumour seen at low power has few bright pixels anywhere, and is not under-exposed for it.
#: Where the slide's background itself passes less than half the lamp's light the whole scan is
#: dim, its typical tissue too, and the lamp alone is the reference.
UNDER_EXPOSED_WHITE = 128
UNDER_EXPOSED_OF_TYPICAL = 0.5
UNDER_EXPOSED_MIN_UM = 256.0

#: Dark background: in an epifluorescence scan the background is black, in brightfield the lamp.
#: A slide whose brightest 10 % of thumbnail pixels have luminance below this is not brightfield.
DARK_BACKGROUND_LUMINANCE = 60
DARK_BACKGROUND_PERCENTILE = 90.0

#: Stain: angle (degrees) between a slide's H or E vector and the reference's at which the outlier
#: score is 1 (Macenko vectors of H&E from different labs differ by up to ~10-15°).
STAIN_ANGLE_TOLERANCE = 15.0


def thresholds() -> dict:
    """Every threshold above, by name, as qc.json records them."""
    return {
        name.lower(): value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, (int, float, tuple))
    }


#: -ln(I / 255) for each 8-bit level (0 read as 1).
_OD_TABLE = (-np.log(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)


def _pixels(um: float, mpp: float) -> int:
    return max(1, round(um / mpp))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def keep_large(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """``mask`` without the 8-connected components smaller than ``min_area_px``."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[labels]


def lab_lch(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIE L* (0-100), chroma and hue angle (degrees, -180..180) of an sRGB uint8 image."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    a, b = lab[..., 1] - 128.0, lab[..., 2] - 128.0
    return lab[..., 0] * (100.0 / 255.0), np.hypot(a, b), np.degrees(np.arctan2(b, a))


def ink_colours(rgb: np.ndarray, off_plane: np.ndarray | None = None) -> np.ndarray:
    """Per pixel: 0 none, 1 blue, 2 green, 3 black, 4 red (colour alone, no size rule). Ink is a
    colour outside H&E's gamut or, given ``off_plane`` (``off_stain_plane``), a pixel off the
    stain plane; either is named by its hue."""
    lightness, chroma, hue = lab_lch(rgb)
    in_gamut = (hue >= HE_HUE_RANGE[0]) & (hue <= HE_HUE_RANGE[1]) & (chroma <= HE_MAX_CHROMA)
    coloured = (chroma >= INK_MIN_CHROMA) & ~in_gamut
    if off_plane is not None:
        coloured |= off_plane >= INK_OFF_PLANE_OD
    out = np.zeros(rgb.shape[:2], np.uint8)
    out[coloured & (hue > -150) & (hue <= -45)] = 1  # blue, cyan, saturated violet
    out[coloured & ((hue >= 90) | (hue <= -150))] = 2  # green, teal
    out[coloured & (hue > -45) & (hue < 90)] = 4  # red, orange, saturated pink
    out[(lightness < BLACK_MAX_LIGHTNESS) & (chroma < BLACK_MAX_CHROMA)] = 3
    return out


INK_NAMES = {1: "blue", 2: "green", 3: "black", 4: "red"}


def off_stain_plane(rgb: np.ndarray, tissue: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per pixel, the optical density (float32) off the plane the slide's tissue OD lies on.

    The plane (through the origin) starts as the one of ``reference``'s two stain vectors (a 2 x 3
    stain matrix) and is refitted PLANE_FIT_ROUNDS times to the tissue within INK_OFF_PLANE_OD of
    the last plane, each pixel's OD direction counting once whatever its density: ink, off the
    plane from the start, never tilts it, however much of the tissue it covers."""
    density = cv2.LUT(rgb, _OD_TABLE).reshape(-1, 3)
    total = density.sum(axis=1)
    stained = (tissue.reshape(-1) > 0) & (total >= PLANE_MIN_OD)
    normal = np.cross(reference[0], reference[1]).astype(np.float32)
    normal /= np.linalg.norm(normal)
    for _ in range(PLANE_FIT_ROUNDS):
        fit = stained & (np.abs(density @ normal) < INK_OFF_PLANE_OD)
        if np.count_nonzero(fit) < 3:
            break
        directions = density[fit] / total[fit, None]
        normal = np.linalg.svd(directions.T @ directions)[0][:, 2].astype(np.float32)  # least variance
    return np.abs(density @ normal).reshape(rgb.shape[:2])


def detect_pen(
    rgb: np.ndarray, mpp: float, tissue: np.ndarray, reference: np.ndarray, under_exposed: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """Pen ink mask and the share of it in each ink colour: colours outside H&E's gamut, and ink
    over tissue off the slide's stain plane (``off_stain_plane``; named by its hue), except in
    ``under_exposed`` areas: the light lost there moves every colour off the plane towards grey."""
    off_plane = off_stain_plane(rgb, tissue, reference)
    off_plane[under_exposed > 0] = 0
    colours = ink_colours(rgb, off_plane)
    ink = cv2.morphologyEx((colours > 0).astype(np.uint8), cv2.MORPH_CLOSE, _disk(_pixels(PEN_CLOSE_UM / 2, mpp)))
    pen = keep_large(ink, math.ceil(PEN_MIN_AREA_UM2 / mpp**2))
    total = int(pen.sum())
    shares = {
        name: (float(np.count_nonzero((colours == value) & (pen > 0))) / total if total else 0.0)
        for value, name in INK_NAMES.items()
    }
    return pen, shares


def detect_dark_debris(rgb: np.ndarray, mpp: float, pen: np.ndarray) -> np.ndarray:
    """Bubble rims and dark debris: near-black achromatic specks that are not pen."""
    _, chroma, _ = lab_lch(rgb)
    dark = cv2.inRange(rgb, (0, 0, 0), (DARK_MAX_RGB,) * 3) > 0
    dark = (dark & (chroma < BLACK_MAX_CHROMA) & (pen == 0)).astype(np.uint8)
    return keep_large(dark, math.ceil(DEBRIS_MIN_AREA_UM2 / mpp**2))


def optical_density_sum(rgb: np.ndarray) -> np.ndarray:
    """Sum over the three channels of -ln(I / 255), float32."""
    return cv2.LUT(rgb, _OD_TABLE).sum(axis=2)


def detect_fold(rgb: np.ndarray, mpp: float, tissue: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, float]:
    """Folded tissue: smoothed optical density ``FOLD_OD_RATIO`` times the slide's median tissue
    density or more. Returns the mask and that median (0 without tissue)."""
    region = (tissue > 0) & (exclude == 0)
    if not region.any():
        return np.zeros(rgb.shape[:2], np.uint8), 0.0
    density = optical_density_sum(rgb)
    sigma = FOLD_SCALE_UM / mpp / 2
    weight = cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma)
    smooth = cv2.GaussianBlur(np.where(region, density, 0).astype(np.float32), (0, 0), sigma)
    smooth = smooth / np.maximum(weight, 1e-3)
    median = float(np.median(density[region]))
    fold = (region & (smooth >= FOLD_OD_RATIO * median)).astype(np.uint8)
    return keep_large(fold, math.ceil(FOLD_MIN_AREA_UM2 / mpp**2)), median


def _square(um: float, mpp: float) -> np.ndarray:
    """A square structuring element about ``um`` across, of odd side so that it is centred."""
    side = _pixels(um, mpp) // 2 * 2 + 1
    return np.ones((side, side), np.uint8)


def _open(mask: np.ndarray, um: float, mpp: float) -> np.ndarray:
    """``mask`` reduced to the parts at least ``um`` across (a morphological opening)."""
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _square(um, mpp))


def _holding(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` that hold a pixel of ``seeds``."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, np.uint8)
    keep[np.unique(labels[(seeds > 0) & (mask > 0)])] = 1
    keep[0] = 0
    return keep[labels]


def detect_exposure(
    rgb: np.ndarray,
    mpp: float,
    tissue: np.ndarray,
    glass_level: float | None = None,
    background_level: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Over- and under-exposed masks; ``glass_level``: the top of the slide glass's brightest
    channel (noise included), if it has glass; ``background_level``: the median brightest channel
    off the tissue, if there is any."""
    clipped = rgb.max(axis=2) >= CLIPPED_LEVEL
    glass_clipped = glass_level is None or glass_level >= CLIPPED_LEVEL
    if glass_clipped:
        clipped &= rgb.min(axis=2) <= CLIPPED_COLOURED_BELOW
    clipped = clipped.astype(np.uint8)
    fields = _open(
        cv2.morphologyEx(clipped, cv2.MORPH_CLOSE, _disk(_pixels(EXPOSURE_JOIN_UM / 2, mpp))), OVER_EXPOSED_MIN_UM, mpp
    )
    spans = _open(
        cv2.morphologyEx(clipped, cv2.MORPH_CLOSE, _disk(_pixels(EXPOSURE_SPAN_UM / 2, mpp))), OVER_EXPOSED_MIN_UM, mpp
    )
    over = _holding(spans, fields)
    brightest_channel = cv2.medianBlur(rgb.max(axis=2), 3)  # dense purple tissue still passes blue
    brightest_nearby = cv2.dilate(brightest_channel, _square(UNDER_EXPOSED_MIN_UM, mpp))
    typical = float(np.median(brightest_nearby[tissue > 0])) if tissue.any() else 255.0
    level = float(UNDER_EXPOSED_WHITE)
    if background_level is None or background_level >= UNDER_EXPOSED_WHITE:
        level = min(level, UNDER_EXPOSED_OF_TYPICAL * typical)
    under = _open(brightest_channel < level, UNDER_EXPOSED_MIN_UM, mpp)
    return over, under


def focus_mpp(slide_mpp: float) -> float:
    """µm/px the focus measure reads a slide of ``slide_mpp`` at."""
    return max(slide_mpp, min(FOCUS_MAX_MPP, FOCUS_PIXELS_PER_SAMPLE * slide_mpp))


def focus_ratio(rgb: np.ndarray) -> float:
    """Detail at the finest scale relative to the next: RMS Laplacian of the grey image over the
    RMS Laplacian of the image halved (each in its own pixels). Sharp tissue 0.5-1; 0.25 = no
    detail finer than 2 px."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    half = cv2.resize(grey, (max(1, grey.shape[1] // 2), max(1, grey.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    fine = float(np.sqrt(np.mean(cv2.Laplacian(grey, cv2.CV_32F, ksize=1) ** 2)))
    coarse = float(np.sqrt(np.mean(cv2.Laplacian(half, cv2.CV_32F, ksize=1) ** 2)))
    return fine / coarse if coarse > 1e-3 else 1.0


def dark_background(rgb: np.ndarray) -> tuple[bool, float]:
    """Whether the image's background is dark (fluorescence), and the luminance it was judged by."""
    luminance = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    level = float(np.percentile(luminance, DARK_BACKGROUND_PERCENTILE)) if luminance.size else 255.0
    return level < DARK_BACKGROUND_LUMINANCE, level


def stain_angles(matrix: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Angles (degrees) between the H rows and between the E rows of two 2x3 stain matrices."""

    def angle(u, v):
        cosine = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))

    return angle(matrix[0], reference[0]), angle(matrix[1], reference[1])
