"""QC outputs (qc.json, qc.zarr, qc.png) and reading them back for ``--qc PATH``.

qc.zarr is a zarr v3 group with one uint8 array per mask (1 = flagged; ``usable`` 1 = usable
tissue) on the tissue-thumbnail grid; its attributes say that grid's µm/px, the level-0 pixels
per mask pixel and the slide it belongs to.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.files import atomic_path, write_atomic
from wsipipe.qc.stage import ARTEFACTS, QCResult

MASKS_NAME = "qc.zarr"
#: Longest side of qc.png's picture (the legend strip comes below it).
PNG_MAX_SIDE = 1200


def write_qc_outputs(result: QCResult, outdir: Path) -> None:
    """qc.zarr, qc.png, then qc.json (last: its presence means the folder is complete)."""
    import zarr

    with atomic_path(outdir / MASKS_NAME) as temporary:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        group.attrs.update(
            {
                "wsipipe_qc": {
                    "mpp": result.mask_mpp,
                    "downsample": result.downsample,
                    "slide": result.summary["slide"],
                    "slide_size": [result.summary["width"], result.summary["height"]],
                    "masks": ["tissue", *ARTEFACTS, "usable"],
                }
            }
        )
        for name, mask in {"tissue": result.tissue, **result.masks, "usable": result.usable}.items():
            array = group.create_array(name, shape=mask.shape, chunks=mask.shape, dtype="uint8", fill_value=0)
            array[...] = mask
    from wsipipe.report.render import png_bytes

    write_atomic(outdir / "qc.png", png_bytes(render_qc_png(result)))
    write_atomic(outdir / "qc.json", json.dumps(result.summary, indent=2) + "\n")


def render_qc_png(result: QCResult) -> np.ndarray:
    """The thumbnail with each artefact tinted (one colour each, from the one palette's list for
    unnamed classes), usable tissue outlined in black, and a legend strip."""
    from wsipipe.classes import FALLBACK_COLOURS
    from wsipipe.report.render import render_overlay

    labels = np.zeros(result.tissue.shape, np.uint8)
    for index, name in enumerate(ARTEFACTS, start=1):
        labels[result.masks[name] > 0] = index
    picture = render_overlay(result.thumbnail, labels, FALLBACK_COLOURS)
    contours, _ = cv2.findContours(result.usable.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (0, 0, 0), max(1, round(max(picture.shape[:2]) / 600)))
    scale = min(1.0, PNG_MAX_SIDE / max(picture.shape[:2]))
    if scale < 1:
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    width = max(picture.shape[1], 520)
    row = 22
    entries = [
        (FALLBACK_COLOURS[i], f"{name} {result.summary['artefacts'][name]['fraction']:.1%}")
        for i, name in enumerate(ARTEFACTS, start=1)
    ]
    entries.append(((0, 0, 0), "usable tissue (outline)"))
    per_line = max(1, width // 260)
    lines = -(-len(entries) // per_line)
    legend = np.full((lines * row + 8, width, 3), 255, np.uint8)
    for i, (colour, text) in enumerate(entries):
        x, y = 6 + (i % per_line) * 260, 6 + (i // per_line) * row
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), tuple(int(c) for c in colour), -1)
        cv2.putText(legend, text, (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((picture.shape[0] + legend.shape[0], width, 3), 255, np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    canvas[picture.shape[0] :] = legend
    return canvas


def read_qc_masks(path: Path) -> tuple[dict, np.ndarray]:
    """(qc.zarr attributes, usable mask) of a qc output folder or its qc.zarr; one-line errors."""
    import zarr

    path = Path(path)
    store = path / MASKS_NAME if (path / MASKS_NAME).is_dir() else path
    try:
        group = zarr.open_group(str(store), mode="r")
        attrs = dict(group.attrs["wsipipe_qc"])
        usable = np.asarray(group["usable"][...], np.uint8)
    except Exception:  # zarr raises many kinds for a folder that is not a qc.zarr
        raise InvalidInputError(f"{{qc}} {path}: not a wsipipe qc output folder or qc.zarr", parameter="qc") from None
    return attrs, usable
