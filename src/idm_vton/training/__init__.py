"""Training and customization internals: objective, data stream, checkpoints, loop, SDXL init.

Entry points: :mod:`idm_vton.train` (``idm-vton train``) and :mod:`idm_vton.training.customize`
(``idm-vton customize``).
"""
