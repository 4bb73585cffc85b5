"""The nuclei stage: a slide or image in, nuclei outputs and figures out (``wsipipe nuclei``).

Work happens at ``WORKING_MPP`` µm/px (the classical method) or at the model's µm/px (a US-Net
model file) on core tiles with overlap (``wsipipe.nuclei.tiled``).
Tissue comes from ``wsipipe.tissue.detect_tissue`` on a thumbnail (or a mask the caller already
has); the tumour region from an optional mask covering the input (any resolution, non-zero =
tumour): an image file, or the array ``wsipipe segment --nuclei`` derives from its prediction.
Nuclei whose centroid lies in the tumour region count as malignant; cellularity is the share of
the tumour region (tumour ∩ tissue) that nuclear pixels cover, each pixel counted in the core it
lies in. The outputs are written to a staging folder and moved into OUTDIR together.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.files import folder_lock, make_output_folder, staged_outputs
from wsipipe.grid import sample_mask
from wsipipe.inference.engine import per_tile, reader_count, run
from wsipipe.nuclei import outputs
from wsipipe.nuclei.classical import (
    ClassicalParams,
    calibrate,
    haematoxylin_od,
    segment_nuclei,
)
from wsipipe.nuclei.data import WORKING_MPP
from wsipipe.nuclei.tiled import (
    DEFAULT_MARGIN_UM,
    TileDone,
    WindowPainter,
    core_tiles,
    plan_windows,
    start_workers,
)
from wsipipe.nuclei.windows import (
    NormalisedView,
    UsnetWindows,
    WindowedInput,
    open_windowed,
    pixels_only,
    usnet_labels,
)
from wsipipe.qc.apply import restrict_tissue
from wsipipe.stages.nuclei import NucleiConfig, NucleiResult
from wsipipe.tissue import THUMBNAIL_MPP

log = logging.getLogger(__name__)

#: The nuclei model shipped in the package (trained by the command in its metadata and the README).
BUNDLED_NUCLEI_MODEL = Path(__file__).resolve().parents[1] / "resources" / "models" / "nuclei-usnet.safetensors"
#: Plain images, read whole (anything else is opened as a slide).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
#: µm/px assumed for an image without ``mpp_override`` (a 40x scan), with a warning.
DEFAULT_IMAGE_MPP = 0.25
#: Core tile side at the working µm/px (512 µm).
CORE_PX = 1024
#: Cores used to calibrate a slide's stain matrix and threshold (the most tissue-rich ones).
CALIBRATION_CORES = 8


def open_input(
    path: Path, mpp_override: float | None, backend: str | None = None, mpp: float = WORKING_MPP
) -> WindowedInput:
    """The input as seen at ``mpp`` µm/px: a plain image read whole, else a slide."""
    as_image = path.suffix.lower() in IMAGE_SUFFIXES or (
        path.suffix.lower() in {".tif", ".tiff"} and mpp_override is None and _is_plain_tiff(path)
    )
    return open_windowed(path, mpp_override, backend, mpp, as_image, DEFAULT_IMAGE_MPP, THUMBNAIL_MPP)


def _is_plain_tiff(path: Path) -> bool:
    """A single-page TIFF without resolution metadata (like MoNuSeg's), read as an image."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not isinstance(page, tifffile.TiffPage):
                return False
            return len(tif.pages) == 1 and not page.is_tiled and "ImageDescription" not in page.tags
    except Exception:  # not a TIFF tifffile understands: let the slide readers say why
        return False


def read_tumour_mask(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    if not path.is_file():
        raise InvalidInputError(f"{{tumour_mask}} {path}: no such file", parameter="tumour_mask")
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 0
    except Exception as exc:
        raise InvalidInputError(
            f"{{tumour_mask}} {path}: not a readable image ({exc})", parameter="tumour_mask"
        ) from None


def _scaled(mask: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a whole-input mask under working-pixel ``box`` (y0, x0, y1, x1), nearest sampled."""
    y0, x0, y1, x1 = box
    return sample_mask(mask, (shape[1], shape[0]), np.arange(y0, y1) + 0.5, np.arange(x0, x1) + 0.5)


def run_nuclei(
    config: NucleiConfig,
    *,
    tumour_mask: np.ndarray | None = None,
    tissue_mask: np.ndarray | None = None,
    params: ClassicalParams = ClassicalParams(),
    progress: Callable[[int, int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> NucleiResult:
    """Segment the nuclei of ``config.input`` into ``config.output`` (``wsipipe.stages.nuclei.run``);
    the result is also written as nuclei.json.

    Without a model the classical method runs with ``params``; with a US-Net model file the
    network does (at the model's µm/px) and ``params`` is not used. ``tumour_mask`` (instead of
    ``config.tumour_mask``'s file) and ``tissue_mask`` (default: detected on a thumbnail) are boolean
    arrays covering the whole input at any resolution, as ``wsipipe segment --nuclei`` has them.
    Quality control leaves the areas it flags out of the tissue of a slide (plain images are not
    checked) and refuses a slide that is not brightfield H&E. ``say``: the stage's notes (default:
    this module's logger's warnings).
    """
    from wsipipe.dicom.outputs import dicom_outputs_wanted, write_dicom_outputs
    from wsipipe.tissue import detect_tissue

    say = say or log.warning
    input_path, outdir, model = config.input, config.output, config.model
    dicom = dicom_outputs_wanted(input_path, config.dicom, "dicom")
    network = _load_nuclei_model(model, config.device, say) if model is not None else None
    mpp = network.mpp if network is not None else WORKING_MPP
    usable, qc_report, slide_mpp = _quality_control(input_path, config.qc, config.mpp_override, config.backend)
    source = open_input(input_path, config.mpp_override, config.backend, mpp)
    tumour = tumour_mask.astype(bool) if tumour_mask is not None else read_tumour_mask(config.tumour_mask)
    with folder_lock(make_output_folder(outdir)):  # also deletes what a killed run left half-written
        with staged_outputs(outdir, last="nuclei.json") as staging:
            height, width = source.shape
            tissue = (
                tissue_mask if tissue_mask is not None else detect_tissue(source.thumbnail, THUMBNAIL_MPP)
            ).astype(bool)
            if usable is not None:
                tissue, qc_report = restrict_tissue(tissue, usable, source.level0_shape[1] / tissue.shape[1], slide_mpp)
            cores = list(core_tiles(height, width, CORE_PX))
            tissue_fraction = {c: float(_scaled(tissue, source.shape, c).mean()) for c in cores}
            with_tissue = [c for c in cores if tissue_fraction[c] > 0]
            if not with_tissue:
                say(f"{source.name}: no tissue found; every core is segmented")
                with_tissue = cores
                tissue = np.ones_like(tissue)
                tissue_fraction = dict.fromkeys(cores, 1.0)
            richest = sorted(with_tissue, key=lambda c: -tissue_fraction[c])[:CALIBRATION_CORES]
            richest_pixels = np.concatenate([source.read(c).reshape(-1, 3) for c in richest])[None]
            calibration = calibrate(richest_pixels)

            stain = None  # the input's stain parameters, for a model's normalised view
            if network is not None and model is not None:
                method = f"usnet:{model.name}"
                stain = input_stain(network.metadata, richest_pixels)
                settings = {"model": str(model), "instances": network.metadata.get("instances")}
                min_pixels = split_views(network.metadata.get("instances"))[1].get("min_pixels", 0)
            else:
                method = "classical"
                settings = vars(params)
                min_pixels = params.min_area_um2 / (mpp * mpp)
            pixel_mm2 = (mpp / 1000.0) ** 2
            labels = outputs.create_label_store(
                staging / "labels.zarr",
                source.shape,
                512,
                {
                    "mpp": mpp,
                    "level0_px_per_px": source.scale,
                    "level0_shape": list(source.level0_shape),
                    "method": method,
                    "params": settings,
                    "min_area_um2": min_pixels * mpp * mpp,
                },
            )
            in_tumour: list[bool] = []
            counts = dict.fromkeys(cores, (0, 0))  # (nuclei, tumour nuclei) kept by each core
            tumour_nuclear_px = dict.fromkeys(cores, 0)  # nuclear pixels in each core's tumour ∩ tissue
            done = 0

            def on_tile(tile: TileDone) -> None:
                nonlocal done
                flags = [
                    tumour is not None and bool(_scaled(tumour, source.shape, _point_box(n))[0, 0]) for n in tile.nuclei
                ]
                in_tumour.extend(flags)
                counts[tile.core] = (len(tile.nuclei), int(sum(flags)))
                if tumour is not None and tile.painted is not None and tile.window is not None:
                    # a pixel counts in the core it lies in, whichever tile kept its nucleus
                    for core, box, painted in _pieces_by_core(tile.painted, tile.window, source.shape):
                        if painted.any():
                            region = _scaled(tumour, source.shape, box) & _scaled(tissue, source.shape, box)
                            tumour_nuclear_px[core] += int(np.count_nonzero(painted & region))
                done += 1
                if progress:
                    progress(done, len(cores))

            plan = plan_windows(
                source.shape, CORE_PX, round(DEFAULT_MARGIN_UM / mpp), skip=lambda *core: tissue_fraction[core] == 0
            )
            nuclei = _segment_windows(
                source, plan, network, stain, mpp, calibration, params, labels, on_tile, min_pixels
            )
            outputs.finish_label_store(staging / "labels.zarr")
            tiles = []
            for core in cores:
                core_tissue = _scaled(tissue, source.shape, core)
                core_tumour = _scaled(tumour, source.shape, core) & core_tissue if tumour is not None else None
                y0, x0, y1, x1 = (round(side * source.scale) for side in core)
                tiles.append(
                    outputs.TileSummary(
                        x0,
                        y0,
                        x1,
                        y1,
                        *counts[core],
                        float(core_tissue.sum()) * pixel_mm2,
                        float(core_tumour.sum()) * pixel_mm2 if core_tumour is not None else 0.0,
                        tumour_nuclear_px[core] * pixel_mm2,
                    )
                )
            flags = np.asarray(in_tumour, dtype=bool)
            outputs.write_csv(staging / "nuclei.csv", nuclei, flags, source.scale, mpp)
            outputs.write_geojson(staging / "nuclei.geojson", nuclei, flags, source.scale, mpp)
            slide = outputs.summary_figures(
                len(nuclei),
                int(flags.sum()),
                sum(t.tissue_mm2 for t in tiles),
                sum(t.tumour_mm2 for t in tiles),
                sum(t.tumour_nuclear_mm2 for t in tiles),
            )
            result = NucleiResult(
                output=outdir,
                input=str(input_path),
                method=method,
                mpp=mpp,
                tumour_mask="array" if tumour_mask is not None else _describe_mask(config.tumour_mask),
                calibration=calibration.to_dict(),
                input_stain=stain.to_dict() if stain is not None else None,
                qc=qc_report,
                **slide,
                tiles=[t.figures() for t in tiles if t.tissue_mm2 > 0 or t.nuclei],
            )
            outputs.write_json(staging / "nuclei.json", result.to_json())
            if dicom:
                write_dicom_outputs(staging)
        return result


def _segment_windows(
    source: WindowedInput,
    plan,
    network,
    stain,
    mpp: float,
    calibration,
    params: ClassicalParams,
    labels,
    on_tile,
    min_pixels: float,
):
    """Every planned window through the inference engine into ``labels``; the nuclei in id order.

    The windows are read (reader processes for a slide) a few batches ahead; a model runs them on
    its device; the instance step (the watershed, or the whole classical method) runs in worker
    processes while the next windows are read and run; the painting keeps the raster order.
    """
    windows = [window for _, window in plan if window is not None]
    runner: Callable[..., Any]  # the US-Net's views, or the windows' pixels as they are (classical)
    if network is not None:
        views, settings = split_views(network.metadata.get("instances"))
        normaliser = normalised_view(network.metadata)
        model_device = str(next(network.model.parameters()).device)
        batch = windows_per_batch(model_device)
        runner = UsnetWindows(
            network,
            model_device,
            batch,
            views,
            normaliser is not None,
            settings.get("score_threshold", _default_score_threshold()),
            say=log.warning,
        )
        prepare = NormalisedView(normaliser, stain) if normaliser is not None else None
        label = functools.partial(usnet_labels, **settings)
        workers = instance_workers(model_device, len(windows))
    else:
        batch, runner, prepare = 1, pixels_only, None
        label = functools.partial(_classical_labels, mpp=mpp, calibration=calibration, params=params)
        workers = instance_workers(None, len(windows))
    haematoxylin = functools.partial(haematoxylin_od, stain_matrix=calibration.stain_matrix)
    readers = window_readers(model_device if network is not None else "cpu") if len(windows) > 1 else 0
    pool = start_workers(workers)
    try:
        painter = WindowPainter(
            plan,
            label,
            haematoxylin,
            labels,
            on_tile=on_tile,
            min_pixels=min_pixels,
            pool=pool,
            depth=max(2, 2 * workers),
        )
        run(source.batches(windows, batch, prepare, readers), runner, painter)
        return painter.finish()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _default_score_threshold() -> float:
    """``usnet_instances``'s detection threshold, for a model that records none."""
    from wsipipe.models.usnet import usnet_instances

    return inspect.signature(usnet_instances).parameters["score_threshold"].default


#: Windows per batch on a CUDA device (each 1 152 px square at 0.5 µm/px, 81 tiles of 128 px).
CUDA_WINDOWS_PER_BATCH = 4


def windows_per_batch(device: str) -> int:
    """Windows a runner takes at once: one on the CPU, where a batch changes the sums (see
    ``UsnetWindows``) and gains nothing (a window is already a large input), more with CUDA."""
    return CUDA_WINDOWS_PER_BATCH if device.startswith("cuda") else 1


def window_readers(device: str) -> int:
    """Reader processes for the windows: the engine's count with CUDA; one on the CPU, where it
    reads about fifty times as fast as the network runs the windows, and a second would only hold
    memory."""
    return reader_count(device) if device.startswith("cuda") else 1


def instance_workers(device: str | None, windows: int) -> int:
    """Worker processes for the instance step (none for a single window): with a model on the
    CPU one (the network needs the cores; the watershed is a small part of the time), with CUDA
    half the cores, and for the classical method, which is all instance step, every core."""
    if windows < 2:
        return 0
    cores = len(os.sched_getaffinity(0))
    if device is None:
        count = cores
    elif device.startswith("cuda"):
        count = max(1, cores // 2)
    else:
        count = 1
    return min(count, windows)


def _classical_labels(values: dict, *, mpp: float, calibration, params: ClassicalParams) -> np.ndarray:
    return segment_nuclei(values["rgb"], mpp, calibration, params)


def _quality_control(path: Path, qc: str, mpp_override: float | None, backend: str | None):
    """(usable tissue or None, what nuclei.json says of QC, the slide's µm/px), before the output
    folder is made."""
    from wsipipe.qc.apply import check_qc_option, usable_tissue

    check_qc_option(qc)
    if qc == "off":
        return None, {"mode": "off"}, (None, None)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None, {"mode": "not run: a plain image, not a slide"}, (None, None)
    from wsipipe.slide import open_slide

    with open_slide(path, backend=backend, mpp_override=mpp_override) as reader:
        usable = usable_tissue(reader, qc)
        assert usable is not None  # qc is not 'off' here
        if not usable.mask.any():  # else the no-tissue fallback below would segment every core
            raise InvalidInputError(
                f"{path}: quality control left no usable tissue "
                f"({usable.summary.get('verdict_reason', 'every area flagged')}); "
                "pass {qc} off to run anyway",
                parameter="qc",
            )
        return usable, {"mode": qc}, (reader.mpp_x, reader.mpp_y)


def _pieces_by_core(painted: np.ndarray, window: tuple[int, int, int, int], shape: tuple[int, int]):
    """(core, box, the part of ``painted`` in box) for each core (of ``core_tiles(*shape, CORE_PX)``)
    that ``window`` overlaps; box is the overlap, (y0, x0, y1, x1) in working pixels."""
    wy0, wx0, wy1, wx1 = window
    for row in range(wy0 // CORE_PX, (wy1 - 1) // CORE_PX + 1):
        for col in range(wx0 // CORE_PX, (wx1 - 1) // CORE_PX + 1):
            core = (
                row * CORE_PX,
                col * CORE_PX,
                min((row + 1) * CORE_PX, shape[0]),
                min((col + 1) * CORE_PX, shape[1]),
            )
            box = (max(core[0], wy0), max(core[1], wx0), min(core[2], wy1), min(core[3], wx1))
            yield core, box, painted[box[0] - wy0 : box[2] - wy0, box[1] - wx0 : box[3] - wx0]


def _describe_mask(mask: Path | None) -> str | None:
    return None if mask is None else str(mask)


def resolve_nuclei_model(model: str | Path) -> Path:
    """A nuclei model option's file: the word ``bundled`` names the model shipped in the package."""
    return BUNDLED_NUCLEI_MODEL if str(model) == "bundled" else Path(model)


def check_nuclei_model(path: Path) -> None:
    """Refuse a model file that is not a nuclei (US-Net) model, reading only its metadata."""
    from wsipipe.errors import ModelError
    from wsipipe.models.io import read_metadata

    architecture = read_metadata(path)["architecture"]
    if architecture != "usnet":
        raise ModelError(f"{path}: a {architecture} model, not a nuclei (usnet) model")


def _load_nuclei_model(path: Path, device: str, say: Callable[[str], None]):
    from wsipipe.device import resolve_device
    from wsipipe.models.io import load_model

    check_nuclei_model(path)
    return load_model(path, resolve_device(device, say))


def usnet_forward(
    bundle, views: int = 1, stain=None
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """rgb window -> the network's (segmentation, boxes, scores, distance) on the model's device,
    one window as ``wsipipe nuclei`` runs each (``UsnetWindows``); distance is None for a model
    without that output.

    With ``views`` 8 the segmentation (and distance) is the mean over the window's four turns, each
    also mirrored (test-time augmentation): it steadies nuclear borders, which is where PQ and AJI
    are lost. Detections come from the window as it is; pooling the views' detections scored lower.
    A model with a ``normalised_view`` (``wsipipe train --normalised-view``) also sees the window
    mapped onto its training images' mean stain statistics, with the input's parameters ``stain``
    (a slide's, from ``input_stain``; None: the window's own), and every output (segmentation,
    distance, each anchor's score and box) is the mean of the two: inputs stained unlike the
    training images gain, typical ones hardly change.
    """
    normaliser = normalised_view(bundle.metadata)
    device = str(next(bundle.model.parameters()).device)
    windows = UsnetWindows(bundle, device, 1, views, normaliser is not None, score_threshold=-1.0, say=log.warning)
    prepare = NormalisedView(normaliser, stain) if normaliser is not None else None

    def forward(rgb: np.ndarray):
        tiles = rgb[None] if prepare is None else prepare(rgb[None])
        out = per_tile(windows(tiles), 0)
        return out["segmentation"], out["boxes"], out["scores"], out.get("distance")

    return forward


def normalised_view(metadata: dict):
    """The stain normaliser fitted to the target of a nuclei model's ``normalised_view`` record,
    or None for a model without one."""
    from wsipipe.errors import ModelError
    from wsipipe.stain import NORMALIZERS, StainParams, get_normalizer

    record = metadata.get("normalised_view")
    if record is None:
        return None
    if (
        not isinstance(record, dict)
        or record.get("method") not in NORMALIZERS
        or not isinstance(record.get("target"), dict)
    ):
        raise ModelError(f"the model records an unusable normalised view {record!r}")
    return get_normalizer(record["method"]).fit(StainParams.from_dict(dict(record["target"])))


def input_stain(metadata: dict, pixels: np.ndarray):
    """An input's stain parameters for a nuclei model with a normalised view (None for one
    without, or when ``pixels``, the input's most tissue-rich cores, hold too little tissue: each
    window is then estimated on its own)."""
    from wsipipe.errors import StainError

    normaliser = normalised_view(metadata)
    if normaliser is None:
        return None
    try:
        return normaliser.estimate(pixels)
    except StainError as exc:
        log.warning("normalised view: stain estimated per window: %s", exc)
        return None


def split_views(settings: dict | None) -> tuple[int, dict]:
    """A model's ``instances`` settings as (``usnet_forward``'s views, ``usnet_instances`` arguments)."""
    rest = dict(settings or {})
    return rest.pop("views", 1), rest


def usnet_segmenter(bundle, stain=None) -> Callable[[np.ndarray], np.ndarray]:
    """rgb window -> instance labels with a US-Net model bundle, with the instance settings its
    metadata records (``instances``: chosen when it was trained), else their defaults; ``stain``
    as ``usnet_forward``'s."""
    from wsipipe.models.usnet import usnet_instances

    views, settings = split_views(bundle.metadata.get("instances"))
    forward = usnet_forward(bundle, views, stain)
    return lambda rgb: usnet_instances(*forward(rgb), **settings)


def _point_box(nucleus) -> tuple[int, int, int, int]:
    y, x = int(round(nucleus.centroid_y)), int(round(nucleus.centroid_x))
    return y, x, y + 1, x + 1
