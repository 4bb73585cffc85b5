"""The per-region table of a segment output folder: each region's class, bounds, area in mm²,
the nuclei whose centre lies inside and its cellularity: the nuclear area inside the region (the
nuclei outlines cut to it) over the region's area, so at most 1, as the slide's cellularity.

Read from the folder's own files (regions.geojson, nuclei.csv, nuclei.geojson), so report.html
and ``wsipipe view`` show the same figures; only regular files inside the folder are read (the
viewer may be given someone else's folder).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from wsipipe.files import file_inside
from wsipipe.report.areas import UM2_PER_MM2

REGIONS_FILE = "regions.geojson"
NUCLEI_CSV = "nuclei.csv"
NUCLEI_GEOJSON = "nuclei.geojson"


def region_rows(outdir: Path, mpp: float) -> list[dict]:
    """One dict per region of ``outdir/regions.geojson`` (level-0 px at ``mpp`` µm/px); nuclei and
    cellularity are None without nuclei.csv."""
    import shapely

    from wsipipe.annotations import read_annotations

    outdir = Path(outdir)
    path = file_inside(outdir, REGIONS_FILE)
    if path is None:
        return []
    centres = nuclei_centres(file_inside(outdir, NUCLEI_CSV))
    outlines = nuclei_outlines(file_inside(outdir, NUCLEI_GEOJSON))
    tree = shapely.STRtree(outlines) if outlines is not None else None
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
            row["nuclei"] = int(shapely.contains_xy(region.geometry, centres[:, 0], centres[:, 1]).sum())
        if outlines is not None and tree is not None and region.geometry.area > 0:
            near = outlines[tree.query(region.geometry)]
            nuclear = float(shapely.area(shapely.intersection(near, region.geometry)).sum())
            row["cellularity"] = nuclear / region.geometry.area
        rows.append(row)
    return rows


def nuclei_centres(path: Path | None) -> np.ndarray | None:
    """Level-0 centres (n, 2) of the nuclei in a nuclei.csv; None when absent."""
    if path is None:
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([(float(r["centroid_x"]), float(r["centroid_y"])) for r in rows], np.float64).reshape(-1, 2)


def nuclei_outlines(path: Path | None) -> np.ndarray | None:
    """The nuclei outlines of a nuclei.geojson (shapely polygons, level-0 px); None when absent."""
    import shapely

    if path is None:
        return None
    collection = shapely.from_geojson(path.read_text(encoding="utf-8"))
    return np.asarray(shapely.get_parts(collection))
