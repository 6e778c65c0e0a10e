"""Datasets (VITON-HD, DressCode), captions and augmentations (SPEC sections 3 and 4)."""
