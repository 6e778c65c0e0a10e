"""Builders shared by several test modules (imported as ``from .helpers.<module> import ...``).

- :mod:`.checkpoints`: a tiny pipeline written in the *published* IDM-VTON layout;
- :mod:`.datasets`: small synthetic VITON-HD and DressCode folders;
- :mod:`.golden`: replaying the golden reference case's noise draws through the pipeline.
"""
