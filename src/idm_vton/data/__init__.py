"""Datasets (VITON-HD, DressCode), captions and augmentations (paper Sec. 3)."""
