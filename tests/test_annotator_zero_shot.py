"""The zero-shot annotator: fetched from the hub on first use (a loopback stand-in for the hub
serves a tiny random CLIP in the pinned repository and revision), cached, one line offline, and
its scores the softmax of the model's scaled image-text similarities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from idm_vton.annotation import DEFAULT_ZERO_SHOT_MODEL, ZeroShotAnnotator
from idm_vton.annotation.zero_shot import ZERO_SHOT_MODEL_ENV, fetch_zero_shot_model
from idm_vton.commands.main import main
from idm_vton.data.tags import ATTRIBUTES, load_label_sets
from idm_vton.errors import AnnotatorError
from idm_vton.models.tiny import _TINY_TEXT, _TINY_VISION, _byte_level_tokenizer

from .helpers.hub import FakeHub, point_hub_at

MODEL = DEFAULT_ZERO_SHOT_MODEL
REPO_CACHE = "models--" + MODEL.repo_id.replace("/", "--")


def one_line(text: str) -> str:
    assert text.strip() and "\n" not in text.strip(), text
    return text


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    """A tiny random CLIPModel in the repository's files (safetensors, tokenizer, processor)."""
    folder = tmp_path_factory.mktemp("fashion-clip")
    without_projection = {k: v for k, v in _TINY_TEXT.items() if k != "projection_dim"}
    vision = {k: v for k, v in _TINY_VISION.items() if k != "projection_dim"}
    config = CLIPConfig(text_config=without_projection, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        CLIPModel(config).save_pretrained(folder)
    tokenizer = _byte_level_tokenizer()
    tokenizer.save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop).save_pretrained(folder)
    # The published repository also has the slow tokenizer's files.
    (folder / "vocab.json").write_text(json.dumps(tokenizer.get_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(tokenizer.special_tokens_map))
    return {name: (folder / name).read_bytes() for name in MODEL.files}


@pytest.fixture(scope="module")
def server():
    hub = FakeHub(f"/{MODEL.repo_id}/resolve/{MODEL.revision}/", MODEL.revision)
    yield hub
    hub.close()


@pytest.fixture
def hub(server, model_files, tmp_path, monkeypatch) -> FakeHub:
    server.files = dict(model_files)
    server.requests.clear()
    point_hub_at(server, monkeypatch, tmp_path)
    monkeypatch.delenv(ZERO_SHOT_MODEL_ENV, raising=False)
    return server


def _garment(seed: int) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((30, 40), Image.Resampling.BICUBIC)


def test_first_use_downloads_the_pinned_files_then_the_cache_serves(hub, model_files, tmp_path):
    folder = fetch_zero_shot_model()
    assert sorted(hub.gets()) == sorted(MODEL.files)
    assert folder == (tmp_path / "hf" / "hub" / REPO_CACHE / "snapshots" / MODEL.revision).resolve()
    assert {name: (folder / name).read_bytes() for name in MODEL.files} == model_files
    hub.requests.clear()
    assert fetch_zero_shot_model() == folder
    assert hub.gets() == []  # only metadata requests: the content came from the cache
    assert fetch_zero_shot_model(local_files_only=True) == folder


def test_offline_without_the_model_is_one_line_naming_what_is_missing(hub, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AnnotatorError) as info:
        ZeroShotAnnotator.from_pretrained()
    message = one_line(str(info.value))
    assert hub.requests == []
    assert "HF_HUB_OFFLINE is set" in message and MODEL.repo_id in message
    assert all(name in message for name in MODEL.files)
    assert ZERO_SHOT_MODEL_ENV in message

    garment = Path(constants.HF_HUB_CACHE).parent / "g.png"
    garment.parent.mkdir(parents=True, exist_ok=True)
    _garment(0).save(garment)
    args = ["describe", "--model", "tiny", "--annotator", "zero-shot", "--garment", str(garment)]
    assert main(args) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("idm-vton describe: error: the zero-shot annotator's model is not in")


def test_a_damaged_cached_weight_file_is_deleted_and_fetched_again(hub, model_files):
    folder = fetch_zero_shot_model()
    (folder / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    hub.requests.clear()
    with pytest.raises(AnnotatorError) as info:
        fetch_zero_shot_model()
    message = one_line(str(info.value))
    assert "git-lfs pointer" in message and "the next run downloads it again" in message
    assert not (folder / "model.safetensors").exists()
    assert fetch_zero_shot_model() == folder
    assert (folder / "model.safetensors").read_bytes() == model_files["model.safetensors"]


def test_a_hub_failure_is_one_line_naming_the_file(hub):
    del hub.files["merges.txt"]
    with pytest.raises(AnnotatorError) as info:
        fetch_zero_shot_model()
    message = one_line(str(info.value))
    assert "cannot download merges.txt from the Hugging Face repository" in message


def test_scores_are_the_softmax_of_scaled_cosine_similarities(hub, tmp_path):
    annotator = ZeroShotAnnotator.from_pretrained(min_score=0.0)
    folder = fetch_zero_shot_model(local_files_only=True)
    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = CLIPImageProcessor.from_pretrained(folder)
    labels = load_label_sets("vitonhd")
    garments = [_garment(1), _garment(2)]
    with torch.no_grad():
        pixels = processor(images=garments, return_tensors="pt").pixel_values
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        image = image / image.norm(dim=-1, keepdim=True)
        expected = []
        for attribute in ATTRIBUTES:
            words = {
                "sleeveLength": "a {} garment",
                "neckLine": "a garment with a {}",
                "item": "a photo of {}",
            }[attribute]
            prompts = [words.format(label.lower()) for label in labels.labels[attribute]]
            tokens = tokenizer(prompts, padding=True, return_tensors="pt")
            text = model.text_projection(model.text_model(**tokens).pooler_output)
            text = text / text.norm(dim=-1, keepdim=True)
            expected.append((model.logit_scale.exp() * image @ text.T).softmax(-1))
    for i, tags in enumerate(annotator.describe_batch(garments)):
        for attribute, probabilities in zip(ATTRIBUTES, expected, strict=True):
            best = int(probabilities[i].argmax())
            assert tags.tags[attribute].label == labels.labels[attribute][best]
            assert tags.tags[attribute].score == pytest.approx(
                float(probabilities[i, best]), abs=1e-5
            )
    assert annotator.identity == f"zero-shot:{MODEL.repo_id}@{MODEL.revision[:8]}"


def test_describe_with_the_zero_shot_annotator_and_a_folder_of_one_s_own(hub, tmp_path, capsys):
    garment = tmp_path / "g.png"
    _garment(4).save(garment)
    args = ["describe", "--model", "tiny", "--annotator", "zero-shot", "--garment", str(garment)]
    assert main([*args, "--json", "--min-score", "0"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    labels = load_label_sets("vitonhd").labels
    assert all(entry["tags"][a]["label"] in labels[a] for a in ATTRIBUTES)
    assert entry["description"] == " ".join(entry["tags"][a]["label"] for a in ATTRIBUTES)

    own = tmp_path / "own"
    own.mkdir()
    for name in MODEL.files:
        (own / name).write_bytes(hub.files[name])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ZERO_SHOT_MODEL_ENV, str(own))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        hub.requests.clear()
        assert main([*args, "--json", "--min-score", "0"]) == 0
        assert hub.requests == []  # the folder, not the hub
        assert json.loads(capsys.readouterr().out) == [entry]
        (own / "model.safetensors").write_bytes(b"\x00" * 2048)
        assert main(args) == 2
        err = one_line(capsys.readouterr().err)
        assert "not a safetensors file" in err and str(own) in err


def test_download_fetches_the_zero_shot_model_for_a_model_without_a_probe(hub, tmp_path, capsys):
    from idm_vton.pipelines.loading import tiny_pipeline

    checkpoint = tmp_path / "ckpt"
    tiny_pipeline().save_pretrained(checkpoint)  # no annotator/probe.safetensors in it
    args = ["download", "--model", str(checkpoint), "--skip-preprocess"]
    assert main(args) == 0
    folder = fetch_zero_shot_model(local_files_only=True)  # now in the cache
    assert f"garment annotator (zero-shot): {folder}" in capsys.readouterr().out
    assert sorted(hub.gets()) == sorted(MODEL.files)
    hub.requests.clear()
    assert main([*args, "--skip-annotator"]) == 0
    assert "garment annotator" not in capsys.readouterr().out and hub.requests == []
