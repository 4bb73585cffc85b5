"""Evaluation metrics (semantic segmentation in ``semantic``)."""
