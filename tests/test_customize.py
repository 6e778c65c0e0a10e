"""Customization (SPEC section 5) and from-scratch SDXL initialisation, on the tiny model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from idm_vton.errors import CustomizationError
from idm_vton.loaders.customization import apply_customization, save_customization
from idm_vton.testing.tiny import tiny_pipeline
from idm_vton.training.customize import CustomizeConfig, customization_targets, customize

H, W = 64, 48
UP_ATTN = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$"
)


def image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8))


def mask():
    m = np.zeros((H, W), np.uint8)
    m[16:48, 12:36] = 255
    return Image.fromarray(m)


def render(pipe):
    return pipe(
        person_image=image(0),
        garment_image=image(1),
        mask_image=mask(),
        pose_image=image(2),
        garment_description="short sleeve t-shirts",
        num_inference_steps=2,
        height=H,
        width=W,
        generator=torch.Generator().manual_seed(0),
        paste_back=False,
        output_type="pt",
    ).images


@pytest.fixture(scope="module", params=["full", "lora"])
def tuned(request, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = tiny_pipeline(seed=0)
        before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        config = CustomizeConfig(
            steps=4, lr=1e-2, method=request.param, lora_rank=2, base_name="tiny"
        )
        result = customize(
            pipe, image(0), image(1), mask(), image(2), "short sleeve t-shirts", config,
            height=H, width=W, progress=False,
        )  # fmt: skip
        path = tmp_path_factory.mktemp("delta") / f"{request.param}.safetensors"
        save_customization(result, path, dtype="fp32")
        out = render(pipe)
    finally:
        torch.set_num_threads(threads)
    return request.param, pipe, before, result, path, out


def test_only_up_block_attention_changes(tuned):
    method, pipe, before, result, _, _ = tuned
    after = pipe.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "customization changed nothing"
    assert all(UP_ATTN.match(k) for k in changed), sorted(changed)[:5]
    # Every tuned layer moved (biases only in the full variant: LoRA adapts weights).
    targets = customization_targets(pipe.unet)
    expected = {f"{t}.weight" for t in targets}
    if method == "full":
        expected |= {f"{t}.bias" for t in targets if pipe.unet.get_submodule(t).bias is not None}
    assert changed == expected
    assert not any("to_k_ip" in k or "to_v_ip" in k for k in changed)


def test_delta_is_small_and_names_its_base(tuned):
    method, pipe, _, result, path, _ = tuned
    unet_size = sum(p.numel() for p in pipe.unet.parameters())
    delta_size = sum(t.numel() for t in result["tensors"].values())
    limit = 0.05 if method == "lora" else 0.10  # up-block attention is 7.9 % of the tiny UNet
    assert delta_size / unet_size < limit, delta_size / unet_size
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(result["tensors"])
    assert meta["base_name"] == "tiny" and meta["method"] == method
    assert re.fullmatch(r"[0-9a-f]{64}", meta["base_fingerprint"])
    assert result["losses"][0] != result["losses"][-1]


def test_applying_the_delta_reproduces_the_tuned_model(tuned):
    method, _, _, _, path, tuned_out = tuned
    fresh = tiny_pipeline(seed=0)
    base_out = render(fresh)
    info = apply_customization(fresh, path)
    assert info.method == method and info.exact_base
    assert torch.allclose(render(fresh), tuned_out, atol=1e-5)
    assert (base_out - tuned_out).abs().max() > 1e-4  # the tuning changed the output


def test_another_base_is_refused(tuned):
    _, _, _, _, path, _ = tuned
    other = tiny_pipeline(seed=1)
    before = other.unet.state_dict()[
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    ].clone()
    with pytest.raises(CustomizationError, match="made for another base model \\(tiny"):
        apply_customization(other, path)
    after = other.unet.state_dict()[
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    ]
    assert torch.equal(before, after)  # nothing applied


def test_same_base_in_bf16_is_accepted(tuned):
    _, _, _, _, path, _ = tuned
    pipe = tiny_pipeline(seed=0)
    pipe.unet.to(torch.bfloat16)
    info = apply_customization(pipe, path)
    assert not info.exact_base


def test_cli_writes_a_delta(tmp_path):
    from idm_vton.commands.main import main as cli_main

    for name, img in (("p", image(0)), ("g", image(1)), ("d", image(2)), ("m", mask())):
        img.save(tmp_path / f"{name}.png")
    out = tmp_path / "delta.safetensors"
    rc = cli_main(
        ["customize", "--model", "tiny", "--person", str(tmp_path / "p.png"),
         "--garment", str(tmp_path / "g.png"), "--mask", str(tmp_path / "m.png"),
         "--pose", str(tmp_path / "d.png"), "--description", "t-shirts", "--steps", "1",
         "--method", "lora", "--lora-rank", "2", "--height", str(H), "--width", str(W),
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0 and out.is_file()
    assert apply_customization(tiny_pipeline(seed=0), out).method == "lora"
    # `idm-vton tryon --customization` applies it: the render changes, the untouched pixels do not
    tryon = ["tryon", "--model", "tiny", "--person", str(tmp_path / "p.png"), "--garment", str(tmp_path / "g.png"),
             "--mask", str(tmp_path / "m.png"), "--pose", str(tmp_path / "d.png"), "--description", "t-shirts",
             "--steps", "1", "--height", str(H), "--width", str(W), "--device", "cpu", "--no-paste-back"]  # fmt: skip
    assert cli_main([*tryon, "--out", str(tmp_path / "base.png")]) == 0
    assert (
        cli_main([*tryon, "--out", str(tmp_path / "custom.png"), "--customization", str(out)]) == 0
    )
    base_img = np.asarray(Image.open(tmp_path / "base.png"))
    custom_img = np.asarray(Image.open(tmp_path / "custom.png"))
    assert not np.array_equal(base_img, custom_img)
    assert (
        cli_main(
            [*tryon, "--out", str(tmp_path / "x.png"), "--customization", str(tmp_path / "no.st")]
        )
        == 2
    )
    assert not (tmp_path / "x.png").exists()
    bad = cli_main(
        ["customize", "--model", "tiny", "--person", str(tmp_path / "missing.png"),
         "--garment", "x", "--mask", "x", "--pose", "x", "--description", "x", "--out", str(out)]
    )  # fmt: skip
    assert bad == 2


# ------------------------------------------------------------------------ SDXL initialisation
def _original_resampler_state(projection) -> dict[str, torch.Tensor]:
    """The tiny Resampler under the original IP-Adapter Plus key names (written by hand)."""
    names = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q",
             "attn.to_out.0": "0.to_out", "ff.0": "1.0", "ff.1.net.0.proj": "1.1",
             "ff.1.net.2": "1.3"}  # fmt: skip
    state = projection.state_dict()
    out = {}
    for key, value in state.items():
        short = key[len("resampler.") :]
        m = re.match(r"layers\.(\d+)\.(.+)\.(weight|bias)$", short)
        if m is None:
            out[short] = value.clone()
            continue
        layer, part, kind = m.groups()
        if part == "attn.to_k":
            v = state[f"resampler.layers.{layer}.attn.to_v.{kind}"]
            out[f"layers.{layer}.0.to_kv.{kind}"] = torch.cat([value, v])
        elif part != "attn.to_v":
            out[f"layers.{layer}.{names[part]}.{kind}"] = value.clone()
    return out


def test_init_from_sdxl_widens_conv_in_and_loads_the_ip_adapter(tmp_path):
    from diffusers import UNet2DConditionModel

    from idm_vton.testing.tiny import _unet_config
    from idm_vton.training.sdxl_init import build_from_sdxl

    donor = tiny_pipeline(seed=4)
    torch.manual_seed(0)
    inpaint = UNet2DConditionModel(**_unet_config(9, tryon=True))
    inpaint.save_pretrained(tmp_path / "inpaint" / "unet")
    for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        getattr(donor, name).save_pretrained(tmp_path / "inpaint" / name)
    donor.garment_unet.save_pretrained(tmp_path / "base" / "unet")
    donor.image_encoder.save_pretrained(tmp_path / "encoder")
    # Original IP-Adapter file: "image_proj" + "ip_adapter" numbered over all processors.
    cross = [n for n in donor.unet.attn_processors if n.endswith("attn2.processor")]
    ip = {}
    for k, name in enumerate(cross):
        for kv in "kv":
            ip[f"{2 * k + 1}.to_{kv}_ip.weight"] = donor.unet.state_dict()[
                f"{name}.to_{kv}_ip.0.weight"
            ]
    torch.save(
        {"image_proj": _original_resampler_state(donor.image_projection), "ip_adapter": ip},
        tmp_path / "ip.bin",
    )
    pipe = build_from_sdxl(
        tmp_path / "inpaint", tmp_path / "base", tmp_path / "ip.bin", tmp_path / "encoder"
    )

    weight = pipe.unet.conv_in.weight
    assert pipe.unet.config.in_channels == 13 and weight.shape[1] == 13
    assert torch.equal(weight[:, :9], inpaint.conv_in.weight)
    assert not weight[:, 9:].any()  # the pose channels start at zero
    ours, donors = pipe.unet.state_dict(), donor.unet.state_dict()
    for name in cross:
        key = f"{name}.to_k_ip.0.weight"
        assert torch.equal(ours[key], donors[key])
    for key, value in donor.image_projection.state_dict().items():
        assert torch.equal(pipe.image_projection.state_dict()[key], value), key
    assert torch.equal(
        pipe.garment_unet.state_dict()["conv_in.weight"],
        donor.garment_unet.state_dict()["conv_in.weight"],
    )
    assert render(pipe).shape == (1, 3, H, W)  # the assembled model runs end to end
