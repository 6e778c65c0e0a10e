"""Loading: weight files, checkpoint conversion, the pipeline from a folder or the hub, deltas."""
