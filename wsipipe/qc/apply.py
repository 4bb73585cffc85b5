"""``--qc auto|off|PATH`` for the stages: the usable-tissue mask, and the refusal of a slide that is
not brightfield H&E."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wsipipe.errors import InvalidInputError, NotBrightfieldHEError
from wsipipe.slide.base import SlideReader


@dataclass
class UsableTissue:
    """A slide's usable-tissue mask (uint8, 1 = usable) and where it came from."""

    mask: np.ndarray
    summary: dict  # the qc.json figures (empty when only a qc.zarr was given)
    source: str  # "auto" or the path reused


def check_qc_option(option: str) -> None:
    if option not in ("auto", "off") and not Path(option).exists():
        raise InvalidInputError(
            f"{{qc}} {option}: not 'auto', 'off' or an existing qc output folder or qc.zarr", parameter="qc"
        )


def usable_tissue(reader: SlideReader, option: str) -> UsableTissue | None:
    """The usable tissue ``--qc option`` means for ``reader`` (None for 'off'); refuses a slide QC
    finds not to be brightfield H&E."""
    check_qc_option(option)
    if option == "off":
        return None
    if option == "auto":
        from wsipipe.qc.stage import run_qc

        result = run_qc(reader)
        found = UsableTissue(result.usable, result.summary, "auto")
    else:
        from wsipipe.qc.outputs import read_qc_masks

        path = Path(option)
        attrs, mask = read_qc_masks(path)
        if list(attrs.get("slide_size", [])) != list(reader.dimensions):
            raise InvalidInputError(
                f"{{qc}} {option}: made for a {'x'.join(map(str, attrs.get('slide_size', ['?'])))} px slide, "
                f"not this {reader.dimensions[0]}x{reader.dimensions[1]} px one",
                parameter="qc",
            )
        found = UsableTissue(mask, _summary_beside(path), str(path))
    brightfield = found.summary.get("brightfield") or {}
    if brightfield.get("value") is False:
        raise NotBrightfieldHEError(
            f"{reader.path}: not brightfield ({brightfield['reason']}); pass {{qc}} off to run anyway",
            parameter="qc",
        )
    if (found.summary.get("stain") or {}).get("looks_like_he") is False:
        raise NotBrightfieldHEError(
            f"{reader.path}: the stain is not H&E (its stain vectors are far from haematoxylin and eosin); "
            "pass {qc} off to run anyway",
            parameter="qc",
        )
    return found


def _summary_beside(path: Path) -> dict:
    """The qc.json of a qc folder (or beside its qc.zarr); empty when there is none."""
    summary = (path if path.is_dir() and (path / "qc.json").is_file() else path.parent) / "qc.json"
    if not summary.is_file():
        return {}
    try:
        data = json.loads(summary.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{{qc}} {path}: {summary} is not readable JSON ({exc})", parameter="qc") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{{qc}} {path}: {summary} is not a qc.json", parameter="qc")
    return data


def restrict_tissue(
    tissue: np.ndarray,
    usable: UsableTissue | None,
    level0_px_per_mask_px: float,
    mpp_xy: tuple[float | None, float | None],
) -> tuple[np.ndarray, dict]:
    """``tissue`` less what QC flagged (``usable`` resized to it), and what report.json says of it."""
    if usable is None:
        return tissue, {"mode": "off"}
    height, width = tissue.shape[:2]
    resized = cv2.resize(usable.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    kept = (tissue > 0) & (resized > 0)
    left_out = int(np.count_nonzero(tissue)) - int(np.count_nonzero(kept))
    mpp_x, mpp_y = mpp_xy
    pixel_mm2 = mpp_x * (mpp_y or mpp_x) * level0_px_per_mask_px**2 / 1e6 if mpp_x else None
    summary = usable.summary
    report = {
        "mode": "auto" if usable.source == "auto" else "reused",
        "source": usable.source,
        "usable": summary.get("usable"),
        "verdict_rule": summary.get("verdict_rule"),
        "verdict_reason": summary.get("verdict_reason"),
        "left_out_fraction": left_out / max(1, int(np.count_nonzero(tissue))),
        "left_out_mm2": left_out * pixel_mm2 if pixel_mm2 is not None else None,
        "artefact_fractions": {name: fig["fraction"] for name, fig in (summary.get("artefacts") or {}).items()},
    }
    return kept.astype(tissue.dtype), report
