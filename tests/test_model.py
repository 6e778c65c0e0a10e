"""Model pieces: conv_in widening, garment attention processors, checkpoint conversion."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from idm_vton.errors import CheckpointError
from idm_vton.loaders.checkpoint import (
    check_state_dict,
    convert_tryon_state_dict,
    read_state_dict,
)
from idm_vton.loaders.pipeline import load_garment_unet, load_tryon_unet
from idm_vton.models.garment_attention import GarmentAttentionProcessor, GarmentFeatureStore
from idm_vton.models.tryon_net import garment_features, widen_conv_in
from idm_vton.pipelines.convert import convert_checkpoint
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.testing.reference import NaiveGarmentAttentionProcessor

from .helpers.checkpoints import (
    PUBLISHED_EMA_KEYS,
    published_tryon_state,
    write_published_checkpoint,
)
from .helpers.pickles import RunsCode


@pytest.fixture(scope="module")
def tiny():
    return tiny_pipeline(seed=1)


# ---------------------------------------------------------------- conv_in widening
def test_widen_conv_in_keeps_the_inpainting_output():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        norm_num_groups=8,
    ).eval()
    x = torch.randn(2, 9, 8, 8)
    text = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = unet(x, 10, text).sample
        widened = widen_conv_in(copy.deepcopy(unet), 13)
        extra = torch.randn(2, 4, 8, 8) * 10  # anything in the new channels
        after = widened(torch.cat([x, extra], dim=1), 10, text).sample
    assert widened.config.in_channels == 13
    assert widened.conv_in.weight.shape[1] == 13
    assert torch.equal(
        widened.conv_in.weight[:, 9:], torch.zeros_like(widened.conv_in.weight[:, 9:])
    )
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # the new channels are trainable: a non-zero weight there changes the output
    with torch.no_grad():
        widened.conv_in.weight[:, 9:] += 0.1
        changed = widened(torch.cat([x, extra], dim=1), 10, text).sample
    assert (changed - before).abs().max() > 1e-3


def test_widen_conv_in_config_reloads(tmp_path):
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=8,
    )
    widen_conv_in(unet, 13)
    unet.save_pretrained(tmp_path)
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path)
    assert reloaded.conv_in.in_channels == 13
    assert torch.equal(reloaded.conv_in.weight, unet.conv_in.weight)
    with pytest.raises(ValueError, match="narrow"):
        widen_conv_in(unet, 4)


# ---------------------------------------------------------------- processors
def naive_garment_attention(
    attn: Attention, h: torch.Tensor, garment: torch.Tensor
) -> torch.Tensor:
    """Concatenate, self-attend with explicit softmax, keep the person rows (the paper's form)."""
    z = torch.cat([h, garment], dim=1)
    q, k, v = attn.to_q(z), attn.to_k(z), attn.to_v(z)
    b, n, d = q.shape
    heads = attn.heads
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    out = attn.to_out[1](attn.to_out[0](out))
    return out[:, : h.shape[1]]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("naive", [False, True])
def test_garment_attention_equals_concatenate_attend_slice(bias, naive):
    torch.manual_seed(0)
    attn = Attention(query_dim=24, heads=3, dim_head=8, bias=bias).eval()
    store = GarmentFeatureStore()
    attn.set_processor(
        (NaiveGarmentAttentionProcessor if naive else GarmentAttentionProcessor)("layer", store)
    )
    h = torch.randn(4, 10, 24)  # rows: 2 unconditional, 2 conditional
    garment = torch.randn(1, 7, 24)  # one garment shared by both conditional rows
    store.set_features({"layer": garment}, null_rows=2)
    with torch.no_grad():
        out = attn(h)
        ref_uncond = naive_garment_attention(attn, h[:2], torch.zeros(2, 7, 24))
        ref_cond = naive_garment_attention(attn, h[2:], garment.expand(2, -1, -1))
    torch.testing.assert_close(out, torch.cat([ref_uncond, ref_cond]), rtol=1e-5, atol=1e-5)
    # the zero tokens matter: attending without them gives another result
    with torch.no_grad():
        plain = naive_garment_attention(attn, h[:2], torch.zeros(2, 0, 24))
    assert (plain - ref_uncond).abs().max() > 1e-3


def test_garment_attention_per_row_garments():
    torch.manual_seed(1)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    store = GarmentFeatureStore()
    attn.set_processor(GarmentAttentionProcessor("x", store))
    h, garment = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    store.set_features({"x": garment})
    with torch.no_grad():
        out = attn(h)
        ref = naive_garment_attention(attn, h, garment)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    store.set_features({"x": torch.randn(2, 5, 16)})
    with pytest.raises(ValueError, match="cannot serve"):
        attn(h)


def test_garment_capture_records_the_self_attention_input(tiny):
    """The captured features are exactly norm1(hidden) of each GarmentNet transformer block."""
    recorded = {}
    hooks = []
    for name, module in tiny.garment_unet.named_modules():
        if name.endswith("transformer_blocks.0") or name.endswith("transformer_blocks.1"):
            hooks.append(
                module.norm1.register_forward_hook(
                    lambda m, i, o, n=name: recorded.setdefault(n, o)
                )
            )
    torch.manual_seed(0)
    x, text = torch.randn(1, 4, 16, 12), torch.randn(1, 7, 32)
    feats = garment_features(tiny.garment_unet, x, 500, text)
    for h in hooks:
        h.remove()
    assert list(feats) == list(recorded)
    for name in feats:
        assert torch.equal(feats[name], recorded[name])


# ---------------------------------------------------------------- checkpoint conversion
def test_convert_published_keys_roundtrip(tiny):
    published = published_tryon_state(tiny)
    assert any(k.endswith("attn2.processor.to_k_ip.weight") for k in published)
    assert any(".0.to_kv." in k for k in published)
    unet_state, proj_state = convert_tryon_state_dict(published)
    check_state_dict(tiny.unet, unet_state, "TryonNet")
    check_state_dict(tiny.image_projection, proj_state, "Resampler")
    for key, value in tiny.unet.state_dict().items():
        assert torch.equal(unet_state[key], value), key
    for key, value in tiny.image_projection.state_dict().items():
        assert torch.equal(proj_state[key], value), key
    # our own naming passes through unchanged
    native, none = convert_tryon_state_dict(tiny.unet.state_dict())
    assert none == {} and native.keys() == tiny.unet.state_dict().keys()


def test_check_state_dict_names_every_problem(tiny):
    state = dict(tiny.unet.state_dict())
    missing_key = next(k for k in state if k.endswith("to_v_ip.0.weight"))
    del state[missing_key]
    state["down_blocks.9.extra.weight"] = torch.zeros(1)
    state["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    with pytest.raises(CheckpointError) as err:
        check_state_dict(tiny.unet, state, "TryonNet")
    message = str(err.value)
    assert missing_key in message and "down_blocks.9.extra.weight" in message
    assert "conv_in.weight: checkpoint (32, 9, 3, 3) vs model (32, 13, 3, 3)" in message


def test_unknown_resampler_key_is_rejected(tiny):
    published = published_tryon_state(tiny)
    published["encoder_hid_proj.layers.0.2.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match="unexpected Resampler key: encoder_hid_proj.layers.0.2.weight"
    ):
        convert_tryon_state_dict(published)


@pytest.mark.parametrize("fmt,dtype", [("bin", torch.float32), ("safetensors", torch.float16)])
def test_load_published_layout(tiny, tmp_path, fmt, dtype):
    root = write_published_checkpoint(tiny, tmp_path / "published", fmt=fmt, dtype=dtype)
    unet, projection = load_tryon_unet(root / "unet")
    for key, value in tiny.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[key], value.to(dtype).float()), key
    for key, value in tiny.image_projection.state_dict().items():
        assert torch.equal(projection.state_dict()[key], value.to(dtype).float()), key
    garment = load_garment_unet(root / "unet_encoder")
    assert garment.config.addition_embed_type is None
    assert garment.state_dict().keys() == tiny.garment_unet.state_dict().keys()


def test_mis_shaped_published_checkpoint_is_rejected(tiny, tmp_path):
    root = write_published_checkpoint(tiny, tmp_path / "published", fmt="bin")
    config = json.loads((root / "unet" / "config.json").read_text())
    config["in_channels"] = 9
    (root / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="conv_in.weight"):
        load_tryon_unet(root / "unet")


def test_convert_roundtrip_is_bit_identical(tiny, tmp_path):
    root = write_published_checkpoint(tiny, tmp_path / "published", fmt="bin")
    out = convert_checkpoint(root, tmp_path / "converted", dtype=torch.float32)
    assert not list(out.rglob("*.bin")), "converted checkpoint must not contain pickles"
    assert (out / "image_projection" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = TryOnPipeline.from_pretrained(out)
    for name in (
        "unet",
        "garment_unet",
        "image_projection",
        "vae",
        "image_encoder",
        "text_encoder",
    ):
        mine, ref = getattr(reloaded, name).state_dict(), getattr(tiny, name).state_dict()
        if name == "garment_unet":
            ref = {k: v for k, v in ref.items()}
        assert mine.keys() == ref.keys(), name
        for key in ref:
            assert torch.equal(mine[key], ref[key]), f"{name}.{key}"
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(root, out, dtype=torch.float32)
    half = convert_checkpoint(root, tmp_path / "half", dtype=torch.float16)
    reloaded_half = TryOnPipeline.from_pretrained(half, torch_dtype=torch.float16)
    assert reloaded_half.unet.dtype == torch.float16
    assert reloaded_half.vae.dtype == torch.float32  # the SDXL VAE stays fp32 under fp16


def test_resampler_config_from_published_shapes(tmp_path):
    """Without resampler_config.json the sizes come from the weights (IDM-VTON: 20 heads of 64)."""
    from idm_vton.loaders.pipeline import _resampler_config

    def meta(*shape):
        return torch.empty(*shape, device="meta")

    state = {"resampler.latents": meta(1, 16, 1280), "resampler.proj_in.weight": meta(1280, 1280)}
    for i in range(4):
        state[f"resampler.layers.{i}.attn.to_q.weight"] = meta(1280, 1280)
        state[f"resampler.layers.{i}.ff.1.net.0.proj.weight"] = meta(5120, 1280)
    config = _resampler_config(tmp_path, {"cross_attention_dim": 2048}, state)
    assert config == {
        "num_queries": 16,
        "dim": 1280,
        "embedding_dim": 1280,
        "depth": 4,
        "ff_mult": 4,
        "output_dim": 2048,
        "dim_head": 64,
        "heads": 20,
    }
    (tmp_path / "resampler_config.json").write_text(json.dumps({"heads": 16, "dim_head": 64}))
    with pytest.raises(CheckpointError, match="16 x 64"):
        _resampler_config(tmp_path, {"cross_attention_dim": 2048}, state)


# ---------------------------------------------------------------- published configs, pickles
@contextmanager
def diffusers_warnings():
    """Collect what diffusers logs at WARNING or above (its logger does not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.WARNING)
    diffusers_logger.addHandler(handler)
    try:
        yield records
    finally:
        diffusers_logger.removeHandler(handler)
        diffusers_logger.setLevel(level)


def test_published_config_with_ema_keys_loads_without_warnings(tiny, tmp_path):
    root = write_published_checkpoint(tiny, tmp_path / "published")
    written = json.loads((root / "unet" / "config.json").read_text())
    assert PUBLISHED_EMA_KEYS.items() <= written.items()
    with diffusers_warnings() as records:
        pipe = TryOnPipeline.from_pretrained(root)
    assert [r.getMessage() for r in records] == []
    for unet in (pipe.unet, pipe.garment_unet):
        assert not PUBLISHED_EMA_KEYS.keys() & dict(unet.config).keys()


def test_converted_configs_carry_no_ema_keys_and_reload_silently(tiny, tmp_path):
    root = write_published_checkpoint(tiny, tmp_path / "published")
    # A component diffusers loads itself keeps unknown keys in its config: the converter drops them.
    vae_config = json.loads((root / "vae" / "config.json").read_text())
    (root / "vae" / "config.json").write_text(json.dumps({**vae_config, **PUBLISHED_EMA_KEYS}))
    out = convert_checkpoint(root, tmp_path / "converted", dtype=torch.float32)
    configs = sorted(out.rglob("config.json"))
    assert {p.parent.name for p in configs} >= {"unet", "garment_unet", "image_projection", "vae"}
    for path in configs:
        leftover = PUBLISHED_EMA_KEYS.keys() & json.loads(path.read_text()).keys()
        assert not leftover, f"{path.relative_to(out)} keeps {sorted(leftover)}"
    with diffusers_warnings() as records:
        reloaded = TryOnPipeline.from_pretrained(out)
    assert [r.getMessage() for r in records] == []
    for key, value in tiny.unet.state_dict().items():
        assert torch.equal(reloaded.unet.state_dict()[key], value), key


def test_both_unet_encoder_config_forms_give_the_same_garment_net(tiny, tmp_path):
    from safetensors.torch import load_file

    published = write_published_checkpoint(tiny, tmp_path / "published")
    text_time = write_published_checkpoint(
        tiny, tmp_path / "text_time", garment_addition_embed_type="text_time"
    )
    nets = {}
    for root, form in ((published, None), (text_time, "text_time")):
        folder = root / "unet_encoder"
        assert json.loads((folder / "config.json").read_text())["addition_embed_type"] == form
        weights = load_file(folder / "diffusion_pytorch_model.safetensors")
        assert sorted(k for k in weights if k.startswith("add_embedding.")) == [
            "add_embedding.linear_1.bias",
            "add_embedding.linear_1.weight",
            "add_embedding.linear_2.bias",
            "add_embedding.linear_2.weight",
        ]
        with diffusers_warnings() as records:
            nets[form] = load_garment_unet(folder)
        assert [r.getMessage() for r in records] == []
    reference = tiny.garment_unet.state_dict()
    for net in nets.values():
        assert net.config.addition_embed_type is None
        assert net.state_dict().keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(net.state_dict()[key], value), key


def _bin_folder(tmp_path: Path, name: str, payload: dict, legacy: bool) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    torch.save(
        payload,
        folder / "diffusion_pytorch_model.bin",
        _use_new_zipfile_serialization=not legacy,
    )
    return folder


def test_legacy_format_bin_loads_to_the_same_tensors(tiny, tmp_path):
    state = {"w": torch.randn(40, 30), "i": torch.arange(10), "h": torch.randn(7).half()}
    folder = _bin_folder(tmp_path, "legacy", state, legacy=True)
    assert not zipfile.is_zipfile(folder / "diffusion_pytorch_model.bin")
    loaded = read_state_dict(folder)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    # A whole published TryonNet saved in the legacy format loads like the zip one.
    root = write_published_checkpoint(tiny, tmp_path / "published", fmt="bin")
    weights = root / "unet" / "diffusion_pytorch_model.bin"
    torch.save(
        torch.load(weights, weights_only=True), weights, _use_new_zipfile_serialization=False
    )
    unet, _ = load_tryon_unet(root / "unet")
    for key, value in tiny.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[key], value), key


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_bin_is_called_truncated(tmp_path, legacy):
    folder = _bin_folder(tmp_path, "cut", {"w": torch.randn(100, 100)}, legacy=legacy)
    path = folder / "diffusion_pytorch_model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is truncated or corrupt") as err:
        read_state_dict(folder)
    assert "\n" not in str(err.value) and "refused" not in str(err.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_bin_with_code_is_refused_for_safety(tmp_path, legacy):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(RunsCode(proof)))
    assert proof.exists(), "the payload must run code when unpickled normally"
    marker = tmp_path / "ran"
    payload = {"w": torch.randn(30, 30), "x": RunsCode(marker)}
    folder = _bin_folder(tmp_path, "evil", payload, legacy=legacy)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(folder)
    message = str(err.value)
    assert "holds objects other than tensors" in message and "refused for safety" in message
    assert "_leave_marker" in message
    assert "truncated" not in message and "\n" not in message
    assert not marker.exists()
