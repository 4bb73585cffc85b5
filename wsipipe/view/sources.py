"""What ``wsipipe view PATH`` shows: one slide, a ``segment``/``nuclei`` output folder with its
slide, or a ``batch`` output folder of those. Each slide becomes a ``ViewSource``: its tiles,
the overlays its outputs allow, the files the page may fetch, and the page's figures.

Nothing is read before it is asked for, so a batch of a thousand slides opens at once.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError, SlideOpenError
from wsipipe.files import file_inside, plain_tree
from wsipipe.view.deepzoom import LRUCache, SlideTiles
from wsipipe.view.overlays import (
    NUCLEI_MAX_UM_PER_PX,
    Lazy,
    PolygonOverlay,
    RasterOverlay,
    class_palette,
    classification_colour,
    geojson_polygons,
    heat_palette,
    heatmap_raster,
)

REPORT_JSON = "report.json"
NUCLEI_JSON = "nuclei.json"
PREDICTION = "prediction.zarr"
#: Files of an output folder the page may fetch (download links); nothing else is ever served.
SERVED_FILES = ("report.json", "regions.geojson", "nuclei.geojson")
#: The tissue mask's colour (one the class palette does not use).
TISSUE_COLOUR = (30, 144, 255)
#: Prediction levels up to this many pixels are read whole, once.
IN_MEMORY_PIXELS = 4096 * 4096
#: Tile cache shared by every slide of a run (bytes).
CACHE_BYTES = 256 * 1024 * 1024
#: The largest report.json or nuclei.json read (a run's own are a few MB).
MAX_JSON_BYTES = 256 * 1024 * 1024


@dataclass
class OverlaySpec:
    """An overlay the page can toggle: its tiles come from ``build`` (run once, on first use)."""

    key: str
    label: str
    opacity: float
    build: Lazy
    visible: bool = False


@dataclass
class ViewSource:
    """One slide and, when given, the output folder made from it."""

    name: str
    slide: Path
    outdir: Path | None = None
    report: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # batch: the slide's figures in the list
    mpp_override: float | None = None

    def __post_init__(self):
        self._lock = threading.Lock()
        self._tiles: SlideTiles | None = None
        self.overlays: dict[str, OverlaySpec] = {}

    # --- the slide ---------------------------------------------------------------------------
    def tiles(self, cache: LRUCache) -> SlideTiles:
        with self._lock:
            if self._tiles is None:
                from wsipipe.slide import open_slide

                self._tiles = SlideTiles(open_slide(self.slide, mpp_override=self.mpp_override), cache)
                self.overlays = self._overlays()
            return self._tiles

    def warm_up(self) -> None:
        """Read ahead what the first page view needs (the slide's coarsest level, the overlays
        shown at first), so the first tiles do not wait for it. A failure here is the page's to
        report, when it asks for that overlay."""
        assert self._tiles is not None, "tiles() opens the slide first"
        try:
            self._tiles.coarsest()
            for spec in self.overlays.values():
                if spec.visible:
                    spec.build.get()
        except Exception:
            return

    def close(self) -> None:
        with self._lock:
            if self._tiles is not None:
                self._tiles.reader.close()

    @property
    def reader(self):
        return self._tiles.reader

    def mpp(self) -> float | None:
        recorded = self.report.get("mpp")
        if isinstance(recorded, int | float) and math.isfinite(recorded) and recorded > 0:
            return float(recorded)
        return self.reader.mpp_x

    def _known_mpp(self) -> float:
        """µm/px where the outputs need one (segment and nuclei record the one they ran at)."""
        mpp = self.mpp()
        assert mpp is not None, "outputs made at a µm/px record it in report.json"
        return mpp

    @property
    def _outputs(self) -> Path:
        """The output folder (the overlays that read from it are offered only when there is one)."""
        assert self.outdir is not None, "no output folder: its overlays are not offered"
        return self.outdir

    # --- output files --------------------------------------------------------------------------
    def output_file(self, name: str) -> Path | None:
        """A whitelisted file of the output folder, or None."""
        if self.outdir is None or name not in SERVED_FILES:
            return None
        return file_inside(self.outdir, name)

    def _nuclei_summary(self) -> dict | None:
        return _read_json(self.outdir, NUCLEI_JSON) if self.outdir else None

    # --- overlays -------------------------------------------------------------------------------
    def _overlays(self) -> dict[str, OverlaySpec]:
        specs = []
        if self.outdir is not None and plain_tree(self.outdir / PREDICTION):
            specs.append(OverlaySpec("labels", "predicted classes", 0.45, Lazy(lambda: self._prediction(True)), True))
            specs.append(OverlaySpec("probability", "tumour probability", 0.6, Lazy(lambda: self._prediction(False))))
        if self.output_file("regions.geojson"):
            specs.append(OverlaySpec("regions", "tumour regions (outlines)", 1.0, Lazy(self._regions), True))
        if self.output_file("nuclei.geojson"):
            specs.append(OverlaySpec("nuclei", "nuclei (from high zoom)", 1.0, Lazy(self._nuclei), True))
        specs.append(OverlaySpec("tissue", "tissue mask", 0.35, Lazy(self._tissue)))
        summary = self._nuclei_summary()
        if summary and summary.get("tiles"):
            specs.append(
                OverlaySpec("cellularity", "cellularity heatmap", 0.6, Lazy(lambda: self._heatmap(summary)[0]))
            )
        return {spec.key: spec for spec in specs}

    def _prediction(self, labels: bool) -> RasterOverlay:
        import zarr

        from wsipipe.segment import _tumour_classes

        root = zarr.open_group(str(self._outputs / PREDICTION), mode="r", zarr_format=2)
        meta = root.attrs["wsipipe"]
        n_levels = len(root.attrs["multiscales"][0]["datasets"])
        # Prediction pixel i covers level-0 [i * per_px, (i + 1) * per_px) (segment's tile plan).
        per_px = float(meta["mpp"]) / self._known_mpp()
        if labels:
            group = root["labels"]["classes"]
            palette = class_palette(list(meta["class_names"]))
            return RasterOverlay([_in_memory(group[str(k)]) for k in range(n_levels)], per_px, palette)
        tumour = _tumour_classes(list(meta["class_names"]))
        levels = [_in_memory(_ChannelSum(root[str(k)], tumour)) for k in range(n_levels)]
        return RasterOverlay(levels, per_px, heat_palette())

    def _regions(self) -> PolygonOverlay:
        """Region outlines (exteriors and holes), read as the region table reads them."""
        from shapely import get_parts

        from wsipipe.annotations import read_annotations
        from wsipipe.annotations.model import rgb

        rings, colours = [], []
        for region in read_annotations(self._outputs / "regions.geojson"):
            r, g, b = rgb(region.color) or (230, 25, 75)
            for polygon in get_parts(region.geometry):
                for ring in (polygon.exterior, *polygon.interiors):
                    rings.append(np.asarray(ring.coords)[:, :2])
                    colours.append((r, g, b))
        return PolygonOverlay(rings, colours, self.reader.dimensions, thickness=3)

    def _nuclei(self) -> PolygonOverlay:
        # Outlines only, from our own file: read lightly (the annotations reader validates and
        # repairs each of up to millions of polygons, which drawing does not need).
        polygons = geojson_polygons(self._outputs / "nuclei.geojson")
        colours = [classification_colour(p["properties"], (0, 0, 200)) for p in polygons]
        return PolygonOverlay(
            [p["points"] for p in polygons],
            colours,
            self.reader.dimensions,
            thickness=1,
            max_scale=NUCLEI_MAX_UM_PER_PX / self._known_mpp(),
        )

    def _tissue(self) -> RasterOverlay:
        """The tissue mask segment and nuclei use (the same detection on the same thumbnail)."""
        from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample

        downsample = thumbnail_downsample(self.reader)
        mask = detect_tissue(
            read_thumbnail(self.reader, downsample), self.reader.mpp_x and self.reader.mpp_x * downsample
        )
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = (*TISSUE_COLOUR, 255)
        return RasterOverlay([rgba], downsample)

    def _heatmap(self, summary: dict):
        raster, per_px, vmax = heatmap_raster(summary["tiles"], self.reader.dimensions)
        return RasterOverlay([raster], per_px), vmax

    def render_overlay(self, key: str, box) -> np.ndarray | None:
        spec = self.overlays.get(key)
        return None if spec is None else spec.build.get().render(box)

    # --- the page's figures -------------------------------------------------------------------------
    def page_info(self) -> dict:
        """Everything the page shows besides tiles (JSON)."""
        from wsipipe.classes import NON_TUMOUR_NUCLEUS, QUPATH_CLASSES, display_name, palette
        from wsipipe.report.render import HEAT_STOPS, readable_figures
        from wsipipe.stages.segment import SegmentResult

        reader = self.reader
        report = self.report
        classes = (report.get("model") or {}).get("classes") or []
        legend: list[dict] = [
            {"label": display_name(name), "colour": _hex(colour)}
            for i, (name, colour) in enumerate(zip(classes, palette(classes)))
            if i
        ]
        if "nuclei" in self.overlays:
            legend += [
                {"label": "nucleus in tumour (malignant)", "colour": _hex(QUPATH_CLASSES["Tumor"]), "outline": True},
                {"label": "other nucleus", "colour": _hex(QUPATH_CLASSES[NON_TUMOUR_NUCLEUS]), "outline": True},
            ]
        if "tissue" in self.overlays:
            legend.append({"label": "tissue", "colour": _hex(TISSUE_COLOUR)})
        heat = None
        summary = self._nuclei_summary()
        if "cellularity" in self.overlays and summary:
            values = [t.get("cellularity") for t in summary.get("tiles", []) if isinstance(t, dict)]
            vmax = max((v for v in values if isinstance(v, int | float) and math.isfinite(v)), default=0.0) or 1.0
            heat = {"stops": [_hex(stop) for stop in HEAT_STOPS], "max": vmax, "label": "cellularity per tile"}
        return _finite_or_none(
            {
                "name": self.name,
                "slide": str(self.slide),
                "width": reader.dimensions[0],
                "height": reader.dimensions[1],
                "mpp": self.mpp(),
                "overlays": [
                    {"key": s.key, "label": s.label, "opacity": s.opacity, "visible": s.visible}
                    for s in self.overlays.values()
                ],
                "nuclei_max_um_per_px": NUCLEI_MAX_UM_PER_PX,
                "legend": legend,
                "heat": heat,
                "figures": readable_figures(SegmentResult.from_json(report, self._outputs)) if report else [],
                "model": report.get("model"),
                "run": report.get("run"),
                "regions": self.region_table(),
                "files": [name for name in SERVED_FILES if self.output_file(name)],
            }
        )

    def region_table(self) -> list[dict]:
        from wsipipe.report.regions import region_rows

        mpp = self.mpp()
        return region_rows(self.outdir, mpp) if self.outdir and mpp else []  # it reads only files inside


class _ChannelSum:
    """The sum of some channels of a (C, H, W) uint8 array, sliced like an (H, W) one."""

    def __init__(self, array, channels: list[int]):
        self.array, self.channels = array, channels
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, key):
        values = np.asarray(self.array[(slice(None), *key)])[self.channels].astype(np.uint16).sum(axis=0)
        return np.minimum(values, 255).astype(np.uint8)


def _in_memory(array):
    """A small prediction level as a numpy array (one read instead of one per tile); a large one
    stays in its store."""
    height, width = array.shape[-2:]
    return array[0:height, 0:width] if height * width <= IN_MEMORY_PIXELS else array


def _hex(colour) -> str:
    return "#{:02X}{:02X}{:02X}".format(*(round(float(c)) for c in colour[:3]))


# --- finding what PATH is ------------------------------------------------------------------------


def sources_for(
    path: Path, slide: Path | None = None, mpp_override: float | None = None
) -> tuple[str, list[ViewSource]]:
    """("slide" | "outdir" | "batch", the slides to serve) for ``wsipipe view PATH``."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder")
    if path.is_file():
        if slide is not None:
            raise InvalidInputError("{slide} is for an output folder; PATH is already a slide", parameter="slide")
        return "slide", [ViewSource(path.name, path, mpp_override=mpp_override)]
    from wsipipe.batch.state import STATUS_JSON, load_status

    if file_inside(path, STATUS_JSON):
        if slide is not None:
            raise InvalidInputError(
                "{slide} is for one output folder; PATH is a batch output folder", parameter="slide"
            )
        sources = []
        for record in load_status(path).values():
            folder = _slide_folder(path, record.name)
            if record.state != "done" or folder is None:
                continue
            report = _read_json(folder, REPORT_JSON) or {}
            sources.append(
                ViewSource(record.name, Path(record.path), folder, report, dict(record.figures), mpp_override)
            )
        if not sources:
            raise InvalidInputError(f"{path}: a batch output folder without any finished slide to show")
        return "batch", sources
    return "outdir", [outdir_source(path, slide, mpp_override)]


def outdir_source(outdir: Path, slide: Path | None, mpp_override: float | None) -> ViewSource:
    """A ``segment`` (report.json) or ``nuclei`` (nuclei.json) output folder and its slide."""
    report = _read_json(outdir, REPORT_JSON)
    recorded = (report or {}).get("slide") or (_read_json(outdir, NUCLEI_JSON) or {}).get("input")
    if report is None and recorded is None:
        raise InvalidInputError(
            f"{outdir}: neither a slide nor a segment, nuclei or batch output folder (no report.json)"
        )
    if slide is None:
        slide = _find_slide(outdir, str(recorded))
        if slide is None:
            raise SlideOpenError(
                f"{outdir}: the slide it was made from ({recorded}) is not there; pass {{slide}}", parameter="slide"
            )
    return ViewSource(Path(str(recorded or slide)).name, Path(slide), outdir, report or {}, mpp_override=mpp_override)


def _find_slide(outdir: Path, recorded: str) -> Path | None:
    """The recorded slide path as given, or relative to the output folder or its parent."""
    candidate = Path(recorded)
    options = [candidate] if candidate.is_absolute() else [candidate, outdir / candidate, outdir.parent / candidate]
    return next((p for p in options if p.is_file()), None)


def _read_json(folder: Path, name: str) -> dict | None:
    path = file_inside(folder, name)
    if path is None:
        return None
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise InvalidInputError(f"{path}: over {MAX_JSON_BYTES >> 20} MiB, not a wsipipe output")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not readable JSON ({exc})") from exc
    return data if isinstance(data, dict) else None


def _finite_or_none(value):
    """``value`` with NaN and infinities (a foreign or damaged file's) as None, which JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def _slide_folder(batch: Path, name) -> Path | None:
    """A batch slide's output folder: one plain name inside the batch folder (status.json is untrusted)."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return None
    folder = batch / name
    if folder.is_symlink() or not folder.is_dir():
        return None
    return folder
