"""Report files: report.json, overlay.png and report.html (one page, images inline, opens from disk;
with nuclei, a per-tile cellularity heatmap too).

Every file is written under a temporary name and renamed when complete (``files.write_atomic``),
so a reader never sees a half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsipipe.errors import OutputError
from wsipipe.files import write_atomic

if TYPE_CHECKING:
    from wsipipe.stages.segment import SegmentResult

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


def render_overlay(thumbnail: np.ndarray, labels: np.ndarray, colours, alpha: float = 0.4) -> np.ndarray:
    """``thumbnail`` (h, w, 3) RGB with each non-zero class of ``labels`` tinted and outlined in
    ``colours`` (RGB by class index: ``wsipipe.classes.palette``).

    ``labels`` may be at any resolution; it is resized (nearest) to the thumbnail.
    """
    import cv2

    height, width = thumbnail.shape[:2]
    if labels.shape != (height, width):
        labels = cv2.resize(labels.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    out = thumbnail.astype(np.float32)
    outline = max(1, round(max(height, width) / 500))
    for class_id in (int(c) for c in np.unique(labels) if c != 0):
        colour = np.array(colours[class_id], np.float32)
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


def readable_figures(result: SegmentResult) -> list[tuple[str, str]]:
    """(label, value) of the slide's figures, as a pathologist reads them: no JSON, no stage names."""
    rows = [
        ("tissue area", _unit(result.tissue_area_mm2, "mm²")),
        ("tumour area", _unit(result.tumour_area_mm2, "mm²")),
        ("tumour fraction of tissue", _percent(result.tumour_fraction)),
    ]
    for name, count in result.n_regions.items():
        rows.append((f"{name} regions", str(count)))
    if result.nuclei_count is not None:
        method = result.nuclei_method or ""
        method = "classical method" if method == "classical" else method.replace("usnet:", "US-Net model ")
        rows += [
            ("nuclei", f"{result.nuclei_count} ({method})"),
            ("nuclei inside tumour", _fmt(result.tumour_nuclei_count)),
            ("nuclei per mm² of tissue", _fmt(result.nuclei_per_mm2)),
            ("nuclei per mm² of tumour", _fmt(result.nuclei_per_mm2_tumour)),
            ("cellularity (malignant nuclei area / tumour area)", _percent(result.cellularity)),
        ]
    qc = result.qc
    if qc.get("mode", "off") != "off":
        verdict = "usable" if qc.get("usable") else f"not usable ({qc.get('verdict_reason')})"
        rows.append(
            (
                "quality control",
                f"{verdict}; left out {_percent(qc.get('left_out_fraction'))} of the tissue "
                f"({_fmt(qc.get('left_out_mm2'))} mm²)",
            )
        )
    rows += [
        ("slide µm per pixel", _fmt(result.mpp)),
        ("stain normalisation", str(result.normalize)),
        ("tiles analysed", _fmt(result.n_tiles)),
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


def picture_um_per_px(result: SegmentResult, picture_width: int) -> float | None:
    """µm per pixel of a whole-slide picture ``picture_width`` px wide: the slide is as wide as the
    prediction grid (``prediction_shape`` at the model's µm/px), to within one prediction pixel."""
    shape, model_mpp = result.prediction_shape, result.model.get("mpp")
    if not shape or not model_mpp or picture_width <= 0:
        return None
    return shape[-1] * float(model_mpp) / picture_width


def nice_length(um_per_px: float, max_px: float) -> float:
    """The longest 1, 2 or 5 x 10^n µm that is at most ``max_px`` pixels long."""
    limit = um_per_px * max_px
    exponent = math.floor(math.log10(limit))
    return max(step * 10.0**e for e in (exponent - 1, exponent) for step in (1, 2, 5) if step * 10.0**e <= limit)


def length_label(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def _scale_bar_svg(width: int, height: int, um_per_px: float) -> str:
    """An SVG laid over a picture (its viewBox is the picture's pixels, so it scales with it)."""
    length = nice_length(um_per_px, width / 4)
    bar = length / um_per_px
    font = max(10.0, width / 45)
    x, y = font * 0.8, height - font * 0.9
    return (
        f'<svg class="scale" viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="scale bar {length_label(length)}" data-um="{length:g}" data-px="{bar:.3f}">'
        f'<rect x="{x - font * 0.4:.1f}" y="{y - font * 1.6:.1f}" width="{bar + font * 0.8:.1f}" height="{font * 2.1:.1f}" '
        f'fill="white" fill-opacity="0.8"/>'
        f'<rect class="bar" x="{x:.1f}" y="{y - font * 0.25:.1f}" width="{bar:.3f}" height="{font * 0.3:.1f}" fill="black"/>'
        f'<text x="{x:.1f}" y="{y - font * 0.5:.1f}" font-size="{font:.1f}">{length_label(length)}</text></svg>'
    )


def _timings_table(result: SegmentResult) -> str:
    """Each stage once, by its readable name, with a bar for its share of the longest."""
    timings = {k: v for k, v in result.timings_s.items() if k in STAGE_NAMES and k != "total"}
    if not timings:
        return ""
    longest = max(timings.values()) or 1.0
    rows = "".join(
        f"<tr><th>{html.escape(STAGE_NAMES[stage])}</th><td>{seconds:.2f} s</td>"
        f'<td><span class="bar" style="width:{12 * seconds / longest:.2f}em"></span></td></tr>'
        for stage, seconds in timings.items()
    )
    total = result.timings_s.get("total")
    if total is not None:
        rows += f"<tr><th>total</th><td>{total:.2f} s</td><td></td></tr>"
    return f"<h2>Timings</h2><table>{rows}</table>"


def _legend(result: SegmentResult, nuclei: bool) -> str:
    from wsipipe.classes import display_name, palette

    classes = result.model.get("classes") or []
    items = [
        f'<span class="swatch" style="background:rgb{tuple(colour)}"></span>{html.escape(display_name(str(name)))}'
        for i, (name, colour) in enumerate(zip(classes, palette(classes)))
        if i
    ]
    return f'<p class="legend">predicted: {" ".join(items)}</p>' if items else ""


def _region_table(path: Path, result: SegmentResult) -> str:
    from wsipipe.report.regions import region_rows

    if not result.mpp:
        return ""
    rows = region_rows(path.parent, float(result.mpp))
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(row['name'])}</td><td>{row['area_mm2']:.4f}</td>"
        f"<td>{'–' if row['nuclei'] is None else row['nuclei']}</td><td>{_percent(row['cellularity'])}</td></tr>"
        for row in rows
    )
    return (
        "<h2>Regions</h2><table><tr><th>region</th><th>area mm²</th><th>nuclei inside</th>"
        f"<th>cellularity</th></tr>{body}</table>"
    )


def _provenance(result: SegmentResult) -> str:
    model = result.model
    run = result.run
    rows = [
        ("model", str(model.get("name", "–"))),
        ("model SHA-256", str(model.get("sha256", "–"))),
        ("architecture", str(model.get("architecture") or "–")),
        ("model µm per pixel", _fmt(model.get("mpp"))),
        ("classes", ", ".join(map(str, model.get("classes") or []))),
    ]
    if model.get("trained_on"):
        rows.append(("trained on", str(model["trained_on"])))
    if run.get("date"):
        rows.append(("run date", str(run["date"])))
    if run.get("command"):
        rows.append(("command", str(run["command"])))
    rows.append(("wsipipe version", str(result.wsipipe_version)))
    return (
        "<h2>Model and run</h2><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def write_report_html(
    path: str | os.PathLike,
    result: SegmentResult,
    thumbnail: np.ndarray,
    overlay: np.ndarray,
    heatmap: tuple[np.ndarray, float] | None = None,
    outdir: str | os.PathLike | None = None,
) -> Path:
    """One page, images embedded as base64 PNG, so it opens from disk with nothing else.

    ``heatmap``: the per-tile cellularity image and the value its darkest colour stands for;
    ``outdir``: the folder the report ends up in, which the ``wsipipe view`` line names (default:
    ``path``'s folder; segment writes it in a staging folder first).
    """

    path = Path(path)
    um_per_px = picture_um_per_px(result, thumbnail.shape[1])

    def img(rgb: np.ndarray, alt: str) -> str:
        data = base64.b64encode(png_bytes(rgb)).decode("ascii")
        bar = _scale_bar_svg(rgb.shape[1], rgb.shape[0], um_per_px) if um_per_px else ""
        return (
            f'<figure><div class="picture"><img alt="{alt}" src="data:image/png;base64,{data}">{bar}</div>'
            f"<figcaption>{alt}</figcaption></figure>"
        )

    figures = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in readable_figures(result)
    )
    message = result.message
    heat = ""
    if heatmap is not None:
        image, vmax = heatmap
        stops = ", ".join("rgb({},{},{})".format(*(int(c) for c in stop)) for stop in HEAT_STOPS)
        heat = (
            img(image, "cellularity per tile (untinted: no tumour in the tile)")
            + f'<p>cellularity 0 <span style="display:inline-block;width:12em;height:0.9em;'
            f'background:linear-gradient(to right, {stops})"></span> {_percent(vmax)}</p>'
        )
    name = html.escape(Path(str(result.slide)).name)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>wsipipe segment: {name}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #ddd; }}
.images {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; }} .picture {{ position: relative; display: inline-block; }}
img {{ display: block; max-width: 46vw; max-height: 70vh; border: 1px solid #ccc; }}
svg.scale {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }}
.note {{ background: #fff4d6; padding: 0.6em 1em; border-left: 4px solid #e0a800; }}
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 0.8em; vertical-align: middle; }}
.bar {{ display: inline-block; height: 0.8em; background: #4a78c2; }}
code {{ background: #f2f2f2; padding: 0.1em 0.3em; }}
</style></head><body>
<h1>Tumour segmentation: {name}</h1>
<p class="note">For research use only: not for diagnosis. The figures come from an automated model and need a
pathologist's review.</p>
{f'<p class="note">{html.escape(str(message))}</p>' if message else ""}
<p>To look at the slide with these results, zoomable, run <code>wsipipe view {html.escape(str(outdir or path.parent))}</code>.</p>
<h2>Figures</h2><table>{figures}</table>
{_legend(result, heatmap is not None)}
<div class="images">{img(thumbnail, "slide")}{img(overlay, "predicted tumour")}</div>
{f'<h2>Cellularity</h2><div class="images">{heat}</div>' if heat else ""}
{_region_table(path, result)}
{_provenance(result)}
{_timings_table(result)}
</body></html>
"""
    return write_bytes_atomic(path, page.encode("utf-8"))
