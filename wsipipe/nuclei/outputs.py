"""Nuclei outputs: QuPath detections GeoJSON, a per-nucleus CSV, labels in zarr, summary figures.

All coordinates written are level-0 pixels of the input; every file is written under a
temporary name in the output directory and renamed when complete.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.files import atomic_path, write_atomic
from wsipipe.nuclei.tiled import Nucleus

MALIGNANT = {"name": "Tumor", "color": [200, 0, 0]}  # QuPath's built-in tumour class
OTHER = {"name": "Nucleus", "color": [0, 0, 200]}
CSV_COLUMNS = [
    "id",
    "centroid_x",
    "centroid_y",
    "area_um2",
    "perimeter_um",
    "eccentricity",
    "mean_haematoxylin_od",
    "in_tumour",
]


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
    malignant_nuclei_mm2: float

    def figures(self) -> dict:
        return {
            "box_level0": [self.x0, self.y0, self.x1, self.y1],
            **summary_figures(
                self.nuclei, self.tumour_nuclei, self.tissue_mm2, self.tumour_mm2, self.malignant_nuclei_mm2
            ),
        }


def summary_figures(
    count: int, tumour_count: int, tissue_mm2: float, tumour_mm2: float, malignant_mm2: float
) -> dict:
    """nuclei_count, densities per mm² of tissue and of tumour, and cellularity (None when undefined).

    Cellularity is the area of malignant nuclei (those inside the tumour region) over the area of
    the tumour region.
    """
    return {
        "nuclei_count": int(count),
        "tumour_nuclei_count": int(tumour_count),
        "tissue_mm2": round(tissue_mm2, 6),
        "tumour_mm2": round(tumour_mm2, 6),
        "nuclei_per_mm2": count / tissue_mm2 if tissue_mm2 > 0 else None,
        "nuclei_per_mm2_tumour": tumour_count / tumour_mm2 if tumour_mm2 > 0 else None,
        "cellularity": malignant_mm2 / tumour_mm2 if tumour_mm2 > 0 else None,
    }


def write_csv(path: Path, nuclei: list[Nucleus], in_tumour: np.ndarray, scale: float, mpp: float) -> None:
    """One row per nucleus; ``scale`` = level-0 px per working px, ``mpp`` = µm per working px."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
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
    """QuPath detections: one Feature per nucleus, outline in level-0 px, class and measurements."""
    with atomic_path(path) as temporary, open(temporary, "w") as handle:
        handle.write('{"type": "FeatureCollection", "features": [\n')
        for index, (nucleus, tumour) in enumerate(zip(nuclei, in_tumour)):
            # contour points are pixel centres; +0.5 puts them on level-0 pixel-corner coordinates
            ring = ((nucleus.contour + 0.5) * scale).round(2).tolist()
            ring.append(ring[0])
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": MALIGNANT if tumour else OTHER,
                    "measurements": {
                        "Nucleus id": nucleus.id,
                        "Area µm^2": round(nucleus.area_px * mpp * mpp, 3),
                        "Perimeter µm": round(nucleus.perimeter_px * mpp, 3),
                        "Eccentricity": round(nucleus.eccentricity, 4),
                        "Haematoxylin OD mean": round(nucleus.mean_haematoxylin_od, 4),
                    },
                },
            }
            handle.write(("," if index else "") + json.dumps(feature) + "\n")
        handle.write("]}\n")


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def create_label_store(path: Path, shape: tuple[int, int], chunk: int, attributes: dict):
    """A zarr v3 int32 array at ``path`` (the caller's ``atomic_path`` temporary)."""
    import zarr

    array = zarr.create_array(
        store=str(path), shape=shape, chunks=(chunk, chunk), dtype="int32", fill_value=0, zarr_format=3
    )
    array.attrs.update(attributes)
    return array
