"""Speed and memory options give the reference result (issue 5).

* the benchmark's ``reference`` path (the official computation) matches the golden cases, and the
  default path matches it on random tiny inputs (batch > 1, shared and per-person garments, CFG
  on and off);
* GarmentNet runs once per step at batch 1 for a shared garment and stops after its last block;
* every memory mode gives the default path's image on two consecutive calls; the garment cache
  gives identical results and keeps to its byte budget; the TryonNet compiles without graph breaks.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import idm_vton.pipelines.garment_branch as pipeline_module
from idm_vton.commands._dataclass_flags import add_memory_arguments, apply_memory_options
from idm_vton.models.tryon_net import garment_features, tryon_forward
from idm_vton.pipelines.garment_branch import TryonConditioning
from idm_vton.pipelines.garment_cache import GarmentCache
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.testing.reference import OfficialIPAttnProcessor, reference_formulation

from .conftest import GOLDEN
from .helpers.golden import golden_pipe_call, replay_recorded_noise

MODULE_RTOL = 2e-5
PIPE_RTOL = 2e-4
H, W = 64, 48


def assert_close(out, ref, rtol, what=""):
    assert out.shape == ref.shape, what
    ref = ref.float()
    err = (out.float() - ref).abs().max().item()
    tol = rtol * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


# ----------------------------------------------------------------------------- tiny inputs
@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(seed=0, text_encoders=True)
    p.set_progress_bar_config(disable=True)
    return p


def inputs(people=3, garments=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(people, 1, H, W)
    mask[:, :, 16:48, 12:36] = 1
    return dict(
        person_image=torch.rand(people, 3, H, W, generator=g),
        garment_image=torch.rand(garments, 3, H, W, generator=g),
        mask_image=mask,
        pose_image=torch.rand(people, 3, H, W, generator=g),
        garment_clip_pixels=torch.randn(garments, 3, 32, 32, generator=g),
        garment_description=["t-shirt", "long sleeve shirt"][:garments],
        height=H,
        width=W,
    )


def render(pipe, seed=1, steps=2, guidance=2.0, **kwargs):
    args = inputs() | kwargs
    return pipe(
        **args,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images


@pytest.mark.parametrize(
    "people,garments,guidance",
    [(3, 1, 2.0), (3, 1, 1.0), (2, 2, 2.0)],
    ids=["shared-garment-cfg", "shared-garment-no-cfg", "garment-per-person-cfg"],
)
def test_default_path_equals_reference(pipe, people, garments, guidance):
    args = inputs(people, garments)
    ours = render(pipe, guidance=guidance, **args)
    with reference_formulation(pipe):
        ref = render(pipe, guidance=guidance, **args)
    assert_close(ours, ref, PIPE_RTOL, "image")
    # The people differ, so a mix-up of rows would show.
    assert (ours[0] - ours[1]).abs().max() > 1e-2
    # The context manager restored the pipeline's own processors.
    assert not any(
        isinstance(p, OfficialIPAttnProcessor) for p in pipe.unet.attn_processors.values()
    )
    assert torch.equal(render(pipe, guidance=guidance, **args), ours)


def test_reference_formulation_is_the_official_one(pipe, monkeypatch):
    """Materialised zero tokens, GarmentNet to the end at the TryonNet batch, naive attention."""
    seen = {"garment": [], "tryon": []}
    real_features, real_forward = garment_features, tryon_forward
    import idm_vton.testing.reference as perf

    def spy_features(unet, sample, *args, **kwargs):
        seen["garment"].append((sample.shape[0], kwargs.get("run_to_end", False)))
        return real_features(unet, sample, *args, **kwargs)

    def spy_forward(unet, sample, *args, garment=None, null_rows=0, **kwargs):
        seen["tryon"].append((sample.shape[0], null_rows, next(iter(garment.values())).shape[0]))
        return real_forward(unet, sample, *args, garment=garment, null_rows=null_rows, **kwargs)

    monkeypatch.setattr(perf, "garment_features", spy_features)
    monkeypatch.setattr(perf, "tryon_forward", spy_forward)
    conv_out_calls = []
    handle = pipe.garment_unet.conv_out.register_forward_hook(lambda *a: conv_out_calls.append(1))
    try:
        with reference_formulation(pipe):
            render(pipe, steps=2)
    finally:
        handle.remove()
    assert seen["garment"] == [(3, True)] * 2  # one garment copy per person, every step
    assert seen["tryon"] == [(6, 0, 6)] * 2  # [zeros ; features] for all 6 rows
    assert len(conv_out_calls) == 2


def test_garment_net_once_per_step_at_batch_one(pipe, monkeypatch):
    calls = []

    def spy(unet, sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return garment_features(unet, sample, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "garment_features", spy)
    conv_out_calls = []
    handle = pipe.garment_unet.conv_out.register_forward_hook(lambda *a: conv_out_calls.append(1))
    try:
        render(pipe, steps=3)
    finally:
        handle.remove()
    assert calls == [1, 1, 1]  # three people share one GarmentNet pass per step
    assert conv_out_calls == []  # stopped after the last transformer block


def test_early_stop_gives_the_full_run_features(pipe):
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 6, generator=g)
    text = torch.randn(1, 7, 32, generator=g)
    short = garment_features(pipe.garment_unet, sample, 500, text)
    full = garment_features(pipe.garment_unet, sample, 500, text, run_to_end=True)
    assert list(short) == list(full)
    for name in short:
        assert torch.equal(short[name], full[name]), name


# ----------------------------------------------------------------------------- golden cases
@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "cases.json").read_text())
    return meta, load_file(str(GOLDEN / "cases.safetensors"))


@pytest.fixture(scope="module")
def golden_pipe():
    p = TryOnPipeline.from_pretrained(GOLDEN, load_text_encoders=False)
    p.set_progress_bar_config(disable=True)
    return p


def _layers(meta):
    return [e["block"] for e in sorted(meta["tryon_feature_consumers"], key=lambda e: e["index"])]


def test_reference_formulation_golden_tryon_cfg(golden, golden_pipe):
    meta, t = golden
    garment = {n: t[f"tryon_cfg.in.garment_feature.{i:02d}"] for i, n in enumerate(_layers(meta))}
    half = t["tryon_cfg.in.sample"].shape[0] // 2
    args = [
        t["tryon_cfg.in.sample"],
        t["tryon_cfg.in.timestep"],
        t["tryon_cfg.in.encoder_hidden_states"],
        t["tryon_cfg.in.text_embeds"],
        t["tryon_cfg.in.time_ids"],
        t["tryon_cfg.in.image_embeds"],
    ]
    ref_out = t["tryon_cfg.out.noise_pred"]
    conditioning = TryonConditioning(*args[2:])
    cond_features = {k: v[half:] for k, v in garment.items()}
    with reference_formulation(golden_pipe):
        # the official call: materialised zeros, all queries, IP map
        branch = golden_pipe.garment_branch
        out = branch.predict_noise(golden_pipe, *args[:2], conditioning, cond_features, half)
        assert_close(out, ref_out, MODULE_RTOL, "reference formulation")
        maps = [
            p.attn_map
            for p in golden_pipe.unet.attn_processors.values()
            if isinstance(p, OfficialIPAttnProcessor)
        ]
        assert maps and maps[0].shape[-1] == 16
    branch = golden_pipe.garment_branch
    out = branch.predict_noise(golden_pipe, *args[:2], conditioning, cond_features, half)
    assert_close(out, ref_out, MODULE_RTOL, "ours")


@pytest.mark.parametrize("path", ["reference", "ours", "two_phase", "cache"])
def test_golden_end_to_end(golden, golden_pipe, monkeypatch, path):
    """Each path, driven by the recorded noise, gives the golden image and latents."""
    meta, t = golden
    spec = meta["spec"]
    steps = spec["num_inference_steps"]
    draws = replay_recorded_noise(monkeypatch, t, list(range(steps)))
    call = golden_pipe_call(t, spec)
    if path == "reference":
        with reference_formulation(golden_pipe):
            out = golden_pipe(**call).images
    elif path == "two_phase":
        golden_pipe.enable_two_phase_garment()
        try:
            out = golden_pipe(**call).images
        finally:
            golden_pipe.disable_two_phase_garment()
    elif path == "cache":
        cache = GarmentCache(max_bytes=2**30)
        out = golden_pipe(**call, garment_cache=cache).images
        assert len(cache) == 1
    else:
        out = golden_pipe(**call).images
    assert not draws
    assert_close(out, t["pipe.out.image"], PIPE_RTOL, f"{path} image")


# ----------------------------------------------------------------------------- memory modes
def fresh_pipe():
    p = tiny_pipeline(seed=0, text_encoders=True)
    p.set_progress_bar_config(disable=True)
    return p


def test_two_phase_equals_default_on_repeated_calls(pipe):
    default = render(pipe)
    pipe.enable_two_phase_garment(features_on_host=True)
    try:
        first, second = render(pipe), render(pipe)
        per_person = render(pipe, **inputs(2, 2))
    finally:
        pipe.disable_two_phase_garment()
    assert torch.equal(first, default) and torch.equal(second, default)
    assert torch.equal(per_person, render(pipe, **inputs(2, 2)))


def test_fp8_weight_storage_equals_fp8_rounded_weights():
    fp8 = fresh_pipe()
    rounded = fresh_pipe()
    default = render(rounded)
    fp8.enable_fp8_weight_storage()
    cast = 0
    for name in ("unet", "garment_unet"):
        ref_params = dict(getattr(rounded, name).named_parameters())
        for pname, p in getattr(fp8, name).named_parameters():
            if p.dtype == torch.float8_e4m3fn:
                cast += 1
                with torch.no_grad():
                    ref_params[pname].copy_(ref_params[pname].to(torch.float8_e4m3fn).float())
    assert cast > 50 and fp8.unet.dtype == torch.float32  # compute dtype stays fp32
    first, second = render(fp8), render(fp8)
    expected = render(rounded)
    assert torch.equal(first, second)
    assert_close(first, expected, PIPE_RTOL, "fp8 storage vs fp8-rounded weights")
    # fp8 rounding itself is visible: the mode really changed the weights.
    assert (first - default).abs().max() > 1e-4


def test_vae_slicing_and_untriggered_tiling_are_exact(pipe):
    default = render(pipe)
    try:
        pipe.enable_vae_tiling(tile_size=512)  # larger than the image: no tile is cut
        assert torch.equal(render(pipe), default) and torch.equal(render(pipe), default)
    finally:
        pipe.disable_vae_tiling()
    try:
        pipe.enable_vae_slicing()  # one image at a time: batch-1 kernels, same values
        first, second = render(pipe), render(pipe)
    finally:
        pipe.vae.disable_slicing()
    assert torch.equal(first, second)
    assert_close(first, default, PIPE_RTOL, "VAE slicing")


def test_vae_tiling_on_repeated_calls(pipe, monkeypatch):
    default = render(pipe)
    tiled_calls = []
    real = pipe.vae.tiled_decode
    monkeypatch.setattr(
        pipe.vae, "tiled_decode", lambda *a, **k: tiled_calls.append(1) or real(*a, **k)
    )
    pipe.enable_vae_tiling(tile_size=32)
    try:
        first, second = render(pipe), render(pipe)
    finally:
        pipe.disable_vae_tiling()
    assert len(tiled_calls) == 2
    assert torch.equal(first, second)
    # Tiles are blended at their seams: an approximation of the untiled VAE (on this random
    # tiny VAE with 32-pixel tiles a coarse one; on SDXL's at 512 px the seams are subtle).
    diff = (first - default).abs()
    assert 0 < diff.max() and diff.mean() < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs a CUDA device")
def test_model_cpu_offload_on_repeated_calls():
    resident = fresh_pipe().to("cuda")
    default = render(resident).cpu()
    offloaded = fresh_pipe()
    offloaded.enable_model_cpu_offload(device="cuda")
    first, second = render(offloaded).cpu(), render(offloaded).cpu()
    assert_close(first, default, PIPE_RTOL, "offload call 1")
    assert_close(second, default, PIPE_RTOL, "offload call 2")


def test_memory_cli_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--offload", action="store_true")  # the CLI's own flag is kept
    add_memory_arguments(parser)
    args = parser.parse_args(
        ["--two-phase", "--fp8-weights", "--vae-tiling", "--vae-tile-size", "256", "--vae-slicing"]
    )
    p = fresh_pipe()
    assert apply_memory_options(p, args, device="cpu") is p
    assert p.two_phase is not None and p.vae.use_tiling and p.vae.use_slicing
    assert p.vae.tile_sample_min_size == 256
    assert p.unet.conv_in.weight.dtype == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="CUDA"):
        apply_memory_options(fresh_pipe(), parser.parse_args(["--offload"]), device="cpu")
    bare = argparse.ArgumentParser()
    add_memory_arguments(bare)
    assert bare.parse_args(["--offload"]).offload


# ----------------------------------------------------------------------------- garment cache
def test_garment_cache_identical_results_and_skips_work(pipe, monkeypatch):
    cache = GarmentCache(max_bytes=2**30)
    default = render(pipe, seed=4)
    calls = []

    def spy(unet, sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return garment_features(unet, sample, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "garment_features", spy)
    first = render(pipe, seed=4, garment_cache=cache)
    assert calls == [1, 1] and (cache.hits, cache.misses) == (0, 1)
    other_people = inputs(people=2, seed=9)
    other_people.update(garment_image=inputs()["garment_image"])
    pipe.garment_cache = cache  # the pipeline attribute works as well as the argument
    try:
        second = render(pipe, seed=4)
        with_others = render(pipe, seed=4, **other_people)
    finally:
        pipe.garment_cache = None
    # Same call again: a hit, no GarmentNet pass. Two people: the garment's posterior noise is
    # drawn after the (2-row) initial noise, so it is another draw: another key, computed once.
    assert calls == [1, 1, 1, 1]
    assert torch.equal(first, default) and torch.equal(second, default)
    assert cache.hits == 1 and cache.misses == 2
    uncached = render(pipe, seed=4, **other_people)
    assert torch.equal(with_others, uncached)
    # Every key field matters: description, steps, seed (posterior draw), strength.
    n = len(cache)
    render(pipe, seed=4, garment_cache=cache, garment_description=["polo shirt"])
    render(pipe, seed=4, garment_cache=cache, steps=3)
    render(pipe, seed=5, garment_cache=cache)
    render(pipe, seed=4, garment_cache=cache, strength=0.5)
    assert len(cache) == n + 4


def test_garment_cache_hits_across_batches_with_a_garment_generator(pipe, monkeypatch):
    """With ``garment_generator`` the garment draw, so the cache key, ignores who is batched."""
    cache = GarmentCache(max_bytes=2**30)
    calls = []

    def spy(unet, sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return garment_features(unet, sample, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "garment_features", spy)
    others = inputs(people=2, seed=9) | {"garment_image": inputs()["garment_image"]}
    for seed, people in ((4, {}), (5, others)):
        cached = render(
            pipe,
            seed=seed,
            garment_cache=cache,
            garment_generator=torch.Generator().manual_seed(7),
            **people,
        )
        uncached = render(
            pipe, seed=seed, garment_generator=torch.Generator().manual_seed(7), **people
        )
        assert torch.equal(cached, uncached)
    # A miss, then a hit: GarmentNet ran 2 steps for the cache and 2 + 2 for the uncached calls.
    assert (cache.misses, cache.hits) == (1, 1)
    assert calls == [1] * 6


def test_garment_cache_budget_lru():
    p = fresh_pipe()
    probe = GarmentCache(max_bytes=2**30)
    render(p, garment_cache=probe)
    entry = probe.nbytes
    assert entry > 0
    cache = GarmentCache(max_bytes=entry * 2 + entry // 2)  # room for two entries
    g = [inputs(seed=s)["garment_image"] for s in range(3)]
    for garment in g:
        render(p, garment_cache=cache, garment_image=garment)
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 2 and cache.nbytes == 2 * entry
    render(p, garment_cache=cache, garment_image=g[2])  # most recent: hit
    render(p, garment_cache=cache, garment_image=g[0])  # evicted: miss, evicts g[1]
    assert (cache.hits, cache.misses) == (1, 4)
    render(p, garment_cache=cache, garment_image=g[2])
    assert cache.hits == 2
    tiny_budget = GarmentCache(max_bytes=entry - 1)
    out = render(p, garment_cache=tiny_budget)
    assert len(tiny_budget) == 0 and torch.equal(out, render(p))


# ----------------------------------------------------------------------------- compile
def test_transformer_block_traces_without_graph_breaks(pipe):
    """A TryonNet transformer block (garment attn1 with null rows + IP-Adapter attn2): one graph."""
    g = torch.Generator().manual_seed(0)
    name = "down_blocks.1.attentions.0.transformer_blocks.0"
    block = pipe.unet.get_submodule(name)
    c = block.norm1.normalized_shape[0]
    pipe.garment_store.set_features({name: torch.randn(1, 12, c, generator=g)}, null_rows=2)
    hidden = torch.randn(4, 12, c, generator=g)
    context = (torch.randn(4, 77, 32, generator=g), [torch.randn(4, 16, 32, generator=g)])

    def run(h, text, ip):
        return block(h, encoder_hidden_states=(text, [ip]))

    try:
        explained = torch._dynamo.explain(run)(hidden, context[0], context[1][0])
        eager = run(hidden, context[0], context[1][0])
    finally:
        pipe.garment_store.clear()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert eager.shape == hidden.shape


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IDM_VTON_SLOW") != "1", reason="slow: set IDM_VTON_SLOW=1")
def test_tryon_net_traces_without_graph_breaks(pipe):
    """The whole TryonNet call as the pipeline makes it: one graph (about a minute on 2 cores)."""
    g = torch.Generator().manual_seed(0)
    feats = garment_features(
        pipe.garment_unet, torch.randn(1, 4, 8, 6, generator=g), 10, torch.randn(1, 77, 32)
    )
    args = (
        pipe.unet,
        torch.randn(4, 13, 8, 6, generator=g),
        torch.tensor(10),
        torch.randn(4, 77, 32, generator=g),
        torch.randn(4, 16, generator=g),
        torch.tensor([[64.0, 48, 0, 0, 64, 48]]).expand(4, -1),
        torch.randn(4, 16, 32, generator=g),
    )
    pipe.garment_store.set_features(feats, null_rows=2)
    try:
        explained = torch._dynamo.explain(tryon_forward)(*args)
    finally:
        pipe.garment_store.clear()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
