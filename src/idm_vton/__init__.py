"""idm-vton: IDM-VTON virtual try-on (Choi et al., ECCV 2024) on current diffusers."""

__version__ = "0.1.0"
