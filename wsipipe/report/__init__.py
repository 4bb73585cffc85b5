"""Segmentation reports: areas in mm², report.json, overlay.png, a cellularity heatmap and a self-contained report.html."""

from wsipipe.report.areas import class_pixel_counts, mask_area_mm2, pixel_area_mm2
from wsipipe.report.render import (
    png_bytes,
    render_overlay,
    render_tile_heatmap,
    write_bytes_atomic,
    write_overlay_png,
    write_report_html,
    write_report_json,
)

__all__ = [
    "class_pixel_counts",
    "mask_area_mm2",
    "pixel_area_mm2",
    "png_bytes",
    "render_overlay",
    "render_tile_heatmap",
    "write_bytes_atomic",
    "write_overlay_png",
    "write_report_html",
    "write_report_json",
]
