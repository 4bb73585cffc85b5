"""Post-processing of predictions: label maps to regions, seeds to nuclear instances."""
