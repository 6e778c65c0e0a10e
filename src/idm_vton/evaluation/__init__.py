"""Dataset inference and evaluation metrics (paper Sec. 4)."""
