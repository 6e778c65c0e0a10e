"""Side-by-side benchmark: the official IDM-VTON computation (``reference``) vs this package (``ours``).

Both paths run in the same process on the same weights and inputs, alternating (ABBA...), and
their outputs are compared. ``reference`` is :func:`idm_vton.testing.reference.reference_formulation`
(concatenated self-attention with all queries then slicing, materialised zero garment tokens,
GarmentNet run to the end at the TryonNet batch at every step, the IP-Adapter attention map);
``ours`` is the default :class:`~idm_vton.TryOnPipeline`.

Prints one JSON line per figure (``path``, ``metric``, ``value``, ``unit`` + context); the last
line is ``"metric": "ratio"`` (reference time / ours time, denoising step; the end-to-end and
peak-memory ratios ride along). Figures:

* ``step_latency``: one denoising step (GarmentNet + TryonNet on [uncond ; cond]), median.
* ``e2e_latency``: preprocessed tensors (work-size images, prompt embeddings, CLIP pixels) ->
  image: CLIP + Resampler, three VAE encodes, ``--steps`` steps, VAE decode; median.
* ``images_per_s``: batch / e2e latency.
* ``peak_memory``: CUDA ``max_memory_allocated`` during one e2e call (in process); on the CPU the
  peak RSS (``VmHWM``) of one e2e call measured in a *fresh subprocess per path* (the counter is
  reset after the model is built, via ``/proc/self/clear_refs``), so one path's freed-but-cached
  memory cannot hide in the other's figure. ``over_weights`` = peak minus RSS after building.
* ``--modes``: the same peak-memory figure for the memory modes of the default path.

Presets: ``tiny`` (the test model) and ``sdxl`` (the real shapes with random weights: SDXL
inpainting UNet widened to 13 channels + SDXL base UNet + IP-Adapter Plus Resampler 1280/4
layers/20 heads + CLIP ViT-H/14 vision + SDXL VAE; text encoders replaced by precomputed
embeddings of the real shapes: 77 x 2048 tokens, 1280 pooled). Models are built on the meta
device and filled from a small random pool, so building takes seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from idm_vton.pipelines.garment_branch import TryonConditioning
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.testing.reference import reference_formulation
from idm_vton.testing.sdxl_shapes import sdxl_pipeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PATHS = ("reference", "ours")
MODES = ("default", "two_phase", "fp8", "vae_tiling", "offload")


# ---------------------------------------------------------------------------- models
def build(preset: str, dtype: torch.dtype, device: str) -> TryOnPipeline:
    if preset == "tiny":
        from idm_vton.pipelines.loading import tiny_pipeline

        pipe = tiny_pipeline(seed=0, text_encoders=False)
        pipe.to(dtype=dtype)
    else:
        pipe = sdxl_pipeline(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def make_inputs(pipe: TryOnPipeline, batch: int, height: int, width: int, device) -> dict:
    """Preprocessed inputs: work-size images in [0, 1], prompt embeddings, CLIP pixels."""
    g = torch.Generator().manual_seed(1234)
    unet = pipe.unet.config
    text_dim = unet.cross_attention_dim
    pooled_dim = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
    clip_size = pipe.image_encoder.config.image_size
    mask = torch.zeros(batch, 1, height, width)
    mask[:, :, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    inputs = dict(
        person_image=torch.rand(batch, 3, height, width, generator=g),
        garment_image=torch.rand(1, 3, height, width, generator=g),
        mask_image=mask,
        pose_image=torch.rand(batch, 3, height, width, generator=g),
        garment_clip_pixels=torch.randn(1, 3, clip_size, clip_size, generator=g),
        prompt_embeds=torch.randn(1, 77, text_dim, generator=g),
        pooled_prompt_embeds=torch.randn(1, pooled_dim, generator=g),
        negative_prompt_embeds=torch.randn(1, 77, text_dim, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, pooled_dim, generator=g),
        garment_prompt_embeds=torch.randn(1, 77, text_dim, generator=g),
        height=height,
        width=width,
    )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def step_inputs(pipe: TryOnPipeline, inputs: dict, batch: int, device) -> dict:
    """Inputs of one CFG denoising step ([uncond ; cond] rows), as the pipeline builds them."""
    g = torch.Generator().manual_seed(99)
    dtype = pipe.unet.dtype
    h, w = inputs["height"] // pipe.vae_scale_factor, inputs["width"] // pipe.vae_scale_factor
    rows = 2 * batch

    def rep(t):
        return t.to(device=device, dtype=dtype).expand(batch, *t.shape[1:])

    uncond, cond = pipe.encode_image_prompt(inputs["garment_clip_pixels"].to(dtype=dtype))
    pipe.scheduler.set_timesteps(30, device=device)
    size = [inputs["height"], inputs["width"], 0, 0, inputs["height"], inputs["width"]]
    conditioning = TryonConditioning(
        text=torch.cat([rep(inputs["negative_prompt_embeds"]), rep(inputs["prompt_embeds"])]),
        pooled=torch.cat(
            [rep(inputs["negative_pooled_prompt_embeds"]), rep(inputs["pooled_prompt_embeds"])]
        ),
        time_ids=torch.tensor(size, device=device, dtype=dtype).expand(rows, -1),
        image_tokens=torch.cat([rep(uncond), rep(cond)]),
    )
    return dict(
        model_input=torch.randn(rows, 13, h, w, generator=g).to(device, dtype),
        t=pipe.scheduler.timesteps[0],
        conditioning=conditioning,
        garment_latents=torch.randn(1, 4, h, w, generator=g).to(device, dtype),
        garment_text=inputs["garment_prompt_embeds"].to(device, dtype),
        garment_index=torch.zeros(batch, dtype=torch.long, device=device),
        null_rows=batch,
    )


# ---------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_step(pipe: TryOnPipeline, s: dict) -> torch.Tensor:
    """One denoising step through the pipeline's garment branch (``pipe.garment_branch``:
    the default one, or the official one inside ``reference_formulation``)."""
    branch = pipe.garment_branch
    features = branch.step_features(
        pipe, s["garment_latents"], s["t"], s["garment_text"], s["garment_index"]
    )
    noise = branch.predict_noise(
        pipe, s["model_input"], s["t"], s["conditioning"], features, s["null_rows"]
    ).float()
    uncond, cond = noise.chunk(2)
    return uncond + 2.0 * (cond - uncond)


ENCODER_TIME: list[float] = []  # seconds in CLIP + Resampler + VAE during the last e2e call


def run_e2e(pipe: TryOnPipeline, inputs: dict, steps: int) -> torch.Tensor:
    """One pipeline call; the time spent in the image encoders and the VAE goes to ENCODER_TIME."""
    spent = [0.0]

    def clocked(fn):
        def call(*args, **kwargs):
            _sync(pipe._execution_device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(pipe._execution_device)
            spent[0] += time.perf_counter() - start
            return out

        return call

    names = ("_vae_encode", "_vae_decode", "encode_image_prompt")
    for name in names:
        setattr(pipe, name, clocked(getattr(pipe, name)))
    try:
        return pipe(
            **inputs,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
    finally:
        for name in names:
            delattr(pipe, name)
        ENCODER_TIME.append(spent[0])


def run_path(pipe, path: str, fn, *args):
    if path == "reference":
        with reference_formulation(pipe):
            return fn(pipe, *args)
    return fn(pipe, *args)


def timed(pipe, path, fn, device, *args):
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = run_path(pipe, path, fn, *args)
    _sync(device)
    return time.perf_counter() - start, out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def apply_mode(pipe: TryOnPipeline, mode: str, device) -> None:
    if mode == "two_phase":
        pipe.enable_two_phase_garment()
    elif mode == "fp8":
        pipe.enable_fp8_weight_storage()
    elif mode == "vae_tiling":
        pipe.enable_vae_tiling(tile_size=max(64, pipe.default_height // 4) // 8 * 8)
    elif mode == "offload":
        pipe.enable_model_cpu_offload(device=device)
        pipe.enable_two_phase_garment()


def emit(context: dict, **fields) -> None:
    print(json.dumps({**fields, **context}), flush=True)


def memory_role(args, context: dict) -> None:
    """Fresh process: build, reset the peak-RSS counter, run one e2e call of one path, report."""
    pipe = build(args.preset, DTYPES[args.dtype], args.device)
    if args.mode != "default":
        apply_mode(pipe, args.mode, args.device)
    inputs = make_inputs(pipe, args.batch, args.height, args.width, args.device)
    gc.collect()
    base = _status_kb("VmRSS") * 1024
    _reset_peak_rss()
    with torch.no_grad():
        run_path(pipe, args.path, run_e2e, inputs, args.steps)
    peak = _status_kb("VmHWM") * 1024
    name = args.path if args.mode == "default" else f"{args.path}+{args.mode}"
    emit(
        context,
        path=name,
        metric="peak_memory",
        value=round(peak / 2**30, 4),
        unit="GiB",
        kind="cpu_peak_rss_fresh_process",
        over_weights=round((peak - base) / 2**30, 4),
        rss_after_build=round(base / 2**30, 4),
    )


def subprocess_memory(args, path: str, mode: str) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    cmd += ["--role", "memory", "--path", path, "--mode", mode]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"memory measurement of {path}/{mode} failed")
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    print(line, flush=True)
    return json.loads(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "sdxl"), default="tiny")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps of the e2e call")
    parser.add_argument("--batch", type=int, default=1, help="people per call (one garment)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path")
    parser.add_argument(
        "--e2e-repeats", type=int, help="timed e2e runs per path (default --repeats; 0: skip)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figures")
    parser.add_argument(
        "--modes", default="", help=f"also peak memory of these modes of ours: {','.join(MODES)}"
    )
    parser.add_argument(
        "--role", choices=("main", "memory"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--path", choices=PATHS, default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_h = 256 if args.preset == "tiny" else 1024
    args.height = args.height or default_h
    args.width = args.width or args.height * 3 // 4
    torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    context = dict(
        preset=args.preset,
        height=args.height,
        width=args.width,
        dtype=args.dtype,
        device=args.device,
        steps=args.steps,
        batch=args.batch,
        threads=args.threads,
        torch=torch.__version__,
    )
    if args.role == "memory":
        memory_role(args, context)
        return

    peaks: dict[str, float] = {}
    if not cuda and not args.no_memory:
        # Fresh processes first: this one does not hold a model yet.
        for path in PATHS:
            peaks[path] = subprocess_memory(args, path, "default")["value"]
        for mode in filter(None, args.modes.split(",")):
            if mode == "offload":
                emit(
                    context,
                    path="ours+offload",
                    metric="peak_memory",
                    value=None,
                    unit="GiB",
                    note="needs CUDA",
                )
                continue
            subprocess_memory(args, "ours", mode)

    t0 = time.perf_counter()
    pipe = build(args.preset, DTYPES[args.dtype], args.device)
    emit(
        context,
        path="both",
        metric="build_time",
        value=round(time.perf_counter() - t0, 2),
        unit="s",
    )
    inputs = make_inputs(pipe, args.batch, args.height, args.width, args.device)
    s = step_inputs(pipe, inputs, args.batch, args.device)

    times: dict[tuple[str, str], list[float]] = {(p, m): [] for p in PATHS for m in ("step", "e2e")}
    outs: dict[tuple[str, str], torch.Tensor] = {}
    encoder_times: dict[str, list[float]] = {p: [] for p in PATHS}

    def report(what: str) -> float:
        """Emit one figure's lines as soon as it is measured; returns reference / ours."""
        med = {p: statistics.median(times[(p, what)]) for p in PATHS}
        for path in PATHS:
            emit(
                context,
                path=path,
                metric=f"{what}_latency",
                value=round(med[path], 4),
                unit="s",
                min=round(min(times[(path, what)]), 4),
                runs=[round(x, 4) for x in times[(path, what)]],
            )
            if what == "e2e":
                emit(
                    context,
                    path=path,
                    metric="images_per_s",
                    value=round(args.batch / med[path], 4),
                    unit="images/s",
                )
        ref, ours = outs[("reference", what)].float(), outs[("ours", what)].float()
        emit(
            context,
            path="reference-ours",
            metric=f"{what}_max_abs_diff",
            value=float((ref - ours).abs().max()),
            unit="abs",
            ref_max_abs=float(ref.abs().max()),
        )
        return med["reference"] / med["ours"]

    # Warm-up (kernel selection, allocator), then alternate the order every round.
    for path in PATHS:
        timed(pipe, path, run_step, args.device, s)
    for r in range(args.repeats):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            dt, outs[(path, "step")] = timed(pipe, path, run_step, args.device, s)
            times[(path, "step")].append(dt)
    step_ratio = report("step")
    e2e_repeats = args.repeats if args.e2e_repeats is None else args.e2e_repeats
    for r in range(e2e_repeats):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            dt, outs[(path, "e2e")] = timed(pipe, path, run_e2e, args.device, inputs, args.steps)
            times[(path, "e2e")].append(dt)
            encoder_times[path].append(ENCODER_TIME[-1])
            if cuda:
                peak = torch.cuda.max_memory_allocated() / 2**30
                peaks[path] = max(peaks.get(path, 0.0), peak)
    e2e_ratio = report("e2e") if e2e_repeats else None
    for path in PATHS if e2e_repeats else ():
        runs = encoder_times[path]
        emit(
            context,
            path=path,
            metric="e2e_encoders_vae",
            value=round(statistics.median(runs), 4),
            unit="s",
            runs=[round(x, 4) for x in runs],
            note="part of e2e_latency spent in CLIP + Resampler + VAE encodes/decode",
        )
    if cuda and e2e_repeats:
        for path in PATHS:
            emit(
                context,
                path=path,
                metric="peak_memory",
                value=round(peaks[path], 4),
                unit="GiB",
                kind="cuda_max_memory_allocated",
            )
    ratio = dict(
        path="reference/ours",
        metric="ratio",
        value=round(step_ratio, 3),
        unit="x",
        of="step_latency",
        e2e_ratio=round(e2e_ratio, 3) if e2e_ratio else None,
        step_min_ratio=round(min(times[("reference", "step")]) / min(times[("ours", "step")]), 3),
    )
    if peaks.keys() >= set(PATHS):
        ratio["peak_memory_ratio"] = round(peaks["reference"] / peaks["ours"], 3)
    emit(context, **ratio)


if __name__ == "__main__":
    main()
