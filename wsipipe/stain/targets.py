"""The built-in target: stain parameters of the bundled CC0 example slide, shipped as JSON.

``wsipipe/resources/stain_target_cmu1.json`` holds, for each method, the parameters estimated from
every pixel of ``examples/data/CMU-1-Small-Region.svs`` (OpenSlide test data, CMU, CC0 1.0) at
level 0. ``write_default_target`` is how the file was made (a test recomputes it).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from wsipipe.errors import InvalidInputError
from wsipipe.files import check_regular_file
from wsipipe.stain.base import StainParams

DEFAULT_TARGET_FILE = "stain_target_cmu1.json"


def default_target(method: str) -> StainParams:
    """The shipped target parameters for ``method``."""
    data = json.loads(resources.files("wsipipe").joinpath("resources", DEFAULT_TARGET_FILE).read_text())
    if method not in data["methods"]:
        raise InvalidInputError(f"no built-in target for method {method!r}")
    return StainParams.from_dict(data["methods"][method])


def compute_default_target(slide_path: Path) -> dict:
    """The content of the default-target file, estimated from the whole example slide."""
    from wsipipe.slide import open_slide
    from wsipipe.stain import NORMALIZERS

    with open_slide(slide_path) as reader:
        width, height = reader.dimensions
        image = reader.read_region((0, 0), 0, (width, height))
    return {
        "source": "examples/data/CMU-1-Small-Region.svs, every pixel at level 0",
        "source_license": "CC0 1.0 (OpenSlide test data, Carnegie Mellon University)",
        "methods": {
            method: cls("cpu", seed=0).estimate(image, sample_pixels=width * height).to_dict()
            for method, cls in NORMALIZERS.items()
        },
    }


def write_default_target(slide_path: Path, out_path: Path) -> None:
    out_path.write_text(json.dumps(compute_default_target(slide_path), indent=2) + "\n")


def load_target_image(path: Path):
    """A target image file as uint8 RGB; ``InvalidInputError`` naming the file when unusable."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(check_regular_file(path))  # a FIFO would block Image.open for ever
    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
                raise InvalidInputError(
                    f"{{target}} {path}: greyscale image; a colour H&E image is needed", parameter="target"
                )
            return np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"{{target}} {path}: cannot read the image ({exc})", parameter="target") from None
