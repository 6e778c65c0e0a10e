"""Time per garment of each garment annotator on the CPU, and the extra cost of
``--description auto`` inside a try-on; prints one JSON line per figure.

No weights can be downloaded here, so every network carries random weights at its real shapes
(the cost does not depend on the values):

* ``probe``: the IP-Adapter's CLIP image encoder (tiny: the tiny model's; full: ViT-H/14, 632 M
  parameters) plus the linear heads. ``probe_describe`` is a garment photo described on its own
  (``idm-vton describe``: one encoder pass); ``probe_in_tryon`` what ``auto`` adds to a try-on,
  which has run the encoder already for the IP-Adapter: the heads on its embedding.
* ``zero_shot``: a CLIP image-text model (tiny; full: FashionCLIP 2.0's ViT-B/32 shapes) scoring
  the label prompts, whose text side is encoded once when the annotator is built
  (``zero_shot_load_prompts``); per garment one image pass.
* ``tryon_auto_stage``: inside a tiny-model try-on with ``auto``, the time of the stage ``auto``
  adds (``TryOnPipeline.describe_garments``, timed where it runs);
* ``tryon_auto_extra``: a tiny-model try-on (``--steps`` steps at 64 x 48) with ``auto`` minus
  the same try-on given the text, per annotator, the median over alternating rounds (at full
  size one try-on step alone takes ~28 s on this CPU: the extra cost there is ``probe_in_tryon``
  / ``zero_shot`` at full shapes).

    python benchmarks/bench_annotator.py [--repeats 5] [--steps 2] [--threads N] [--skip-full]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from idm_vton.annotation import GarmentEncoder, ProbeAnnotator, ZeroShotAnnotator
from idm_vton.data.tags import load_label_sets
from idm_vton.models.tiny import _TINY_TEXT, _TINY_VISION, _byte_level_tokenizer
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.testing.sdxl_shapes import VIT_H_14, fill_random

#: FashionCLIP 2.0 (``patrickjohncyh/fashion-clip``): CLIP ViT-B/32 and its text tower.
FASHION_CLIP_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
)
FASHION_CLIP_TEXT = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
)


def garment(seed: int, size=(768, 1024)) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def emit(**line) -> None:
    print(json.dumps(line), flush=True)


def build(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A meta-built model materialised with cheap random values."""
    model.to_empty(device="cpu")
    fill_random(model, seed)
    return model.eval().requires_grad_(False)


def encoders(skip_full: bool) -> dict[str, GarmentEncoder]:
    tiny = tiny_pipeline(text_encoders=False)
    out = {"tiny": GarmentEncoder(tiny.image_encoder, tiny.feature_extractor)}
    if not skip_full:
        with torch.device("meta"):
            vit_h = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_14))
        out["full"] = GarmentEncoder(build(vit_h, 1), CLIPImageProcessor())
    return out


def zero_shot_models(skip_full: bool) -> dict[str, tuple[CLIPModel, CLIPImageProcessor]]:
    text = {k: v for k, v in _TINY_TEXT.items() if k != "projection_dim"}
    vision = {k: v for k, v in _TINY_VISION.items() if k != "projection_dim"}
    tiny = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    crop = {"height": 32, "width": 32}
    out = {"tiny": (tiny.eval(), CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop))}
    if not skip_full:
        config = CLIPConfig(
            text_config=FASHION_CLIP_TEXT, vision_config=FASHION_CLIP_VISION, projection_dim=512
        )
        with torch.device("meta"):
            model = CLIPModel(config)
        out["full"] = (build(model, 2), CLIPImageProcessor())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps of the tiny try-on")
    parser.add_argument("--tryon-repeats", type=int, default=15, help="rounds of the try-ons")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--skip-full", action="store_true", help="tiny shapes only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    context = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    emit(**context, torch=torch.__version__)
    labels = load_label_sets("vitonhd")
    photo = garment(0)
    tokenizer = _byte_level_tokenizer()  # ids in every vocabulary here; the shapes are the cost

    for shape, encoder in encoders(args.skip_full).items():
        probe = ProbeAnnotator.random(encoder, labels, min_score=0.0)
        value, runs = median_seconds(lambda p=probe: p.describe(photo), args.repeats)
        emit(metric="probe_describe", shape=shape, unit="s/garment", value=value, runs=runs)
        embedding = encoder.embed([photo])
        value, runs = median_seconds(
            lambda p=probe, e=embedding: p.describe_embeddings(e), args.repeats
        )
        emit(metric="probe_in_tryon", shape=shape, unit="s/garment", value=value, runs=runs)

    for shape, (model, processor) in zero_shot_models(args.skip_full).items():
        start = time.perf_counter()
        annotator = ZeroShotAnnotator(model, tokenizer, processor, labels, min_score=0.0)
        emit(
            metric="zero_shot_load_prompts",
            shape=shape,
            unit="s",
            value=time.perf_counter() - start,
            prompts=sum(len(v) for v in labels.labels.values()),
        )
        value, runs = median_seconds(lambda a=annotator: a.describe(photo), args.repeats)
        emit(metric="zero_shot", shape=shape, unit="s/garment", value=value, runs=runs)

    pipe = tiny_pipeline()
    tiny_clip, tiny_processor = zero_shot_models(skip_full=True)["tiny"]
    annotators = {
        "probe": ProbeAnnotator.random(GarmentEncoder.from_pipeline(pipe), labels),
        "zero-shot": ZeroShotAnnotator(tiny_clip, tokenizer, tiny_processor, labels),
    }
    person, garment_photo, pose = (
        garment(1, (192, 256)),
        garment(2, (192, 256)),
        garment(3, (192, 256)),
    )
    mask = np.zeros((256, 192), np.uint8)
    mask[64:192, 48:144] = 255

    def tryon(**text):
        pipe(
            height=64,
            width=48,
            person_image=person,
            garment_image=garment_photo,
            mask_image=Image.fromarray(mask),
            pose_image=pose,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **text,
        )

    pipe.set_progress_bar_config(disable=True)
    calls = {"given": lambda: tryon(garment_description="Short Sleeve Round Neck T-shirts")}
    for kind, annotator in annotators.items():
        calls[kind] = lambda a=annotator: tryon(garment_description=None, garment_annotator=a)
    # The stage auto adds to the call, timed where it runs.
    stage: list[float] = []
    describe_garments = pipe.describe_garments

    def timed_describe(*a, **k):
        start = time.perf_counter()
        try:
            return describe_garments(*a, **k)
        finally:
            stage.append(time.perf_counter() - start)

    pipe.describe_garments = timed_describe
    for call in calls.values():
        call()  # warm-up
    stage.clear()
    # Rounds alternate the three calls, so a load change on a shared machine hits all of them;
    # the extra cost is the median of the per-round differences.
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.tryon_repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            runs[name].append(time.perf_counter() - start)
    given = runs.pop("given")
    emit(
        metric="tryon_given_text",
        shape="tiny",
        steps=args.steps,
        unit="s",
        value=statistics.median(given),
    )
    stages = {kind: stage[i :: len(runs)] for i, kind in enumerate(runs)}
    for kind, auto in runs.items():
        extra = [a - g for a, g in zip(auto, given, strict=True)]
        emit(
            metric="tryon_auto_stage",
            annotator=kind,
            shape="tiny",
            unit="s",
            value=statistics.median(stages[kind]),
            runs=stages[kind],
        )
        emit(
            metric="tryon_auto_extra",
            annotator=kind,
            shape="tiny",
            steps=args.steps,
            unit="s",
            value=statistics.median(extra),
            auto=statistics.median(auto),
            given=statistics.median(given),
            rounds=len(extra),
        )


if __name__ == "__main__":
    main()
