"""Tissue detection on a low-resolution image of a slide.

Stained tissue is coloured, glass is white or grey: the HSV saturation separates them. Otsu
picks the threshold per slide, clamped to a floor so that a slide with no tissue (where Otsu
would split the glass's noise in two) yields an empty mask. Morphological closing joins
fragments, opening and small-object removal drop dust and specks.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from wsipipe.errors import MppUnknownError
from wsipipe.slide.base import SlideReader

#: µm/px tissue is detected at (coarse enough to be quick, fine enough for small fragments).
THUMBNAIL_MPP = 4.0
#: The thumbnail's longest side is at most this (slides over ~20 000 px get a coarser thumbnail),
#: so tiling's memory does not grow with the slide.
MAX_THUMBNAIL_SIDE = 1024
#: Level-0 pixels per thumbnail pixel assumed when the slide records no µm/px (0.25 µm/px scans).
DOWNSAMPLE_WITHOUT_MPP = 16.0
#: Saturation (0-255) below which nothing counts as tissue, whatever Otsu says.
MIN_SATURATION = 20
#: Pixels brighter than this in every channel are glass, however saturated they seem.
GLASS_BRIGHTNESS = 235
#: Pixels darker than this in every channel are empty background (fluorescence, scanner borders).
DARK_BACKGROUND = 40
#: Tissue pieces smaller than this (µm², at the thumbnail scale) are dropped as debris.
MIN_TISSUE_AREA_UM2 = 20_000.0


def thumbnail_downsample(reader: SlideReader) -> float:
    """Level-0 pixels per thumbnail pixel for tissue detection on ``reader``."""
    longest = max(reader.dimensions)
    try:
        downsample = THUMBNAIL_MPP / reader.mpp
    except MppUnknownError:
        downsample = DOWNSAMPLE_WITHOUT_MPP
    return max(1.0, downsample, longest / MAX_THUMBNAIL_SIDE)


def read_thumbnail(reader: SlideReader, downsample: float) -> np.ndarray:
    """The whole slide, ``downsample`` level-0 pixels per output pixel, RGB on white."""
    width, height = reader.dimensions
    out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
    level = 0
    for index, lvl in enumerate(reader.levels):
        if lvl.downsample <= downsample * 1.01:
            level = index
    lvl = reader.levels[level]
    region = reader.read_region((0, 0), level, (lvl.width, lvl.height))
    if region.shape[:2] == (out_h, out_w):
        return region
    return cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)


def detect_tissue(rgb: np.ndarray, um_per_px: float | None = None) -> np.ndarray:
    """Tissue mask (uint8, 1 = tissue) of an RGB thumbnail at ``um_per_px`` (about 4 assumed)."""
    um_per_px = um_per_px or THUMBNAIL_MPP
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], np.uint8)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    saturation = cv2.medianBlur(saturation, 3)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), MIN_SATURATION)
    glass = cv2.inRange(rgb, (GLASS_BRIGHTNESS,) * 3, (255,) * 3)  # every channel bright (OpenCV: fast)
    dark = cv2.inRange(rgb, (0,) * 3, (DARK_BACKGROUND - 1,) * 3)
    mask = ((saturation > threshold) & (glass == 0) & (dark == 0)).astype(np.uint8)

    # Structuring element about 16 µm across: closes gaps between nuclei, removes specks.
    radius = max(1, round(8 / um_per_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return _remove_small_objects(mask, max(1, math.ceil(MIN_TISSUE_AREA_UM2 / um_per_px**2)))


def _remove_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]
