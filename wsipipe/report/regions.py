"""The per-region table of a segment output folder: each region's class, bounds, area in mm²,
the nuclei whose centre lies inside and its cellularity (their area over the region's area).

Read from the folder's own files (regions.geojson, nuclei.csv), so report.html and
``wsipipe view`` show the same figures.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from wsipipe.report.areas import UM2_PER_MM2

REGIONS_FILE = "regions.geojson"
NUCLEI_CSV = "nuclei.csv"


def region_rows(outdir: Path, mpp: float) -> list[dict]:
    """One dict per region of ``outdir/regions.geojson`` (level-0 px at ``mpp`` µm/px); nuclei and
    cellularity are None without nuclei.csv."""
    import shapely

    from wsipipe.annotations import read_annotations

    path = Path(outdir) / REGIONS_FILE
    if not path.is_file():
        return []
    centres, areas = nuclei_centres(Path(outdir) / NUCLEI_CSV)
    rows = []
    for number, region in enumerate(read_annotations(path)):
        area_um2 = region.geometry.area * mpp * mpp
        row = {
            "name": region.name or f"{region.label} {number + 1}",
            "class": region.label,
            "bounds": [float(v) for v in region.geometry.bounds],
            "area_mm2": area_um2 / UM2_PER_MM2,
            "nuclei": None,
            "cellularity": None,
        }
        if centres is not None:
            inside = shapely.contains_xy(region.geometry, centres[:, 0], centres[:, 1])
            row["nuclei"] = int(inside.sum())
            row["cellularity"] = float(areas[inside].sum() / area_um2) if area_um2 > 0 else None
        rows.append(row)
    return rows


def nuclei_centres(path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Level-0 centres (n, 2) and areas (µm²) of the nuclei in a nuclei.csv; None when absent."""
    if not path.is_file():
        return None, None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    centres = np.array([(float(r["centroid_x"]), float(r["centroid_y"])) for r in rows], np.float64).reshape(-1, 2)
    areas = np.array([float(r["area_um2"]) for r in rows], np.float64)
    return centres, areas
