"""Post-processing of predictions: label maps to regions."""
