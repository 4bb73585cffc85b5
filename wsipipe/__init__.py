"""wsipipe: whole-slide pathology pipeline (tiling, stain normalisation, segmentation, nuclei, batch)."""

__version__ = "0.1.0"
