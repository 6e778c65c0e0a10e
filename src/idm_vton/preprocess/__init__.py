"""Preprocessing: inpaint mask, human parsing, pose and DensePose for IDM-VTON (docs/preprocessing.md)."""
