"""The ``idm-vton`` command line: argument parsing only; the library does the work."""

from .main import main

__all__ = ["main"]
