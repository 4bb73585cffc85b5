"""Whole-slide tumour segmentation: slide in; prediction, regions and a report out.

The slide streams through the pipeline and is never held at full resolution:

1. tissue detection on a thumbnail; a regular grid of model-sized tiles at the model's µm/px,
   overlapping by ``overlap`` pixels, keeps the tiles that touch tissue;
2-4. the inference engine (``wsipipe.inference.engine``): reader processes decode batches of
   tiles ahead of the model (bounded prefetch); its runner, on the device: stain normalisation with
   the slide's own stain matrix, the model's input normalisation, the forward pass (CUDA: pinned
   memory, float16 autocast, channels-last; out-of-memory halves the batch and goes on), softmax;
   the strip stitcher blends the overlapping tile probabilities band by band into the prediction
   store (resumable: a killed run continues where its journal says);
5. an OME-Zarr pyramid, polygons per class, areas, overlay and report;
6. with ``nuclei``, the nuclei stage (``wsipipe.nuclei.stage``) over the tissue, with the
   predicted tumour as its tumour mask: nuclei outputs, density and cellularity in the report.

Every output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsipipe import __version__
from wsipipe.device import resolve_device
from wsipipe.errors import InvalidInputError, ModelError, StoreError
from wsipipe.files import file_sha256, folder_lock, make_output_folder, remove_temporaries
from wsipipe.grid import count_sampled_mask, sample_mask
from wsipipe.inference.engine import Runner, reader_count, run, slide_batches, start_readers, store_batches
from wsipipe.stages.base import Progress, Say
from wsipipe.stages.nuclei import NucleiConfig, NucleiResult
from wsipipe.stages.segment import SegmentConfig, SegmentResult

if TYPE_CHECKING:
    from wsipipe.models.io import ModelBundle

#: "model": the normalisation the model file records it was trained with (``none`` for the
#: bundled model), so a slide reaches the network as its training images did.
NORMALIZE_METHODS = ("model", "vahadane", "macenko", "reinhard", "none")
PREDICTION_NAME = "prediction.zarr"
PARTIAL_SUFFIX = ".partial"
#: Polygons are traced on the finest pyramid level of at most this many pixels, so tracing
#: memory (about 13 bytes per pixel) is the same for every slide size.
REGIONS_MAX_PIXELS = 4096 * 4096
#: Thumbnail (and overlay) size: longest side in pixels.
THUMBNAIL_MAX_SIDE = 2048
#: Longest side of the tissue and tumour masks handed to the nuclei stage.
NUCLEI_MASK_SIDE = 4096
#: Prediction chunks (pixels at the model's µm/px).
CHUNK = 512
#: Stitching works through the slide in column strips this wide (model px): its memory does not
#: grow with the slide's width; tiles crossing a strip border (~6 % at 256 px tiles) run twice.
STRIP_WIDTH = 8 * CHUNK
#: The tumour model shipped with wsipipe (``--model`` left out).
BUNDLED_MODEL = Path(__file__).resolve().parent / "resources" / "models" / "tumour-unet.safetensors"
#: What the nuclei stage adds to OUTDIR (``nuclei``).
NUCLEI_OUTPUTS = ["nuclei.geojson", "nuclei.csv", "labels.zarr", "nuclei.json"]


@dataclass
class ModelInfo:
    """A loaded model and what the report says about it."""

    bundle: ModelBundle
    name: str
    sha256: str


@dataclass
class TilePlan:
    """Where the tiles go, in pixels of the prediction grid (the model's µm/px)."""

    height: int
    width: int
    tile: int
    overlap: int
    scale: float  # level-0 pixels per prediction pixel
    positions: list[tuple[int, int]]  # (x, y) top-left corners in prediction pixels, row-major
    coords: np.ndarray  # (n, 2) the same corners in level-0 pixels (where the reader reads)
    store_index: np.ndarray | None  # each tile's index in the reused tile store, if any
    tissue_mask: np.ndarray  # covers the whole slide, at any resolution
    mask_downsample: float  # level-0 pixels per mask pixel
    thumbnail: np.ndarray
    level0_size: tuple[int, int]  # (width, height) of the slide
    timings: dict[str, float] = field(default_factory=dict)
    qc: dict = field(default_factory=lambda: {"mode": "off"})  # what quality control left out (report.json)

    def tissue(self, y0: int, y1: int, x0: int, x1: int, downsample: float | None = None) -> np.ndarray:
        """Which pixels of the block [y0, y1) x [x0, x1) of a grid of ``downsample`` level-0 px per
        pixel (default: the prediction grid) count: centre inside the slide and on the tissue mask.

        This one rule decides the label map, the areas, the regions and the nuclei's tissue; the
        grid's last pixels overhang the slide's far edges and only count where their centre does not.
        """
        centre_y, centre_x = self._centres(y0, y1, x0, x1, downsample)
        width0, height0 = self.level0_size
        return (
            (centre_y < height0)[:, None]
            & (centre_x < width0)[None, :]
            & sample_mask(self.tissue_mask, self.level0_size, centre_y, centre_x)
        )

    def tissue_pixels(self) -> int:
        """How many pixels of the prediction grid ``tissue`` counts (the report's tissue area)."""
        centre_y, centre_x = self._centres(0, self.height, 0, self.width)
        width0, height0 = self.level0_size
        return count_sampled_mask(
            self.tissue_mask, self.level0_size, centre_y[centre_y < height0], centre_x[centre_x < width0]
        )

    def _centres(self, y0: int, y1: int, x0: int, x1: int, downsample: float | None = None):
        """Level-0 centres of the block's rows and columns on a grid of ``downsample`` px per pixel."""
        downsample = self.scale if downsample is None else downsample
        return (np.arange(y0, y1) + 0.5) * downsample, (np.arange(x0, x1) + 0.5) * downsample


# --- devices and models ------------------------------------------------------------------------


def load_model_info(model, device: str) -> ModelInfo:
    """``model``: a model file path, None (the bundled model) or an already loaded ModelBundle."""
    from wsipipe.models.io import ModelBundle, load_model

    if isinstance(model, ModelBundle):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        name = str(model.metadata.get("name") or model.metadata.get("architecture"))
        model.model.to(device).eval()
        return ModelInfo(model, name, digest.hexdigest())
    path = Path(model) if model is not None else BUNDLED_MODEL
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    bundle = load_model(path, device=device)
    if int(bundle.tile_size) <= 0 or not float(bundle.mpp) > 0 or len(bundle.classes) < 2:
        raise ModelError(f"{path}: model metadata has an unusable tile size, µm/px or class list")
    return ModelInfo(bundle, path.name, file_sha256(path))


# --- reading tiles -------------------------------------------------------------------------------


class SampledTiles:
    """Tiles read on demand (``len`` and ``[i]``), for the slide-level stain estimate."""

    def __init__(self, reader, coords: np.ndarray, tile: int, mpp: float):
        self.reader, self.coords, self.tile, self.mpp = reader, coords, tile, mpp

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, index: int) -> np.ndarray:
        x, y = self.coords[index]
        return self.reader.read_at_mpp((int(x), int(y)), (self.tile, self.tile), self.mpp)


# --- planning ------------------------------------------------------------------------------------


def plan_tiles(reader, model_mpp: float, tile: int, overlap: int, tiles_store=None, usable=None) -> TilePlan:
    """The tiles touching tissue on a grid at the model's µm/px, with the mask and thumbnail.

    With ``tiles_store`` (a ``wsipipe tile`` store at the model's µm/px and tile size) its
    tissue mask, thumbnail and tiles are used instead of detecting and reading again. With
    ``usable`` (``wsipipe.qc.apply.usable_tissue``) the areas quality control flagged are left out.
    """
    from wsipipe.grid import build_grid
    from wsipipe.qc.apply import restrict_tissue
    from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample

    started = time.perf_counter()
    width0, height0 = reader.dimensions
    scale = model_mpp / reader.mpp
    height, width = math.ceil(height0 / scale), math.ceil(width0 / scale)
    if tiles_store is not None:
        thumbnail, mask = tiles_store.thumbnail, tiles_store.tissue_mask
        mask_downsample = float(tiles_store.meta["thumbnail_downsample"])
        mask, qc = restrict_tissue(mask, usable, mask_downsample, (reader.mpp_x, reader.mpp_y))
        store_index = np.flatnonzero(np.asarray(tiles_store.tissue_fraction[:]) > 0)
        coords = np.asarray(tiles_store.coords[:], np.int64)[store_index]
    else:
        mask_downsample = thumbnail_downsample(reader)
        thumbnail = read_thumbnail(reader, mask_downsample)
        mask, qc = restrict_tissue(
            detect_tissue(thumbnail, reader.mpp * mask_downsample),
            usable,
            mask_downsample,
            (reader.mpp_x, reader.mpp_y),
        )
        grid = build_grid(
            reader, tile_size=tile, overlap=overlap, mpp=model_mpp, tissue_mask=mask, mask_downsample=mask_downsample
        )
        coords = grid.coords[grid.tissue_fraction > 0]
        store_index = None
    positions = [(int(x), int(y)) for x, y in np.rint(coords / scale).astype(np.int64)]
    plan = TilePlan(
        height,
        width,
        tile,
        overlap,
        scale,
        positions,
        coords,
        store_index,
        mask,
        mask_downsample,
        thumbnail,
        (width0, height0),
        qc=qc,
    )
    plan.timings["tissue"] = time.perf_counter() - started
    return plan


# --- the command ----------------------------------------------------------------------------------


def _tumour_classes(classes: list[str]) -> list[int]:
    from wsipipe.classes import is_tumour

    named = [i for i, name in enumerate(classes) if i and is_tumour(name)]
    return named or list(range(1, len(classes)))


def model_normalisation(normalize: str, target, metadata: dict):
    """(method, target) that ``normalize``/``target`` mean for a model: ``model`` takes the
    method and target parameters the model file records (a model without a record: none)."""
    if normalize != "model":
        return normalize, target
    from wsipipe.stain import StainParams

    recorded = metadata.get("stain_normalisation") or {}
    method = recorded.get("method") or "none"
    if method not in NORMALIZE_METHODS or method == "model":
        raise ModelError(
            f"the model records an unknown stain normalisation {method!r}; pass {{normalize}}", parameter="normalize"
        )
    if target is None and isinstance(recorded.get("target"), dict):
        target = StainParams.from_dict(dict(recorded["target"]))
    return method, target


def _stain_normaliser(method: str, target, reader, plan: TilePlan, mpp: float, device: str):
    """Device-side normalisation of uint8 NHWC batches to the target (an image file or stain
    parameters), with this slide's stain estimate."""
    if method == "none":
        return None
    import cv2

    from wsipipe.stain import StainParams, default_target, estimate_slide_stain, get_normalizer

    reference: StainParams | np.ndarray
    if isinstance(target, StainParams):
        reference = target
    elif target is None:
        reference = default_target(method)
    else:
        image = cv2.imread(str(target), cv2.IMREAD_COLOR)
        if image is None:
            raise InvalidInputError(f"{{target}} {target}: not a readable image", parameter="target")
        reference = np.ascontiguousarray(image[..., ::-1])
    normaliser = get_normalizer(method, device=device).fit(reference)
    slide_stain = estimate_slide_stain(SampledTiles(reader, plan.coords, plan.tile, mpp), normaliser)
    return lambda pixels: normaliser.transform(pixels, source=slide_stain)


@dataclass
class _Run:
    """One run's settings as resolved before the output folder is made, and what it opened."""

    config: SegmentConfig
    outdir: Path
    info: ModelInfo
    device: str  # resolved ("cpu", "cuda:0")
    overlap: int  # resolved and checked
    dicom_seg: str | None  # the DICOM Segmentation's type, or None for no DICOM outputs
    store: Any  # the opened ``tiles`` store (a ``wsipipe.store.TileStore``) or None
    usable: Any  # quality control's usable tissue (``wsipipe.qc.apply.UsableTissue``) or None
    progress: Progress | None
    say: Say
    timings: dict[str, float]
    reader: Any = None  # the slide (a ``SlideReader``), with a built level where it lacks the model's
    pool: Any = None  # the reader processes


def segment_slide(config: SegmentConfig, *, progress: Progress | None = None, say: Say | None = None) -> SegmentResult:
    """Segment ``config.slide`` into ``config.output`` (``wsipipe.stages.segment.run``); the result
    is also written as report.json.

    Every check that can refuse the inputs runs before the output folder is made, so a refused run
    leaves nothing behind and its error is the only line it prints (the device note waits); a
    slide that is not brightfield H&E is refused by quality control then too.
    """
    from wsipipe.dicom.outputs import resolve_dicom_seg
    from wsipipe.inference.sliding import check_overlap, default_overlap
    from wsipipe.qc.apply import usable_tissue
    from wsipipe.slide import open_slide
    from wsipipe.slide.built import LEVELS_FOLDER, with_level_for

    say = say or (lambda message: None)
    dicom_seg = resolve_dicom_seg(config.slide, config.dicom_seg)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    notes: list[str] = []
    device = str(resolve_device(config.device, notes.append))
    readers = reader_count(device) if config.readers is None else config.readers
    info = load_model_info(config.model, device)
    timings["load"] = time.perf_counter() - started
    tile = int(info.bundle.tile_size)
    store = _open_tiles_store(config.tiles, info.bundle, config.overlap) if config.tiles else None
    overlap = int(store.meta["overlap"]) if store is not None else config.overlap
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    check_overlap(overlap, tile)
    with open_slide(config.slide, backend=config.backend, mpp_override=config.mpp_override) as reader:
        reader.mpp  # noqa: B018 - a slide without µm/px fails here, naming mpp_override
        # One clear error when the slide cannot give the model's µm/px, even through a built level.
        reader.check_mpp(info.bundle.mpp, buildable=True)
        t0 = time.perf_counter()
        usable = usable_tissue(reader, config.qc)  # refuses a slide that is not brightfield H&E
        timings["qc"] = time.perf_counter() - t0
        for note in notes:
            say(note)
        outdir = make_output_folder(config.output)
        with folder_lock(outdir):
            levels = outdir / LEVELS_FOLDER
            t0 = time.perf_counter()
            with_level = with_level_for(reader, info.bundle.mpp, levels, say)  # built once for a slide lacking one
            if with_level is not reader:
                timings["level"] = time.perf_counter() - t0
            pool = (
                None
                if store is not None
                else start_readers(config.slide, config.mpp_override, readers, levels, config.backend)
            )
            run_ = _Run(
                config,
                outdir,
                info,
                device,
                overlap,
                dicom_seg,
                store,
                usable,
                progress,
                say,
                timings,
                with_level,
                pool,
            )
            try:
                result = _segment(run_)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
    return result


def _segment(run_: _Run) -> SegmentResult:
    """The prediction store (made, resumed or found complete), then the outputs."""
    from wsipipe.inference.omezarr import (
        build_pyramid,
        create_prediction_store,
        is_complete,
        open_prediction_store,
    )
    from wsipipe.inference.stitch import StripStitcher, remove_journals

    config, reader, timings, overlap, store = run_.config, run_.reader, run_.timings, run_.overlap, run_.store
    bundle = run_.info.bundle
    normalize, target = model_normalisation(config.normalize, config.target, bundle.metadata)
    tile, classes = int(bundle.tile_size), list(bundle.classes)
    plan = plan_tiles(reader, bundle.mpp, tile, overlap, store, run_.usable)
    timings["tissue"] = plan.timings["tissue"]
    # the tissue mask too: the label map is restricted to it (quality control may change it)
    identity = repr((run_.info.sha256, normalize, str(target), reader.mpp, reader.dimensions, overlap)).encode()
    identity += hashlib.sha256(np.ascontiguousarray(plan.tissue_mask > 0).tobytes()).digest()
    fingerprint = hashlib.sha256(identity + np.asarray(plan.positions, np.int64).tobytes()).hexdigest()

    final = run_.outdir / PREDICTION_NAME
    partial = run_.outdir / (PREDICTION_NAME + PARTIAL_SUFFIX)
    tiles_run = 0
    if final.exists():
        prediction = open_prediction_store(final)
        if prediction.fingerprint != fingerprint:
            raise StoreError(f"{final}: made from another slide, model or settings; remove it or use another -o")
        run_.say(f"{final} is complete; writing the regions and report again from it")
    elif is_complete(partial) and open_prediction_store(partial).fingerprint == fingerprint:
        prediction = open_prediction_store(partial)  # finished, but killed before its outputs were written
    else:
        stain = None
        if plan.positions:
            t0 = time.perf_counter()
            stain = _stain_normaliser(normalize, target, reader, plan, bundle.mpp, run_.device)
            timings["stain"] = time.perf_counter() - t0
        remove_temporaries(partial)  # journal rewrites a kill cut short; they would end up in the store
        prediction = create_prediction_store(
            partial,
            height=plan.height,
            width=plan.width,
            class_names=classes,
            mpp=bundle.mpp,
            slide_mpp=reader.mpp,
            chunk=CHUNK,
            fingerprint=fingerprint,
        )
        stitcher = StripStitcher(
            prediction.probabilities,
            prediction.labels,
            partial,
            tile_size=tile,
            overlap=overlap,
            chunk=CHUNK,
            fingerprint=fingerprint,
            strip_width=STRIP_WIDTH,
            inside=plan.tissue,  # the label map holds only what the areas, regions and report count
        )
        order = stitcher.plan(plan.positions)
        todo = np.array([i for i, _, _, _ in order], np.int64)
        tiles_run = len(todo)
        runner = Runner(bundle, run_.device, config.batch_size, stain=stain, say=run_.say)
        positions = [(x, y) for _, x, y, _ in order]
        if plan.store_index is not None:  # the tiles of the ``tiles`` store
            batches = store_batches(store, plan.store_index[todo], positions, config.batch_size)
        else:
            batches = slide_batches(
                plan.coords[todo],
                positions,
                tile=tile,
                mpp=bundle.mpp,
                batch_size=config.batch_size,
                reader=reader,
                pool=run_.pool,
                device=run_.device,
            )
        t0 = time.perf_counter()
        _run_tiles(batches, len(order), runner, stitcher, run_.progress, timings)
        stitcher.finish()
        timings["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        remove_journals(partial)
        build_pyramid(prediction)
        timings["pyramid"] = time.perf_counter() - t0
        prediction = open_prediction_store(partial)
    return _write_outputs(run_, plan, prediction, normalize, tiles_run)


def _run_tiles(batches, total, runner, stitcher, progress: Progress | None, timings) -> None:
    """The engine's ``run``, telling ``progress`` of each batch; adds where the time went to ``timings``."""
    done = 0

    def on_batch(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    spent = run(batches, runner, stitcher, on_batch=on_batch)
    timings.update({f"inference_{name}": seconds for name, seconds in spent.items()})


def _open_tiles_store(path, bundle, overlap):
    """A ``wsipipe tile`` store made at the model's µm/px and tile size, whose tiles are reused."""
    from wsipipe.store import open_tile_store

    store = open_tile_store(path)
    if store.mpp is None or abs(store.mpp - bundle.mpp) > 0.01 * bundle.mpp or store.tile_size != bundle.tile_size:
        raise InvalidInputError(
            f"{{tiles}} {path}: tiles of {store.tile_size} px at {store.mpp} µm/px; the model needs "
            f"{bundle.tile_size} px at {bundle.mpp:g} µm/px (run 'wsipipe tile' with those, or leave out {{tiles}})",
            parameter="tiles",
        )
    if overlap is not None and overlap != int(store.meta["overlap"]):
        raise InvalidInputError(
            f"{{overlap}} {overlap}: the store at {{tiles}} was made with overlap {store.meta['overlap']}",
            parameter=("overlap", "tiles"),
        )
    return store


def _write_outputs(run_: _Run, plan: TilePlan, prediction, normalize: str, tiles_run: int) -> SegmentResult:
    """Regions, nuclei, overlay and report from the finished, tissue-restricted label map, all
    written together (``files.staged_outputs``, report.json last); a prediction store still under
    its partial name moves into place with them. ``normalize``: the method that ran."""
    import zarr

    from wsipipe.annotations import Annotation, AnnotationSet, Group, write_annotations
    from wsipipe.classes import display_name, hex_colour, palette
    from wsipipe.files import staged_outputs
    from wsipipe.inference.omezarr import finest_level_within
    from wsipipe.models.io import training_summary
    from wsipipe.postprocess.regions import RegionOptions, label_map_to_polygons
    from wsipipe.report import (
        class_pixel_counts,
        pixel_area_mm2,
        render_overlay,
        render_tile_heatmap,
        write_overlay_png,
        write_report_html,
        write_report_json,
    )

    reader, info, timings, outdir, slide_path = run_.reader, run_.info, run_.timings, run_.outdir, run_.config.slide
    classes = list(info.bundle.classes)
    names, colours = [display_name(name) for name in classes], palette(classes)
    width0, height0 = reader.dimensions
    with staged_outputs(outdir, last="report.json") as staging:
        t0 = time.perf_counter()
        labels_group = zarr.open_group(str(prediction.path / "labels" / "classes"), mode="r", zarr_format=2)
        shapes = [
            tuple(labels_group[str(i)].shape) for i in range(len(labels_group.attrs["multiscales"][0]["datasets"]))
        ]
        level = finest_level_within(shapes, REGIONS_MAX_PIXELS)
        label_map = labels_group[str(level)][:]
        downsample = plan.scale * 2**level
        options = RegionOptions()
        polygons = label_map_to_polygons(
            label_map,
            downsample=downsample,
            mpp=reader.mpp,
            class_ids=list(range(1, len(classes))),
            options=options,
            clip=(0, 0, width0, height0),
        )
        regions = AnnotationSet(mpp=reader.mpp, source=str(slide_path))
        for class_id, polys in polygons.items():
            name, colour = names[class_id], hex_colour(colours[class_id])
            regions.groups[name] = Group(name, colour)
            for number, polygon in enumerate(polys):
                regions.append(Annotation(polygon, name, color=colour, name=f"{name} {number + 1}"))
        write_annotations(regions, staging / "regions.geojson", to="geojson")
        write_annotations(regions, staging / "regions.xml", to="asap")
        timings["regions"] = time.perf_counter() - t0

        tumour_ids = _tumour_classes(classes)
        nuclei = None
        if run_.config.nuclei:
            t0 = time.perf_counter()
            tissue, tumour = _nuclei_masks(plan, label_map, tumour_ids, downsample)
            nuclei = _run_nuclei(run_, staging, tumour, tissue)
            timings["nuclei"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        counts = class_pixel_counts(prediction.labels, len(classes))  # restricted to the tissue by the stitcher
        pixel_mm2 = pixel_area_mm2(info.bundle.mpp)
        tissue_mm2 = plan.tissue_pixels() * pixel_mm2
        tumour_mm2 = float(sum(counts[i] for i in tumour_ids) * pixel_mm2)
        n_tiles = len(plan.positions)
        inference_s = timings.get("inference", 0.0)
        result = SegmentResult(
            output=outdir,
            slide=str(slide_path),
            mpp=reader.mpp,
            model={
                "name": info.name,
                "sha256": info.sha256,
                "architecture": info.bundle.metadata.get("architecture"),
                "mpp": info.bundle.mpp,
                "tile_size": plan.tile,
                "classes": classes,
                "trained_on": training_summary(info.bundle.metadata),
            },
            run={"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": _command_line()},
            dimensions=[width0, height0],
            tissue_area_mm2=tissue_mm2,
            qc=plan.qc,
            tumour_area_mm2=tumour_mm2,
            tumour_fraction=tumour_mm2 / tissue_mm2 if tissue_mm2 > 0 else None,
            **(_nuclei_figures(nuclei) if nuclei is not None else {}),
            class_areas_mm2={names[i]: float(counts[i] * pixel_mm2) for i in range(1, len(classes))},
            n_tiles=n_tiles,
            n_regions={names[c]: len(p) for c, p in polygons.items()},
            # the polygons' own area: regions leave out islands and fill holes under min_area_um2
            regions_area_mm2={
                names[c]: sum(p.area for p in polys) * reader.mpp * reader.mpp_y / 1e6 for c, polys in polygons.items()
            },
            regions={
                "min_area_um2": options.min_area_um2,
                "simplify_um": options.simplify_um if options.simplify_um is not None else reader.mpp * downsample,
            },
            normalize=normalize,
            device=run_.device,
            overlap_px=run_.overlap,
            prediction_shape=[len(classes), plan.height, plan.width],
            timings_s=timings,
            n_tiles_run=tiles_run,
            tiles_per_s={"inference": tiles_run / inference_s if inference_s > 0 else None},
            outputs=[
                PREDICTION_NAME,
                "regions.geojson",
                "regions.xml",
                "overlay.png",
                "report.json",
                "report.html",
                *(NUCLEI_OUTPUTS if nuclei is not None else []),
            ],
            wsipipe_version=__version__,
            message="No tissue was detected on this slide: nothing was segmented." if n_tiles == 0 else None,
        )
        thumbnail = _shrink(plan.thumbnail, THUMBNAIL_MAX_SIDE)
        overlay_level = min(len(shapes) - 1, _overlay_level(shapes, thumbnail.shape[:2]))
        overlay = render_overlay(thumbnail, labels_group[str(overlay_level)][:], colours)
        write_overlay_png(staging / "overlay.png", overlay)
        timings["report"] = time.perf_counter() - t0
        timings["total"] = sum(v for k, v in timings.items() if k != "total" and not k.startswith("inference_"))
        heatmap = None
        if nuclei is not None:
            boxes = [tile["box_level0"] for tile in nuclei.tiles]
            values = [tile["cellularity"] for tile in nuclei.tiles]
            vmax = max((v for v in values if v is not None), default=0.0) or 1.0
            level0_per_px = width0 / thumbnail.shape[1]
            heatmap = (render_tile_heatmap(thumbnail, boxes, values, level0_per_px, vmax), vmax)
        write_report_json(staging / "report.json", result.to_json())
        write_report_html(staging / "report.html", result, thumbnail, overlay, heatmap, outdir=outdir)
        if prediction.path != outdir / PREDICTION_NAME:
            os.replace(prediction.path, staging / PREDICTION_NAME)
            prediction.path = staging / PREDICTION_NAME
        if run_.dicom_seg is not None:
            from wsipipe.dicom.outputs import write_dicom_outputs

            written = write_dicom_outputs(staging, run_.dicom_seg, prediction=prediction.path)
            result = dataclasses.replace(result, outputs=result.outputs + written)
            write_report_json(staging / "report.json", result.to_json())
    return result


def _nuclei_masks(plan: TilePlan, label_map: np.ndarray, tumour_ids: list[int], downsample: float):
    """(tissue, tumour) for the nuclei stage, which stretches a mask over the whole input.

    Both follow ``label_map`` (``downsample`` level-0 px per pixel) and the tissue rule on its
    grid, so the nuclei stage's areas are the report's: each label pixel is cut into k x k
    pixels (k: as many as keep the mask under ``NUCLEI_MASK_SIDE``) and the grid is cropped where
    the slide ends, to within half a small pixel."""
    width0, height0 = plan.level0_size
    k = max(1, NUCLEI_MASK_SIDE // max(label_map.shape))
    fine = downsample / k
    rows = np.minimum(np.arange(max(1, round(height0 / fine))) // k, label_map.shape[0] - 1)
    cols = np.minimum(np.arange(max(1, round(width0 / fine))) // k, label_map.shape[1] - 1)
    tissue = plan.tissue(0, label_map.shape[0], 0, label_map.shape[1], downsample)
    tumour = np.isin(label_map, tumour_ids) & tissue
    return tissue[np.ix_(rows, cols)], tumour[np.ix_(rows, cols)]


def _run_nuclei(run_: _Run, outdir: Path, tumour: np.ndarray, tissue: np.ndarray) -> NucleiResult:
    """The nuclei stage over the slide into ``outdir`` (nuclei.* and labels.zarr), on the device
    segment runs on, with the predicted tumour and the tissue as its masks."""
    from wsipipe.nuclei.stage import run_nuclei

    config = run_.config
    nuclei_config = NucleiConfig(
        input=config.slide,
        output=outdir,
        model=config.nuclei_model,
        mpp_override=config.mpp_override,
        backend=config.backend,
        device=run_.device,
        dicom=False,
        qc="off",  # segment's QC is in ``tissue``, its DICOM later
    )
    return run_nuclei(nuclei_config, tumour_mask=tumour, tissue_mask=tissue, progress=run_.progress)


def _command_line() -> str:
    """The command this process runs, for the report ("wsipipe segment ..." from the CLI)."""
    program = Path(sys.argv[0]).name
    return shlex.join(["wsipipe" if program in ("wsipipe", "__main__.py") else program, *sys.argv[1:]])


def _nuclei_figures(nuclei: NucleiResult) -> dict:
    """The nuclei stage's slide figures as the report's fields; the areas are the ones its densities divide by."""
    return {
        "nuclei_method": nuclei.method,
        "nuclei_count": nuclei.nuclei_count,
        "tumour_nuclei_count": nuclei.tumour_nuclei_count,
        "nuclei_tissue_mm2": nuclei.tissue_mm2,
        "nuclei_tumour_mm2": nuclei.tumour_mm2,
        "nuclei_per_mm2": nuclei.nuclei_per_mm2,
        "nuclei_per_mm2_tumour": nuclei.nuclei_per_mm2_tumour,
        "cellularity": nuclei.cellularity,
    }


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    factor = max_side / max(image.shape[:2])
    if factor >= 1:
        return image
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _overlay_level(shapes: list[tuple[int, int]], thumb_shape: tuple[int, int]) -> int:
    """The coarsest level still at least as detailed as the thumbnail."""
    best = 0
    for level, shape in enumerate(shapes):
        if shape[0] >= thumb_shape[0] and shape[1] >= thumb_shape[1]:
            best = level
    return best
