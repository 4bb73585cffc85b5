"""Results back as DICOM objects that reference the slide's series, for a lab's PACS.

``write_dicom_outputs(outdir)`` reads what ``segment`` or ``nuclei`` finished writing in OUTDIR
(report.json or nuclei.json, prediction.zarr, regions.geojson, nuclei.geojson) and adds, with
highdicom:

- ``prediction.seg.dcm``: a tiled DICOM Segmentation of prediction.zarr's label map (binary) or
  class probabilities (fractional), one segment per non-background class;
- ``regions.ann.dcm`` / ``nuclei.ann.dcm``: Microscopy Bulk Simple Annotations, one polygon per
  GeoJSON ring in the Slide Coordinate System (3D, mm: the GeoJSON's level-0 pixel coordinates
  mapped by the base level's position, orientation and spacing), with its area in µm²; not
  written when the GeoJSON holds no polygon (an annotation object needs at least one group).

Each references the source series: highdicom copies the Patient, Study and Frame of Reference
the standard requires and the base level's SOP Instance UID; nothing else (no private tags) is
copied. Messages never print patient data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wsipipe import __version__
from wsipipe.errors import InvalidInputError, OutputError

SEG_TYPES = ("binary", "fractional")
SEG_NAME = "prediction.seg.dcm"
REGIONS_NAME = "regions.ann.dcm"
NUCLEI_NAME = "nuclei.ann.dcm"
#: The SEG is written from the finest prediction level of at most this many pixels (the whole
#: label map is held in memory while highdicom tiles it).
SEG_MAX_PIXELS = 4096 * 4096
SEG_TILE = 256
#: Series numbers of what wsipipe writes (the slide's own series keep theirs).
SERIES_NUMBERS = {SEG_NAME: 901, REGIONS_NAME: 902, NUCLEI_NAME: 903}
#: Names a model may give its tumour class (coded as Neoplasm; other classes as Tissue).
TUMOUR_NAMES = ("tumour", "tumor", "cancer", "carcinoma")
MANUFACTURER = "wsipipe"
#: The Specimen module's attributes (container and specimen identifiers).
SPECIMEN_KEYWORDS = (
    "ContainerIdentifier",
    "IssuerOfTheContainerIdentifierSequence",
    "ContainerTypeCodeSequence",
    "SpecimenDescriptionSequence",
)


def dicom_outputs_wanted(slide_path: str | os.PathLike, requested: bool | None, option: str) -> bool:
    """Whether to write DICOM outputs for this slide, checked before any work: ``requested`` None
    means yes for a DICOM source and no otherwise; asking for them on a non-DICOM source is refused."""
    from wsipipe.dicom.series import is_dicom_path

    if requested is False:
        return False
    dicom = is_dicom_path(slide_path)
    if requested and not dicom:
        raise InvalidInputError(
            f"{{{option}}}: DICOM outputs need a DICOM source; {slide_path} is not a DICOM series", parameter=option
        )
    return dicom


def resolve_dicom_seg(slide_path: str | os.PathLike, requested: str | None) -> str | None:
    """The SEG type ``--dicom-seg`` asks for (binary, fractional, none; None: binary for a DICOM
    source), or None when no DICOM outputs are to be written."""
    if requested is not None and requested not in (*SEG_TYPES, "none"):
        raise InvalidInputError(
            f"{{dicom_seg}} {requested!r}: choose {', '.join(SEG_TYPES)} or none", parameter="dicom_seg"
        )
    wanted = dicom_outputs_wanted(slide_path, None if requested is None else requested != "none", "dicom_seg")
    return (requested or "binary") if wanted else None


def write_dicom_outputs(
    outdir: str | os.PathLike, seg_type: str = "binary", prediction: str | os.PathLike | None = None
) -> list[str]:
    """Write the DICOM counterparts of OUTDIR's finished outputs; returns the names written.

    ``prediction``: the finished prediction store, when it is not OUTDIR's ``prediction.zarr``
    (segment writes its outputs in a staging folder and may reuse the store already in place)."""
    import pydicom

    from wsipipe.dicom.series import resolve_series
    from wsipipe.files import atomic_path

    outdir = Path(outdir)
    report = _read_json(outdir / "report.json")  # segment's
    nuclei = _read_json(outdir / "nuclei.json")  # the nuclei stage's
    if report:
        slide = report["slide"]
    elif nuclei:
        slide = nuclei["input"]
    else:
        raise OutputError(f"{outdir}: neither report.json nor nuclei.json; nothing to write as DICOM")
    series = resolve_series(slide)
    source = pydicom.dcmread(series.base.path, stop_before_pixels=True)
    objects = []
    prediction = Path(prediction) if prediction is not None else outdir / "prediction.zarr"
    if report and prediction.is_dir():
        model = _algorithm(report["model"]["name"], report["model"]["sha256"])
        objects.append((SEG_NAME, lambda: _segmentation(prediction, source, seg_type, model)))
        objects.append((REGIONS_NAME, lambda: _annotations(outdir / "regions.geojson", source, REGIONS_NAME, model)))
    if nuclei and (outdir / "nuclei.geojson").is_file():
        method = _algorithm(nuclei["method"], None)
        objects.append((NUCLEI_NAME, lambda: _annotations(outdir / "nuclei.geojson", source, NUCLEI_NAME, method)))
    written = []
    for name, build in objects:
        dataset = build()
        if dataset is None:
            continue
        with atomic_path(outdir / name) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        written.append(name)
    return written


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _algorithm(name: str, weights_sha256: str | None):
    """Algorithm Identification: the model (or nuclei method), wsipipe's version, the weights' hash."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=f"wsipipe {__version__}",
        source="wsipipe",
        parameters={"weights_sha256": weights_sha256} if weights_sha256 else None,
    )


def _equipment(name: str, description: str) -> dict:
    """What every object wsipipe writes shares: new UIDs, series number, manufacturer."""
    import highdicom as hd

    return {
        "series_instance_uid": hd.UID(),
        "series_number": SERIES_NUMBERS[name],
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": "wsipipe",
        "software_versions": __version__,
        "device_serial_number": "none",
        "content_description": description,
        "content_label": name.split(".")[0].upper().replace("-", "_"),
    }


def _segmentation(prediction_path: Path, source, seg_type: str, algorithm):
    import highdicom as hd
    import zarr
    from pydicom.sr.codedict import codes

    from wsipipe.inference.omezarr import open_prediction_store

    store = open_prediction_store(prediction_path)
    labels_group = zarr.open_group(str(prediction_path / "labels" / "classes"), mode="r", zarr_format=2)
    level = seg_level(
        [tuple(labels_group[str(i)].shape) for i in range(len(labels_group.attrs["multiscales"][0]["datasets"]))]
    )
    classes = store.class_names
    if seg_type == "binary":
        pixels = labels_group[str(level)][:]
    else:
        probabilities = zarr.open_group(str(prediction_path), mode="r", zarr_format=2)[str(level)]
        pixels = np.moveaxis(probabilities[1:], 0, -1)[None].astype(np.float32) / 255.0
    spacing_mm = store.mpp * 2**level / 1000.0
    descriptions = []
    for number, name in enumerate(classes[1:], start=1):
        tumour = name.lower() in TUMOUR_NAMES
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if tumour else codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Neoplasm if tumour else codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    measures = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    # Image Position (Slide) is the centre of the first pixel: a SEG pixel spans ``scale`` slide
    # pixels from the slide's top-left corner, so its centre sits half of that in.
    row_mm, column_mm = (float(v) for v in measures.PixelSpacing)
    to_slide = hd.spatial.ImageToReferenceTransformer.for_image(source, for_total_pixel_matrix=True)
    first_centre = to_slide(np.array([[spacing_mm / column_mm / 2, spacing_mm / row_mm / 2]]))[0]
    segmentation = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=seg_type.upper(),
        segment_descriptions=descriptions,
        max_fractional_value=255,
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=(spacing_mm, spacing_mm),
            slice_thickness=float(measures.get("SliceThickness") or 0.0) or None,
        ),
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system="SLIDE", image_orientation=source.ImageOrientationSlide
        ),
        plane_positions=[
            hd.PlanePositionSequence(
                coordinate_system="SLIDE",
                pixel_matrix_position=(1, 1),
                image_position=tuple(float(v) for v in first_centre),
            )
        ],
        # TILED_SPARSE (per-frame positions): dciodvfy 1.00~20220618 rejects a TILED_FULL SEG without them.
        tile_pixel_array=True,
        tile_size=(SEG_TILE, SEG_TILE),
        omit_empty_frames=False,
        **_equipment(SEG_NAME, f"wsipipe {seg_type} segmentation"),
    )
    # Type 2C in the General Image module: required (empty allowed) when there is no patient orientation.
    segmentation.PatientOrientation = ""
    return segmentation


def seg_level(shapes: list[tuple[int, int]]) -> int:
    """The finest prediction level of at most SEG_MAX_PIXELS."""
    from wsipipe.inference.omezarr import finest_level_within

    return finest_level_within(shapes, SEG_MAX_PIXELS)


def geojson_rings(path: Path) -> list[tuple[str, np.ndarray, float]]:
    """(label, ring in level-0 px without its closing point, area in px²) for each ring
    of each (Multi)Polygon feature of a GeoJSON wsipipe wrote, exactly as written (the annotation
    reader would repair the odd self-touching nucleus outline, which would no longer match).
    ANN polygons have no holes, so each hole is a polygon of its own, in a group of holes."""
    from shapely.geometry import Polygon

    rings = []
    for feature in json.loads(path.read_text())["features"]:
        geometry = feature["geometry"]
        label = feature["properties"]["classification"]["name"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        for exterior, *holes in polygons:
            rings.append((label, np.asarray(exterior, np.float64)[:-1, :2], Polygon(exterior, holes).area))
            for hole in holes:
                rings.append((f"{label} holes", np.asarray(hole, np.float64)[:-1, :2], Polygon(hole).area))
    return rings


def _annotations(geojson: Path, source, name: str, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    spacing = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    um2_per_px = float(spacing[0]) * float(spacing[1]) * 1e6
    to_slide = hd.spatial.ImageToReferenceTransformer.for_image(source, for_total_pixel_matrix=True)
    by_group: dict[str, tuple[list[np.ndarray], list[float]]] = {}
    for label, ring, area in geojson_rings(geojson):
        rings, areas = by_group.setdefault(label, ([], []))
        rings.append(to_slide(ring))
        areas.append(area * um2_per_px)
    if not by_group:
        return None  # the standard wants at least one annotation group: no polygons, no file
    groups = []
    for number, (label, (rings, areas)) in enumerate(by_group.items(), start=1):
        nucleus = name == NUCLEI_NAME
        groups.append(
            hd.ann.AnnotationGroup(
                number=number,
                uid=hd.UID(),
                label=label[:64],
                annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure
                if not nucleus
                else codes.SCT.Tissue,
                annotated_property_type=codes.SCT.Nucleus
                if nucleus
                else (codes.SCT.Neoplasm if label.split(" holes")[0].lower() in TUMOUR_NAMES else codes.SCT.Tissue),
                graphic_type=hd.ann.GraphicTypeValues.POLYGON,
                graphic_data=rings,
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                measurements=[
                    hd.ann.Measurements(
                        name=codes.SCT.Area, values=np.asarray(areas, np.float32), unit=codes.UCUM.SquareMicrometer
                    )
                ],
            )
        )
    annotations = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD3D,
        annotation_groups=groups,
        **_equipment(name, f"wsipipe {name.split('.')[0]}"),
    )
    # highdicom copies the slide's Specimen module, which the annotation IOD does not hold: drop it.
    # Without it dciodvfy asks for Laterality (Type 2C, General Series): present and empty.
    for keyword in SPECIMEN_KEYWORDS:
        if keyword in annotations:
            delattr(annotations, keyword)
    annotations.Laterality = ""
    return annotations
