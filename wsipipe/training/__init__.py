"""Training segmentation models: datasets and augmentation, losses, checkpoints, the training loop."""
