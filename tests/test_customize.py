"""Customization (paper Sec. 3.3) and from-scratch SDXL initialisation, on the tiny model."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from idm_vton.errors import CustomizationError
from idm_vton.loaders.customization import (
    apply_customization,
    apply_customization_to_unet,
    save_customization,
)
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.training.customize import CustomizeConfig, customization_targets, customize

from .helpers.pipeline_inputs import H, W, box_mask, random_photo, tryon_images

UP_ATTN = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$"
)


def render(pipe):
    """The raw H x W render (no paste-back) as a tensor."""
    return tryon_images(
        pipe, garment_description="short sleeve t-shirts", paste_back=False, output_type="pt"
    )


def _customize(pipe, method: str) -> dict:
    """Tune the tiny model 4 steps (LoRA: rank 2, alpha 4, so the stored alpha matters)."""
    config = CustomizeConfig(
        steps=4, lr=1e-2, method=method, lora_rank=2, lora_alpha=4.0, base_name="tiny"
    )
    return customize(
        pipe, random_photo(0), random_photo(1), box_mask(), random_photo(2),
        "short sleeve t-shirts", config, height=H, width=W, progress=False,
    )  # fmt: skip


def _customized(method, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = tiny_pipeline(seed=0)
        before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        result = _customize(pipe, method)
        path = tmp_path_factory.mktemp("delta") / f"{method}.safetensors"
        save_customization(result, path, dtype="fp32")
        out = render(pipe)
    finally:
        torch.set_num_threads(threads)
    return method, pipe, before, result, path, out


@pytest.fixture(scope="module")
def tuned_full(tmp_path_factory):
    return _customized("full", tmp_path_factory)


@pytest.fixture(scope="module")
def tuned_lora(tmp_path_factory):
    return _customized("lora", tmp_path_factory)


@pytest.fixture(scope="module", params=["full", "lora"])
def tuned(request):
    return request.getfixturevalue(f"tuned_{request.param}")


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
    with pytest.raises(CustomizationError, match="made for another base model \\(tiny") as err:
        apply_customization(other, path)
    assert "\n" not in str(err.value)
    after = other.unet.state_dict()[
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    ]
    assert torch.equal(before, after)  # nothing applied


def test_same_base_in_bf16_is_accepted(tuned):
    _, tuned_pipe, before, _, path, tuned_out = tuned
    base = tiny_pipeline(seed=0).to(dtype=torch.bfloat16)
    pipe = tiny_pipeline(seed=0).to(dtype=torch.bfloat16)
    info = apply_customization(pipe, path)
    assert not info.exact_base
    # The delta reached the bf16 weights: every tuned tensor is the fp32-tuned one up to two
    # bf16 roundings (of the base, then of the sum), and nearly every value left the bf16 base.
    tuned_state, applied, plain = (
        tuned_pipe.unet.state_dict(),
        pipe.unet.state_dict(),
        base.unet.state_dict(),
    )
    changed = [k for k in before if not torch.equal(before[k], tuned_state[k])]
    assert changed
    for key in changed:
        bound = 2.0**-8 * (before[key].abs() + tuned_state[key].abs()) + 1e-6
        assert ((applied[key].float() - tuned_state[key]).abs() <= bound).all(), key
    moved = sum(int((applied[k] != plain[k]).sum()) for k in changed)
    assert moved > 0.9 * sum(applied[k].numel() for k in changed)
    # The render: as close to the fp32 customized one as bf16 rendering gets, far from the base.
    base_out = render(base).float()
    bf16_error = (base_out - render(tiny_pipeline(seed=0))).abs().mean()
    custom_out = render(pipe).float()
    assert (custom_out - tuned_out).abs().mean() <= 2 * bf16_error
    assert (custom_out - base_out).abs().mean() > 5 * bf16_error


# ------------------------------------------------------------------------ the LoRA file
def _targets() -> list[str]:
    return customization_targets(tiny_pipeline(seed=0).unet)


def test_lora_file_is_read_by_diffusers(tuned_lora):
    from diffusers import StableDiffusionXLPipeline

    _, _, _, result, path, _ = tuned_lora
    state, alphas, meta = StableDiffusionXLPipeline.lora_state_dict(
        str(path), return_lora_metadata=True
    )
    targets = _targets()
    expected = {f"unet.{t}.lora_{f}.weight" for t in targets for f in "AB"}
    assert set(state) == set(result["tensors"]) == expected
    assert all(UP_ATTN.match(f"{t}.weight") for t in targets)  # only up-block attention
    for key, value in state.items():
        assert torch.equal(value, result["tensors"][key]), key
    unet = tiny_pipeline(seed=0).unet
    for target in targets:
        linear = unet.get_submodule(target)
        assert state[f"unet.{target}.lora_A.weight"].shape == (2, linear.in_features)
        assert state[f"unet.{target}.lora_B.weight"].shape == (linear.out_features, 2)
    assert alphas is None  # not a kohya file: rank and alpha come from the adapter metadata
    assert meta == {"unet.r": 2, "unet.lora_alpha": 4.0, "unet.target_modules": targets}
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "pt"


def _stock_unet() -> UNet2DConditionModel:
    """The tiny TryonNet's base weights in a plain diffusers UNet (no IP-Adapter or garment
    processors, whose weights live under ``.processor.``)."""
    base = tiny_pipeline(seed=0).unet
    stock = UNet2DConditionModel.from_config(base.config)
    plain = {k: v for k, v in base.state_dict().items() if ".processor." not in k}
    stock.load_state_dict(plain, strict=True)
    return stock


def test_diffusers_applies_the_lora_as_we_do(tuned_lora):
    from diffusers import StableDiffusionXLPipeline

    _, tuned_pipe, _, _, path, _ = tuned_lora
    theirs = _stock_unet()
    ours = copy.deepcopy(theirs)
    assert apply_customization_to_unet(ours, path).exact_base
    # What customize left in the pipeline is exactly what the file applies.
    tuned_state = tuned_pipe.unet.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, tuned_state[key]), key

    g = torch.Generator().manual_seed(0)
    inputs = dict(
        sample=torch.randn(2, 13, H // 8, W // 8, generator=g),
        timestep=torch.tensor([10, 700]),
        encoder_hidden_states=torch.randn(2, 7, 32, generator=g),
        added_cond_kwargs={
            "text_embeds": torch.randn(2, 16, generator=g),
            "time_ids": torch.randn(2, 6, generator=g),
        },
    )
    with torch.no_grad():
        base_out = theirs(**inputs).sample
        state, _, meta = StableDiffusionXLPipeline.lora_state_dict(
            str(path), return_lora_metadata=True
        )
        theirs.load_lora_adapter(state, prefix="unet", adapter_name="customization", metadata=meta)
        diffusers_out = theirs(**inputs).sample
        our_out = ours(**inputs).sample
    torch.testing.assert_close(diffusers_out, our_out)
    assert (our_out - base_out).abs().max() > 1e-2  # the LoRA changes the output


def _rewritten(path: Path, tmp_path: Path, change) -> Path:
    """A copy of a customization file with ``change`` applied to its tensors (same metadata)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    out = tmp_path / f"changed-{path.name}"
    save_file(tensors, str(out), metadata=metadata)
    return out


_MODULE = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"  # 32 x 32, with bias
_A, _B = f"unet.{_MODULE}.lora_A.weight", f"unet.{_MODULE}.lora_B.weight"
_EXTRA = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
_LORA_DAMAGE = {
    "missing": (_B, lambda t: t.pop(_B)),
    "wrong rank": (_A, lambda t: t.update({_A: torch.zeros(3, 32)})),
    # (1, r) @ (r, in) would broadcast over every output row of W.
    "one row": (_B, lambda t: t.update({_B: t[_B][:1].clone()})),
    "one element": (_B, lambda t: t.update({_B: torch.ones(1, 1)})),
    "extra": (_EXTRA, lambda t: t.update({_EXTRA: torch.zeros(2, 32)})),
}
_W, _BIAS = f"{_MODULE}.weight", f"{_MODULE}.bias"
_FULL_DAMAGE = {
    "missing": (_BIAS, lambda t: t.pop(_BIAS)),
    "one element": (_BIAS, lambda t: t.update({_BIAS: torch.ones(1)})),  # would broadcast
    "one column": (_W, lambda t: t.update({_W: t[_W][:, :1].clone()})),  # would broadcast
}


@pytest.mark.parametrize("damage", sorted(_LORA_DAMAGE))
def test_damaged_lora_file_is_refused_naming_the_key(tuned_lora, tmp_path, damage):
    key, change = _LORA_DAMAGE[damage]
    _check_refused(_rewritten(tuned_lora[4], tmp_path, change), key)


@pytest.mark.parametrize("damage", sorted(_FULL_DAMAGE))
def test_damaged_full_file_is_refused_naming_the_key(tuned_full, tmp_path, damage):
    key, change = _FULL_DAMAGE[damage]
    _check_refused(_rewritten(tuned_full[4], tmp_path, change), key)


def _check_refused(path: Path, key: str) -> None:
    pipe = tiny_pipeline(seed=0)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(CustomizationError, match=re.escape(key)) as err:
        apply_customization(pipe, path)
    assert "\n" not in str(err.value)
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing applied


def test_foreign_and_old_lora_files_are_refused(tuned_lora, tmp_path):
    _, _, _, result, _, _ = tuned_lora
    # A diffusers LoRA without our base fingerprint: which base it fits is unknown.
    foreign = tmp_path / "foreign.safetensors"
    save_file(
        result["tensors"], str(foreign), metadata={"format": "pt", "lora_adapter_metadata": "{}"}
    )
    with pytest.raises(CustomizationError, match="without an idm-vton base fingerprint"):
        apply_customization(tiny_pipeline(seed=0), foreign)
    # The pre-PEFT private LoRA format.
    old = tmp_path / "old.safetensors"
    save_file({"x.lora_A": torch.zeros(2, 2)}, str(old),
              metadata={"format": "idm-vton-customization", "version": "1", "method": "lora"})  # fmt: skip
    with pytest.raises(CustomizationError, match="old private format"):
        apply_customization(tiny_pipeline(seed=0), old)


def test_lora_tuning_depends_only_on_its_seed(tuned_lora):
    _, _, _, result, _, _ = tuned_lora
    pipe = tiny_pipeline(seed=0)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    again = _customize(pipe, "lora")
    assert torch.equal(torch.get_rng_state(), state)  # torch's global RNG was not drawn from
    assert again["tensors"].keys() == result["tensors"].keys()
    for key, value in result["tensors"].items():
        assert torch.equal(again["tensors"][key], value), key


def test_cli_writes_a_delta(tmp_path):
    from idm_vton.commands.main import main as cli_main

    for name, img in (
        ("p", random_photo(0)),
        ("g", random_photo(1)),
        ("d", random_photo(2)),
        ("m", box_mask()),
    ):
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

    from idm_vton.models.tiny import tiny_unet_config
    from idm_vton.training.sdxl_init import build_from_sdxl

    donor = tiny_pipeline(seed=4)
    torch.manual_seed(0)
    inpaint = UNet2DConditionModel(**tiny_unet_config(9, tryon=True))
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
