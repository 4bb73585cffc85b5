"""Report files: report.json, overlay.png and report.html (one page, images inline, opens from disk;
with nuclei, a per-tile cellularity heatmap too).

Every file is written under a temporary name and renamed when complete (``files.write_atomic``),
so a reader never sees a half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from wsipipe.errors import OutputError
from wsipipe.files import write_atomic

#: RGB per class index (class 0, background, is not drawn).
CLASS_COLOURS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
#: Heatmap colour stops (pale yellow -> orange -> dark red), low to high.
HEAT_STOPS = np.array([(255, 255, 204), (253, 141, 60), (189, 0, 38)], np.float32)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary name in the same directory."""
    path = Path(path)
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def write_report_json(path: str | os.PathLike, report: dict) -> Path:
    return write_bytes_atomic(path, (json.dumps(report, indent=2, sort_keys=False) + "\n").encode())


def render_overlay(thumbnail: np.ndarray, labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``thumbnail`` (h, w, 3) RGB with each non-zero class of ``labels`` tinted and outlined.

    ``labels`` may be at any resolution; it is resized (nearest) to the thumbnail.
    """
    import cv2

    height, width = thumbnail.shape[:2]
    if labels.shape != (height, width):
        labels = cv2.resize(labels.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    out = thumbnail.astype(np.float32)
    outline = max(1, round(max(height, width) / 500))
    for class_id in (int(c) for c in np.unique(labels) if c != 0):
        colour = np.array(CLASS_COLOURS[class_id % len(CLASS_COLOURS)], np.float32)
        mask = labels == class_id
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        drawn = np.ascontiguousarray(np.rint(out).astype(np.uint8))
        cv2.drawContours(drawn, contours, -1, tuple(int(c) for c in colour), outline)
        out = drawn.astype(np.float32)
    return np.rint(out).astype(np.uint8)


def heat_colour(fraction: float) -> np.ndarray:
    """RGB of ``fraction`` (0-1, clipped) on the heatmap scale."""
    position = float(np.clip(fraction, 0.0, 1.0)) * (len(HEAT_STOPS) - 1)
    low = min(int(position), len(HEAT_STOPS) - 2)
    return HEAT_STOPS[low] + (position - low) * (HEAT_STOPS[low + 1] - HEAT_STOPS[low])


def render_tile_heatmap(
    thumbnail: np.ndarray, boxes, values, level0_per_px: float, vmax: float, alpha: float = 0.6
) -> np.ndarray:
    """``thumbnail`` with each level-0 box (x0, y0, x1, y1) tinted by its value on a 0..``vmax`` scale.

    Boxes whose value is None (no tumour there, say) are left untinted.
    """
    out = thumbnail.astype(np.float32)
    height, width = thumbnail.shape[:2]
    for (x0, y0, x1, y1), value in zip(boxes, values):
        if value is None:
            continue
        c0, r0 = round(x0 / level0_per_px), round(y0 / level0_per_px)
        c1, r1 = min(width, round(x1 / level0_per_px)), min(height, round(y1 / level0_per_px))
        out[r0:r1, c0:c1] = (1 - alpha) * out[r0:r1, c0:c1] + alpha * heat_colour(value / vmax)
    return np.rint(out).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OutputError("could not encode a PNG image")
    return encoded.tobytes()


def write_overlay_png(path: str | os.PathLike, overlay: np.ndarray) -> Path:
    return write_bytes_atomic(path, png_bytes(overlay))


def _figure_rows(report: dict) -> list[tuple[str, str]]:
    model = report.get("model") or {}
    rows = [
        ("slide", str(report.get("slide"))),
        ("µm/px (level 0)", _fmt(report.get("mpp"))),
        ("model", f"{model.get('name')} (sha256 {str(model.get('sha256', ''))[:12]}…)"),
        ("tissue area", f"{_fmt(report.get('tissue_area_mm2'))} mm²"),
        ("tumour area", f"{_fmt(report.get('tumour_area_mm2'))} mm²"),
        ("tumour fraction of tissue", _percent(report.get("tumour_fraction"))),
        ("tiles", str(report.get("n_tiles"))),
    ]
    if "nuclei_count" in report:
        rows += [
            ("nuclei", f"{report['nuclei_count']} ({report.get('nuclei_method')})"),
            ("nuclei per mm² of tissue", _fmt(report.get("nuclei_per_mm2"))),
            ("nuclei per mm² of tumour", _fmt(report.get("nuclei_per_mm2_tumour"))),
            ("cellularity (malignant nuclei area / tumour area)", _fmt(report.get("cellularity"))),
        ]
    for key in ("normalize", "device", "regions"):
        if key in report:
            rows.append((key, json.dumps(report[key]) if isinstance(report[key], (dict, list)) else str(report[key])))
    return rows


#: Readable names of report.json's timing keys (the internal stage names stay out of reports).
STAGE_NAMES = {
    "load": "loading the model",
    "tissue": "tissue detection",
    "stain": "stain estimate",
    "inference": "tumour model over the tiles",
    "pyramid": "prediction levels",
    "regions": "region outlines",
    "nuclei": "nuclei",
    "report": "report",
    "total": "total",
}


def readable_figures(report: dict) -> list[tuple[str, str]]:
    """(label, value) of the slide's figures, as a pathologist reads them: no JSON, no stage names."""
    rows = [
        ("tissue area", _unit(report.get("tissue_area_mm2"), "mm²")),
        ("tumour area", _unit(report.get("tumour_area_mm2"), "mm²")),
        ("tumour fraction of tissue", _percent(report.get("tumour_fraction"))),
    ]
    for name, count in (report.get("n_regions") or {}).items():
        rows.append((f"{name} regions", str(count)))
    if "nuclei_count" in report:
        method = str(report.get("nuclei_method", ""))
        method = "classical method" if method == "classical" else method.replace("usnet:", "US-Net model ")
        rows += [
            ("nuclei", f"{report['nuclei_count']} ({method})"),
            ("nuclei inside tumour", _fmt(report.get("tumour_nuclei_count"))),
            ("nuclei per mm² of tissue", _fmt(report.get("nuclei_per_mm2"))),
            ("nuclei per mm² of tumour", _fmt(report.get("nuclei_per_mm2_tumour"))),
            ("cellularity (malignant nuclei area / tumour area)", _percent(report.get("cellularity"))),
        ]
    rows += [
        ("slide µm per pixel", _fmt(report.get("mpp"))),
        ("stain normalisation", str(report.get("normalize", "–"))),
        ("tiles analysed", _fmt(report.get("n_tiles"))),
    ]
    return rows


def _unit(value, unit: str) -> str:
    return "–" if value is None else f"{_fmt(float(value))} {unit}"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _timing_svg(timings: dict[str, float]) -> str:
    """Horizontal bars, one per stage, as inline SVG (no plotting library, no external file)."""
    if not timings:
        return ""
    longest = max(timings.values()) or 1.0
    bar_h, label_w, bar_w = 22, 150, 420
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" '
        f'height="{bar_h * len(timings) + 4}" role="img" aria-label="stage timings">'
    ]
    for row, (stage, seconds) in enumerate(timings.items()):
        y = row * bar_h + 2
        width = max(1.0, bar_w * seconds / longest)
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="13">{html.escape(stage)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{bar_h - 6}" fill="#4a78c2"/>'
            f'<text x="{label_w + width + 6:.1f}" y="{y + 15}" font-size="13">{seconds:.2f} s</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def write_report_html(
    path: str | os.PathLike,
    report: dict,
    thumbnail: np.ndarray,
    overlay: np.ndarray,
    heatmap: tuple[np.ndarray, float] | None = None,
) -> Path:
    """One page, images embedded as base64 PNG, so it opens from disk with nothing else.

    ``heatmap``: the per-tile cellularity image and the value its darkest colour stands for.
    """

    def img(rgb: np.ndarray, alt: str) -> str:
        data = base64.b64encode(png_bytes(rgb)).decode("ascii")
        return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'

    figures = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _figure_rows(report))
    timings = report.get("timings_s", {})
    rates = report.get("tiles_per_s", {})
    timing_rows = "".join(
        f"<tr><th>{html.escape(stage)}</th><td>{seconds:.2f} s</td><td>{_fmt(rates.get(stage))}</td></tr>"
        for stage, seconds in timings.items()
    )
    message = report.get("message")
    heat = ""
    if heatmap is not None:
        image, vmax = heatmap
        stops = ", ".join("rgb(%d,%d,%d)" % tuple(int(c) for c in stop) for stop in HEAT_STOPS)
        heat = (
            img(image, "cellularity per tile (untinted: no tumour in the tile)")
            + f'<p>cellularity 0 <span style="display:inline-block;width:12em;height:0.9em;'
            f'background:linear-gradient(to right, {stops})"></span> {vmax:.3g}</p>'
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>wsipipe segment: {html.escape(Path(str(report.get('slide'))).name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #ddd; }}
.images {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; }} img {{ max-width: 46vw; max-height: 70vh; border: 1px solid #ccc; }}
.note {{ background: #fff4d6; padding: 0.6em 1em; border-left: 4px solid #e0a800; }}
</style></head><body>
<h1>Tumour segmentation: {html.escape(Path(str(report.get('slide'))).name)}</h1>
{f'<p class="note">{html.escape(str(message))}</p>' if message else ''}
<h2>Figures</h2><table>{figures}</table>
<div class="images">{img(thumbnail, "thumbnail")}{img(overlay, "overlay: predicted tumour")}</div>
{f'<h2>Cellularity</h2><div class="images">{heat}</div>' if heat else ''}
<h2>Timings</h2><table><tr><th>stage</th><th>time</th><th>tiles/s</th></tr>{timing_rows}</table>
{_timing_svg(timings)}
<p><small>wsipipe {html.escape(str(report.get('wsipipe_version', '')))}</small></p>
</body></html>
"""
    return write_bytes_atomic(path, page.encode("utf-8"))
