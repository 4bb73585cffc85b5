"""Shared fixtures. Real data comes from one setting: WSIPIPE_DATA (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSIPIPE_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_sessionstart(session):
    if os.environ.get("WSIPIPE_REQUIRE_DATA") and not (DATA / "slides").is_dir():
        raise pytest.UsageError(f"shared data required but not found at {DATA} (set WSIPIPE_DATA)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data; skipped only outside CI when it is absent."""
    if not (DATA / "slides").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def slides_dir(data_dir) -> Path:
    return data_dir / "slides"


# The shared data's files by what they are (data/README.md describes each), so a test names the
# kind of input it needs, not a file name.


@pytest.fixture(scope="session")
def cmu_small_svs(slides_dir) -> Path:
    """Aperio SVS, JPEG tiles, H&E, one level 2220 x 2967 at 0.499 µm/px."""
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def jp2k_svs(slides_dir) -> Path:
    """Aperio SVS, JPEG 2000, H&E frozen section, two levels, no µm/px in its metadata."""
    return slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"


@pytest.fixture(scope="session")
def dapi_ndpi(slides_dir) -> Path:
    """Hamamatsu NDPI, fluorescence (DAPI), 0.228 µm/px; the name holds parentheses."""
    return slides_dir / "test3-DAPI-2-(387).ndpi"


@pytest.fixture(scope="session")
def tritc_ndpi(slides_dir) -> Path:
    """Hamamatsu NDPI, fluorescence (TRITC); the name holds spaces and parentheses."""
    return slides_dir / "test3-TRITC 2 (560).ndpi"


@pytest.fixture(scope="session")
def ome_tiff(slides_dir) -> Path:
    """OME-TIFF, JPEG tiles, H&E, one level 1101 x 1101 at 0.227 µm/px."""
    return slides_dir / "OS-1-detail.ome.tif"


@pytest.fixture(scope="session")
def broken_svs(slides_dir) -> Path:
    """Not a TIFF: a corrupt file named like a slide."""
    return slides_dir / "broken.svs"


@pytest.fixture(scope="session")
def camelyon_xml(data_dir) -> Path:
    """ASAP XML: three tumour polygons of a CAMELYON17 slide (not here), level-0 float coordinates."""
    return data_dir / "annotations" / "camelyon17_patient_004_node_4.xml"


@pytest.fixture(scope="session")
def lung_dir(data_dir) -> Path:
    """``images/lung_NN.png`` H&E crops and ``masks/lung_NN.png`` tumour masks (0 / 255)."""
    return data_dir / "lung"


@pytest.fixture(scope="session")
def cpm15_dir(data_dir) -> Path:
    """CPM-15 nuclei: ``imageNN.png`` (RGBA) and ``imageNN_inst.png`` instance labels."""
    return data_dir / "nuclei" / "cpm15"


@pytest.fixture(scope="session")
def monuseg_dir(data_dir) -> Path:
    """MoNuSeg training images (``.tif``) and their nuclei outlines (ASAP-like ``.xml``)."""
    return data_dir / "nuclei" / "monuseg_train"


@pytest.fixture(scope="session")
def stain_dir(data_dir) -> Path:
    """Stain normalisation sources and targets (H&E PNG/JPEG, one IHC image)."""
    return data_dir / "stain"


@pytest.fixture()
def hold_folder_lock():
    """``hold(folder)`` locks ``folder`` from another process, as a second wsipipe run would;
    returns that process (killed after the test, if not before)."""
    import subprocess
    import sys

    holders = []

    def hold(folder, name=".wsipipe.lock"):
        code = (
            "import fcntl, sys, time; h = open(sys.argv[1], 'a'); fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); "
            "print('held', flush=True); time.sleep(120)"
        )
        holder = subprocess.Popen([sys.executable, "-c", code, str(folder / name)], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
        holder.stdout.close()


#: DICOM test series (made from the shared slides and a synthetic one by wsidicomizer, once per
#: session): name -> (source, wsidicomizer encoding). None keeps the source's own JPEG tiles
#: (opentile, lossless); "jpeg" re-encodes them (lossy); "j2k" / "jpegls" are lossless.
DICOM_CASES = {
    "cmu": ("CMU-1-Small-Region.svs", None),
    "ndpi": ("test3-DAPI-2-(387).ndpi", None),
    "synth-j2k": ("synthetic", "j2k"),
    "synth-jpegls": ("synthetic", "jpegls"),
    "synth-jpeg": ("synthetic", "jpeg"),
}


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> Path:
    """A small three-level synthetic slide (``wsipipe synth``), 0.5 µm/px."""
    from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide

    spec = SyntheticSpec(1500, 1100, mpp=0.5, tile_size=256, levels=3, seed=1)
    return write_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "synthetic.svs", spec)


@pytest.fixture(scope="session")
def dicom_series(tmp_path_factory, slides_dir, synthetic_slide):
    """``dicom_series(name)`` -> (source slide, folder holding its DICOM series), converted once."""
    made: dict[str, tuple[Path, Path]] = {}

    def convert(name: str) -> tuple[Path, Path]:
        if name not in made:
            import warnings

            from wsidicomizer import WsiDicomizer
            from wsidicomizer.wsidicomizer import SourceIdentifier

            source_name, encoding = DICOM_CASES[name]
            source = synthetic_slide if source_name == "synthetic" else slides_dir / source_name
            out = tmp_path_factory.mktemp(f"dicom-{name}")
            options = {}
            if encoding is not None:
                from wsidicom.codec.settings import Channels, Jpeg2kSettings, JpegLsSettings, JpegSettings

                settings = {
                    "j2k": Jpeg2kSettings(levels=0, channels=Channels.RGB),
                    "jpegls": JpegLsSettings(),
                    "jpeg": JpegSettings(quality=90),
                }[encoding]
                # opentile cannot parse the synthetic slide's short Aperio description: read it with openslide.
                options = {
                    "encoding": settings,
                    "force_transcoding": True,
                    "preferred_source": SourceIdentifier.OPENSLIDE,
                }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                WsiDicomizer.convert(source, out, **options)
            made[name] = (source, out)
        return made[name]

    return convert
