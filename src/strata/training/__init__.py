"""Training: typed batches, losses, masking, loops, metrics, export and the model registry."""
