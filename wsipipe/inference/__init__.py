"""Inference: one engine (``engine``: tile sources, runner, mergers) for every model wsipipe runs.

Whole-slide inference (``wsipipe.segment``) and in-memory images (``predict_image``) use the same
tile grid (``wsipipe.grid``), runner (``engine.Runner``) and blending window (``blend_window``, in
``engine.Blender`` and the band-wise ``stitch.Stitcher``).
"""

from wsipipe.inference.engine import Blender, Runner, predict_tiled
from wsipipe.inference.sliding import blend_window, default_overlap, predict_image

__all__ = ["Blender", "Runner", "blend_window", "default_overlap", "predict_image", "predict_tiled"]
