"""Preprocessing: inpaint mask, human parsing, pose and DensePose for IDM-VTON (SPEC section 6)."""
