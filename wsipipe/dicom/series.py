"""Which ``.dcm`` files make up a slide: VL Whole Slide Microscopy Image instances grouped by
SeriesInstanceUID, their base (full-resolution) level, and the checks that refuse a bad series
before any pixel is read.

Only headers are read (up to the pixel data), so grouping an archive costs a few kB per file.
Messages name files and counts, never patient data or descriptions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import InvalidInputError, SlideOpenError

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
DICOM_SUFFIX = ".dcm"
#: Where the "DICM" magic sits in a DICOM Part 10 file.
MAGIC_OFFSET = 128
#: Encapsulated pixel data ends with this Sequence Delimitation Item; a file cut short lacks it.
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: Header elements discovery and the checks need (read with ``specific_tags``).
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
]


class DicomInputError(SlideOpenError, InvalidInputError):
    """A DICOM input that can never be read as one slide (exit code 2)."""


@dataclass(frozen=True)
class DicomInstance:
    path: Path
    sop_class: str
    sop_instance_uid: str
    series_uid: str
    series_description: str
    image_type: tuple[str, ...]
    width: int  # total pixel matrix (the whole level), or the frame for non-tiled images
    height: int

    @property
    def is_wsi(self) -> bool:
        return self.sop_class == WSI_SOP_CLASS

    @property
    def flavour(self) -> str:
        """VOLUME, LABEL, OVERVIEW or THUMBNAIL (ImageType value 3)."""
        return self.image_type[2].upper() if len(self.image_type) > 2 else ""

    @property
    def is_base(self) -> bool:
        """A full-resolution pyramid level: VOLUME not RESAMPLED (ImageType value 4 NONE)."""
        return self.flavour == "VOLUME" and len(self.image_type) > 3 and self.image_type[3].upper() == "NONE"


@dataclass(frozen=True)
class DicomSeries:
    """One slide: the WSI instances sharing a SeriesInstanceUID."""

    uid: str
    instances: tuple[DicomInstance, ...]

    @property
    def levels(self) -> list[DicomInstance]:
        """The pyramid levels, largest first."""
        volumes = [i for i in self.instances if i.flavour == "VOLUME"]
        return sorted(volumes, key=lambda i: -i.width * i.height)

    @property
    def base(self) -> DicomInstance:
        return self.levels[0]

    @property
    def description(self) -> str:
        return next((i.series_description for i in self.instances if i.series_description), "")


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A folder, a ``.dcm`` file, or a file with the DICOM Part 10 magic: read as DICOM."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    if not path.is_file():  # never open a FIFO or a device to look for the magic
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_instance(path: Path) -> DicomInstance:
    """The header of one file; DicomInputError when it is not DICOM (or not a regular file: a FIFO
    would block the read for ever)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from wsipipe.files import check_regular_file

    check_regular_file(path, DicomInputError)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomInputError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from None
    if "SOPClassUID" not in ds:
        raise DicomInputError(f"{path}: not a DICOM file (no SOP Class UID)")
    return DicomInstance(
        path=Path(path),
        sop_class=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        image_type=tuple(str(v) for v in (ds.get("ImageType") or ())),
        width=int(ds.get("TotalPixelMatrixColumns") or ds.get("Columns") or 0),
        height=int(ds.get("TotalPixelMatrixRows") or ds.get("Rows") or 0),
    )


def group_series(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[Path]]:
    """(the WSI series among ``paths``, by UID; the files that are not readable DICOM).

    Readable DICOM that is not a WSI image (a Segmentation, an annotation, a report) is left out.
    """
    by_uid: dict[str, list[DicomInstance]] = {}
    unreadable: list[Path] = []
    for path in paths:
        try:
            instance = read_instance(Path(path))
        except DicomInputError:
            unreadable.append(Path(path))
            continue
        if instance.is_wsi and instance.series_uid:
            by_uid.setdefault(instance.series_uid, []).append(instance)
    series = [
        DicomSeries(uid, tuple(sorted(items, key=lambda i: str(i.path)))) for uid, items in sorted(by_uid.items())
    ]
    return series, unreadable


def _folder_files(folder: Path) -> list[Path]:
    """The DICOM candidates directly in ``folder`` (regular files only: never a FIFO or a link loop)."""
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=True) and (
            entry.name.lower().endswith(DICOM_SUFFIX) or is_dicom_path(entry.path)
        ):
            files.append(Path(entry.path))
    return files


def resolve_series(path: str | os.PathLike) -> DicomSeries:
    """The one WSI series that ``path`` (a folder, or any file of the series) names, checked:
    one series, a base level present, no file cut short. DicomInputError otherwise."""
    path = Path(path)
    if path.is_dir():
        series, _ = group_series(_folder_files(path))
        if not series:  # not a DICOM folder at all: the error any folder given as a slide gets
            raise SlideOpenError(f"{path}: is a directory, not a slide file (it holds no DICOM whole-slide image)")
        if len(series) > 1:
            raise DicomInputError(
                f"{path}: holds {len(series)} DICOM whole-slide series; give one .dcm file of the slide you want"
            )
        chosen = series[0]
    else:
        instance = read_instance(path)
        if not instance.is_wsi:
            raise DicomInputError(f"{path}: a DICOM file but not a whole-slide image (SOP Class {instance.sop_class})")
        series, _ = group_series(_folder_files(path.parent))
        chosen = next(s for s in series if s.uid == instance.series_uid)
    if not chosen.levels:
        raise DicomInputError(f"{path}: the DICOM series has no pyramid level (VOLUME image)")
    if not chosen.base.is_base:
        raise DicomInputError(f"{path}: the DICOM series lacks its base level (only resampled levels are present)")
    for instance in chosen.instances:
        check_complete(instance.path)
    return chosen


def check_complete(path: Path) -> None:
    """Refuse a file cut short: encapsulated pixel data must end with its delimiter, native pixel
    data must be as long as the frames it declares."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    size = path.stat().st_size
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        with open(path, "rb") as handle:
            handle.seek(max(0, size - len(SEQUENCE_DELIMITER)))
            complete = handle.read() == SEQUENCE_DELIMITER
    else:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = frames * int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
        complete = size >= expected
    if not complete:
        raise DicomInputError(f"{path}: the DICOM file is truncated (its pixel data is cut short)")
