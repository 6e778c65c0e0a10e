"""The sampling defaults, written once: the pipeline's arguments, the command-line flags, dataset
inference, the server's settings and its API documentation all read them from here.

The steps, guidance scale and negative prompt are those of the official demo and inference
scripts (DDPM, 30 steps, guidance 2.0); the work size is the size of VITON-HD's and DressCode's
photos, 1024 x 768, which the published model was trained at. A base module of plain values
that imports nothing, so the command line reads them before loading torch.
"""

from __future__ import annotations

__all__ = [
    "GUIDANCE_SCALE",
    "MAX_GUIDANCE_SCALE",
    "MAX_INFERENCE_STEPS",
    "NEGATIVE_PROMPT",
    "NUM_INFERENCE_STEPS",
    "SEED",
    "WORK_HEIGHT",
    "WORK_WIDTH",
]

#: Denoising steps.
NUM_INFERENCE_STEPS = 30
#: The most denoising steps: one per training step of the noise schedule (SDXL's 1000); a
#: scheduler cannot step more often than it was trained.
MAX_INFERENCE_STEPS = 1000
#: Classifier-free guidance scale (guidance runs when it is above 1).
GUIDANCE_SCALE = 2.0
#: The largest guidance scale the command line and the server take (the server's limit).
MAX_GUIDANCE_SCALE = 30.0
#: The unconditional caption.
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
#: The work size (height, width) of the command line; the pipeline's own default follows its
#: UNet's sample size (1024 x 768 for SDXL, 256 x 192 for the tiny model).
WORK_HEIGHT, WORK_WIDTH = 1024, 768
#: The command line's random seed (the server draws one per request unless given).
SEED = 42
