"""In-memory sliding-window inference: split into overlapping tiles, run in batches, blend.

Whole-slide inference reuses the three pieces (``tile_positions``, ``run_batches``,
``Blender``); ``predict_image`` is the whole chain for one RGB image.
"""

from wsipipe.inference.sliding import Blender, default_overlap, predict_image, run_batches, tile_positions

__all__ = ["Blender", "default_overlap", "predict_image", "run_batches", "tile_positions"]
