"""Nuclei outputs: QuPath detections GeoJSON, a per-nucleus CSV, labels as OME-Zarr, summary figures.

All coordinates written are level-0 pixels of the input. Measurements and classes carry QuPath's
names (``wsipipe.classes``), the same in the GeoJSON and the CSV.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.classes import NON_TUMOUR_NUCLEUS, QUPATH_CLASSES
from wsipipe.files import atomic_path, write_atomic
from wsipipe.nuclei.tiled import Nucleus

#: Measurement names as QuPath's cell detection writes them.
NUCLEUS_ID = "Nucleus: ID"
AREA = "Nucleus: Area µm^2"
PERIMETER = "Nucleus: Perimeter µm"
ECCENTRICITY = "Nucleus: Eccentricity"
HAEMATOXYLIN = "Nucleus: Hematoxylin OD mean"
CSV_COLUMNS = ["id", "centroid_x", "centroid_y", AREA, PERIMETER, ECCENTRICITY, HAEMATOXYLIN, "in_tumour"]
#: Grid (level-0 px) the outlines are written on.
OUTLINE_PRECISION = 0.01


@dataclass(frozen=True)
class TileSummary:
    """Figures of one core tile (level-0 box), the per-tile half of the report."""

    x0: int
    y0: int
    x1: int
    y1: int
    nuclei: int
    tumour_nuclei: int
    tissue_mm2: float
    tumour_mm2: float
    tumour_nuclear_mm2: float

    def figures(self) -> dict:
        return {
            "box_level0": [self.x0, self.y0, self.x1, self.y1],
            **summary_figures(
                self.nuclei, self.tumour_nuclei, self.tissue_mm2, self.tumour_mm2, self.tumour_nuclear_mm2
            ),
        }


def summary_figures(
    count: int, tumour_count: int, tissue_mm2: float, tumour_mm2: float, tumour_nuclear_mm2: float
) -> dict:
    """nuclei_count, densities per mm² of tissue and of tumour, and cellularity (None when undefined).

    Cellularity is the nuclear area inside the tumour region (tumour ∩ tissue) over that region's
    area: at most 1 by construction.
    """
    return {
        "nuclei_count": int(count),
        "tumour_nuclei_count": int(tumour_count),
        "tissue_mm2": round(tissue_mm2, 6),
        "tumour_mm2": round(tumour_mm2, 6),
        "nuclei_per_mm2": count / tissue_mm2 if tissue_mm2 > 0 else None,
        "nuclei_per_mm2_tumour": tumour_count / tumour_mm2 if tumour_mm2 > 0 else None,
        "cellularity": tumour_nuclear_mm2 / tumour_mm2 if tumour_mm2 > 0 else None,
    }


def write_csv(path: Path, nuclei: list[Nucleus], in_tumour: np.ndarray, scale: float, mpp: float) -> None:
    """One row per nucleus; ``scale`` = level-0 px per working px, ``mpp`` = µm per working px."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for nucleus, tumour in zip(nuclei, in_tumour):
            writer.writerow(
                [
                    nucleus.id,
                    f"{(nucleus.centroid_x + 0.5) * scale:.2f}",
                    f"{(nucleus.centroid_y + 0.5) * scale:.2f}",
                    f"{nucleus.area_px * mpp * mpp:.3f}",
                    f"{nucleus.perimeter_px * mpp:.3f}",
                    f"{nucleus.eccentricity:.4f}",
                    f"{nucleus.mean_haematoxylin_od:.4f}",
                    int(bool(tumour)),
                ]
            )


def write_geojson(path: Path, nuclei: list[Nucleus], in_tumour: np.ndarray, scale: float, mpp: float) -> None:
    """QuPath detections: one Feature per nucleus, outline in level-0 px (a valid polygon, see
    ``nucleus_outlines``), class ("Tumor" or ``NON_TUMOUR_NUCLEUS``) and measurements."""
    classes = {
        True: {"name": "Tumor", "color": list(QUPATH_CLASSES["Tumor"])},
        False: {"name": NON_TUMOUR_NUCLEUS, "color": list(QUPATH_CLASSES[NON_TUMOUR_NUCLEUS])},
    }
    with atomic_path(path) as temporary, open(temporary, "w") as handle:
        handle.write('{"type": "FeatureCollection", "features": [\n')
        outlines = nucleus_outlines([nucleus.contour for nucleus in nuclei], scale)
        for index, (nucleus, tumour, outline) in enumerate(zip(nuclei, in_tumour, outlines)):
            feature = {
                "type": "Feature",
                "geometry": _geojson_polygon(outline),
                "properties": {
                    "objectType": "detection",
                    "classification": classes[bool(tumour)],
                    "measurements": {
                        NUCLEUS_ID: nucleus.id,
                        AREA: round(nucleus.area_px * mpp * mpp, 3),
                        PERIMETER: round(nucleus.perimeter_px * mpp, 3),
                        ECCENTRICITY: round(nucleus.eccentricity, 4),
                        HAEMATOXYLIN: round(nucleus.mean_haematoxylin_od, 4),
                    },
                },
            }
            handle.write(("," if index else "") + json.dumps(feature) + "\n")
        handle.write("]}\n")


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def nucleus_outlines(contours: list[np.ndarray], scale: float) -> np.ndarray:
    """The outlines of nuclei's pixels in level-0 px: valid shapely Polygons (QuPath refuses rings
    of under 4 positions and self-intersecting ones), coordinates rounded to ``OUTLINE_PRECISION``.

    Each contour runs through the centres of a nucleus's border pixels (working px, ``scale``
    level-0 px each). Grown by half a pixel with mitred corners it follows the pixels' outer edges,
    so the polygon's area is the pixel count's within a few per cent. A contour that encloses
    nothing (a thin nucleus: a line or a point) grows the same way, with square ends; one that
    crosses itself is repaired first, and of several parts the largest is kept. The steps run on
    all outlines at once (shapely's array functions): one by one they cost more than the segmentation.
    """
    import shapely

    sizes = np.array([len(contour) for contour in contours], dtype=np.int64)
    centre_lines = np.empty(len(contours), dtype=object)
    areal = np.flatnonzero(sizes >= 3)
    if areal.size:
        rings = shapely.linearrings(
            np.concatenate([contours[i] for i in areal]), indices=np.repeat(np.arange(areal.size), sizes[areal])
        )
        centre_lines[areal] = shapely.polygons(rings)
    for i in np.flatnonzero(sizes < 3):
        centre_lines[i] = shapely.LineString(contours[i]) if sizes[i] == 2 else shapely.Point(contours[i][0])
    invalid = ~shapely.is_valid(centre_lines)
    centre_lines[invalid] = shapely.make_valid(centre_lines[invalid])
    pixels = shapely.buffer(centre_lines, 0.5, cap_style="square", join_style="mitre")
    parts = shapely.get_type_id(pixels) != shapely.GeometryType.POLYGON.value
    pixels[parts] = [_largest_polygon(geometry) for geometry in pixels[parts]]
    # pixel centres to level-0 pixel corners, rounded; shapely's set_precision, which keeps a
    # polygon valid, is ten times slower, so it only mends the rare outline rounding made invalid
    # (and those with holes)
    simple = np.flatnonzero(shapely.get_num_interior_rings(pixels) == 0)
    outlines = np.empty(len(contours), dtype=object)
    if simple.size:
        coordinates, index = shapely.get_coordinates(shapely.get_exterior_ring(pixels[simple]), return_index=True)
        outlines[simple] = shapely.polygons(
            shapely.linearrings(np.round((coordinates + 0.5) * scale, 2), indices=index)
        )
    mend = np.flatnonzero(~shapely.is_valid(outlines) | shapely.is_missing(outlines))
    level0 = shapely.transform(pixels[mend], lambda xy: (xy + 0.5) * scale)
    outlines[mend] = [_largest_polygon(shapely.set_precision(g, OUTLINE_PRECISION)) for g in level0]
    return outlines


def _largest_polygon(geometry):
    import shapely

    if isinstance(geometry, shapely.Polygon):
        return geometry
    parts = [part for part in shapely.get_parts(geometry) if isinstance(part, shapely.Polygon)]
    return max(parts, key=lambda part: part.area)


def _geojson_polygon(polygon) -> dict:
    import shapely

    rings = (polygon.exterior, *polygon.interiors)
    return {"type": "Polygon", "coordinates": [shapely.get_coordinates(ring).tolist() for ring in rings]}


def create_label_store(path: Path, shape: tuple[int, int], chunk: int, attributes: dict):
    """Level 0 (int32, zeros) of a new OME-NGFF 0.4 label image (zarr v2) at ``path``, for
    ``segment_tiled`` to paint; ``attributes`` (mpp, level0_px_per_px, ...) go on its root, and
    ``finish_label_store`` adds the coarser levels and the NGFF metadata."""
    import zarr

    from wsipipe.inference.omezarr import _create_array

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(attributes)
    return _create_array(root, "0", shape, (chunk, chunk), dtype="int32")


def finish_label_store(path: Path) -> None:
    """Add the levels of a label store, each 2x smaller than the one before (nearest: every other
    pixel, so ids stay ids), written chunk by chunk, and the ``multiscales`` and ``image-label``
    metadata. Coordinates are µm, pixel centres placed against the input's level-0 pixel centres."""
    import zarr

    from wsipipe.inference.omezarr import NGFF_VERSION, _axes, _create_array, _datasets, level_shapes

    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    previous = root["0"]
    chunk = previous.chunks[0]
    shapes = level_shapes(*previous.shape)
    for level, (height, width) in enumerate(shapes[1:], start=1):
        array = _create_array(root, str(level), (height, width), (chunk, chunk), dtype="int32")
        for y0 in range(0, height, chunk):
            for x0 in range(0, width, chunk):
                y1, x1 = min(y0 + chunk, height), min(x0 + chunk, width)
                array[y0:y1, x0:x1] = previous[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2]
        previous = array
    mpp = float(root.attrs["mpp"])
    level0_mpp = mpp / float(root.attrs["level0_px_per_px"])
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": NGFF_VERSION,
                    "name": "nuclei",
                    "axes": _axes(False),
                    "datasets": _datasets(len(shapes), mpp, level0_mpp, False),
                    "type": "nearest",
                }
            ],
            "image-label": {"version": NGFF_VERSION},
        }
    )


def read_labels(path: Path) -> tuple:
    """(level 0 of a nuclei labels.zarr as a zarr array of int32 ids, its attributes: mpp,
    level0_px_per_px, level0_shape, method, params, min_area_px)."""
    import zarr

    from wsipipe.errors import InvalidInputError

    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):  # written before labels.zarr was OME-Zarr
            return node, dict(node.attrs)
        return node["0"], dict(node.attrs)
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise InvalidInputError(f"{path}: not a nuclei labels.zarr ({type(exc).__name__}: {exc})") from None
