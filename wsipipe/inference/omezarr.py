"""The prediction store: per-class probabilities and a label map as OME-Zarr (NGFF 0.4, zarr v2 format).

Layout (NGFF 0.4 image with a labels group)::

    prediction.zarr/            multiscales "probabilities", axes c/y/x, uint8 (0..255 = 0..1)
        0, 1, 2, ...            levels, each 2x smaller than the previous (mean of 2x2)
        labels/classes/0, 1...  label map, axes y/x, uint8 class index (mode of 2x2)

NGFF 0.4 on zarr v2 is chosen over 0.5 on zarr v3 because every OME-Zarr viewer reads it
(napari-ome-zarr, QuPath, vizarr, Fiji/MoBIE, neuroglancer), while 0.5 support is recent and
still missing in several of them; see docs/segment.md.

Level 0 is written by the stitcher; ``build_pyramid`` then adds the coarser levels chunk by
chunk and the metadata, so nothing slide-sized is ever held in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsipipe.errors import StoreError

if TYPE_CHECKING:
    import zarr

NGFF_VERSION = "0.4"
LABELS_NAME = "classes"
#: Levels are added until the longest side is at most this many pixels.
SMALLEST_LEVEL_SIDE = 256
MAX_LEVELS = 12
#: Opacity of the label colours (class 0, background, is transparent).
LABEL_ALPHA = 160


@dataclass
class PredictionStore:
    """Level-0 arrays of an open prediction store."""

    path: Path
    probabilities: zarr.Array  # (C, H, W) uint8
    labels: zarr.Array  # (H, W) uint8
    class_names: list[str]
    mpp: float
    chunk: int
    fingerprint: str = ""
    slide_mpp: float = 0.0  # the slide's level-0 µm/px, which the coordinates are relative to


def _compressor():
    """zstd level 1: on real probability maps 3.4x faster to write than level 5 for 3 % more bytes
    (chunks are written while the model runs, on the same cores)."""
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


def _create_array(group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str = "uint8"):
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        compressors=_compressor(),
        chunk_key_encoding={"name": "v2", "separator": "/"},
        overwrite=True,
    )


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of each level: halve (rounding up) until the longest side is small."""
    shapes = [(height, width)]
    while max(shapes[-1]) > SMALLEST_LEVEL_SIDE and len(shapes) < MAX_LEVELS:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def finest_level_within(shapes: list[tuple[int, int]], max_pixels: int) -> int:
    """The finest of the levels ``shapes`` (finest first) with at most ``max_pixels`` pixels (the
    coarsest when none is that small): what a reader that holds a whole level in memory takes."""
    for level, (height, width) in enumerate(shapes):
        if height * width <= max_pixels:
            return level
    return len(shapes) - 1


def create_prediction_store(
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    class_names: list[str],
    mpp: float,
    slide_mpp: float,
    chunk: int = 512,
    fingerprint: str = "",
) -> PredictionStore:
    """Create, or reopen when it holds the same layout and ``fingerprint``, a prediction store.

    ``fingerprint`` identifies what the prediction is made from (slide, model, settings);
    ``slide_mpp``: the slide's level-0 µm/px (pixel (0, 0) of level 0 covers the slide's first
    ``mpp / slide_mpp`` level-0 pixels).
    """
    import zarr

    path = Path(path)
    n_classes = len(class_names)
    if path.exists():
        store = open_prediction_store(path, require_complete=False)
        if store.probabilities.shape != (n_classes, height, width) or store.chunk != chunk:
            raise StoreError(
                f"{path}: holds a prediction of shape {store.probabilities.shape}, expected "
                f"{(n_classes, height, width)}; remove it or write elsewhere"
            )
        if store.fingerprint != fingerprint:
            raise StoreError(f"{path}: an unfinished prediction of another slide, model or settings; remove it")
        return store
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    probabilities = _create_array(root, "0", (n_classes, height, width), (n_classes, chunk, chunk))
    labels_group = root.require_group("labels").require_group(LABELS_NAME)
    labels = _create_array(labels_group, "0", (height, width), (chunk, chunk))
    # Provisional metadata (one level) so a reopened, unfinished store can be recognised.
    store = PredictionStore(path, probabilities, labels, list(class_names), mpp, chunk, fingerprint, slide_mpp)
    _write_metadata(root, store, n_levels=1, complete=False)
    return store


def open_prediction_store(path: str | os.PathLike, require_complete: bool = True) -> PredictionStore:
    """Open a store written by ``create_prediction_store``; refuse anything else."""
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r+" if not require_complete else "r", zarr_format=2)
        meta = root.attrs["wsipipe"]
        probabilities = root["0"]
        labels = root["labels"][LABELS_NAME]["0"]
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise StoreError(f"{path}: not a wsipipe prediction store ({type(exc).__name__}: {exc})") from exc
    if require_complete and not meta.get("complete"):
        raise StoreError(f"{path}: the prediction is unfinished; run segment again to resume it")
    return PredictionStore(
        path,
        probabilities,
        labels,
        list(meta["class_names"]),
        float(meta["mpp"]),
        int(probabilities.chunks[1]),
        str(meta.get("fingerprint", "")),
        float(meta.get("slide_mpp", meta["mpp"])),
    )


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished prediction store (pyramid and metadata written)."""
    try:
        open_prediction_store(path)
    except StoreError:
        return False
    return True


def build_pyramid(store: PredictionStore) -> list[tuple[int, int]]:
    """Write levels 1.. (mean for probabilities, mode for labels) and the final NGFF metadata."""
    import zarr

    root = zarr.open_group(str(store.path), mode="r+", zarr_format=2)
    labels_group = root["labels"][LABELS_NAME]
    n_classes, height, width = store.probabilities.shape
    shapes = level_shapes(height, width)
    chunk = store.chunk
    previous_probs, previous_labels = store.probabilities, store.labels
    for level in range(1, len(shapes)):
        h, w = shapes[level]
        probs = _create_array(root, str(level), (n_classes, h, w), (n_classes, chunk, chunk))
        labels = _create_array(labels_group, str(level), (h, w), (chunk, chunk))
        for y0 in range(0, h, chunk):
            for x0 in range(0, w, chunk):
                y1, x1 = min(y0 + chunk, h), min(x0 + chunk, w)
                src = (slice(2 * y0, 2 * y1), slice(2 * x0, 2 * x1))
                probs[:, y0:y1, x0:x1] = downsample_mean(previous_probs[(slice(None), *src)], (y1 - y0, x1 - x0))
                labels[y0:y1, x0:x1] = downsample_mode(previous_labels[src], (y1 - y0, x1 - x0), n_classes)
        previous_probs, previous_labels = probs, labels
    _write_metadata(root, store, n_levels=len(shapes), complete=True)
    return shapes


def _pad_to(array: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Repeat the last row/column so the trailing two axes are exactly twice ``out_shape``."""
    pad_y = 2 * out_shape[0] - array.shape[-2]
    pad_x = 2 * out_shape[1] - array.shape[-1]
    if pad_y or pad_x:
        pad = [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)]
        array = np.pad(array, pad, mode="edge")
    return array


def downsample_mean(array: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """2x2 mean (rounded) of uint8 (..., 2h, 2w) -> (..., h, w)."""
    a = _pad_to(np.asarray(array), out_shape).astype(np.uint16)
    total = a[..., 0::2, 0::2] + a[..., 1::2, 0::2] + a[..., 0::2, 1::2] + a[..., 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def downsample_mode(array: np.ndarray, out_shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """2x2 most frequent label (ties go to the higher class, so small tumour stays visible)."""
    a = _pad_to(np.asarray(array), out_shape)
    quads = (a[0::2, 0::2], a[1::2, 0::2], a[0::2, 1::2], a[1::2, 1::2])
    best = np.zeros(out_shape, np.uint8)
    best_count = np.zeros(out_shape, np.uint8)
    for label in range(max(n_classes, int(a.max(initial=0)) + 1)):
        count = sum((q == label).astype(np.uint8) for q in quads)
        better = count >= best_count
        better &= count > 0
        best[better] = label
        best_count[better] = count[better]
    return best


def _datasets(n_levels: int, mpp: float, slide_mpp: float, with_channel: bool) -> list[dict]:
    """Scale and translation of each level in µm, in the pixel-centre convention (napari's, and
    NGFF's): the slide's level-0 pixel (0, 0) is centred at 0, so a pixel covering the first
    ``k`` µm of the slide is centred at ``(k - slide_mpp) / 2``."""
    datasets = []
    for level in range(n_levels):
        size = mpp * 2**level
        scale = [size, size]
        shift = [(size - slide_mpp) / 2] * 2
        if with_channel:
            scale, shift = [1.0, *scale], [0.0, *shift]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    return datasets


def _axes(with_channel: bool) -> list[dict]:
    space = [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    return ([{"name": "c", "type": "channel"}] if with_channel else []) + space


def _write_metadata(root, store: PredictionStore, n_levels: int, complete: bool) -> None:
    from wsipipe.classes import display_name, palette

    class_names, mpp, slide_mpp = store.class_names, store.mpp, store.slide_mpp
    colours = palette(class_names)
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": NGFF_VERSION,
                    "name": "probabilities",
                    "axes": _axes(True),
                    "datasets": _datasets(n_levels, mpp, slide_mpp, True),
                    "type": "mean",
                }
            ],
            "omero": {
                "name": "probabilities",
                "version": NGFF_VERSION,
                "rdefs": {"model": "color"},
                "channels": [
                    {
                        "label": display_name(name),
                        "color": "{:02X}{:02X}{:02X}".format(*colours[i]) if i else "808080",
                        "window": {"min": 0, "max": 255, "start": 0, "end": 255},
                        "active": i > 0,
                    }
                    for i, name in enumerate(class_names)
                ],
            },
            "wsipipe": {
                "class_names": list(class_names),
                "mpp": mpp,
                "slide_mpp": slide_mpp,
                "complete": complete,
                "probability_scale": 255,
                "fingerprint": store.fingerprint,
            },
        }
    )
    labels_root = root["labels"]
    labels_root.attrs.update({"labels": [LABELS_NAME]})
    labels_root[LABELS_NAME].attrs.update(
        {
            "multiscales": [
                {
                    "version": NGFF_VERSION,
                    "name": LABELS_NAME,
                    "axes": _axes(False),
                    "datasets": _datasets(n_levels, mpp, slide_mpp, False),
                    "type": "mode",
                }
            ],
            "image-label": {
                "version": NGFF_VERSION,
                "source": {"image": "../../"},
                "colors": [
                    {"label-value": i, "rgba": [*colours[i], LABEL_ALPHA if i else 0]} for i in range(len(class_names))
                ],
                "properties": [{"label-value": i, "class": display_name(name)} for i, name in enumerate(class_names)],
            },
        }
    )
