"""In-memory sliding-window inference: split into overlapping tiles, run in batches, blend.

Whole-slide inference (``wsipipe.segment``) uses the same tile grid (``wsipipe.grid``), runner
(``run_batches``) and blending window (``blend_window``, in its band-wise ``Stitcher``);
``predict_image`` is the whole chain for one RGB image.
"""

from wsipipe.inference.sliding import Blender, blend_window, default_overlap, predict_image, run_batches

__all__ = ["Blender", "blend_window", "default_overlap", "predict_image", "run_batches"]
