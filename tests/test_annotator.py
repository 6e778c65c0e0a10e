"""The garment annotator: label sets and tags, V's composition, the probe (training, file checks,
inside a try-on), ``describe``, ``--description auto``, ``evaluate-annotator``'s scores.

Tiny random encoders only; expected values are written out by hand here, never produced by the
code under test. The zero-shot annotator's fetching is in ``test_annotator_zero_shot.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from idm_vton.annotation import (
    DEFAULT_MIN_SCORE,
    AttributeTag,
    GarmentAnnotator,
    GarmentTags,
    ProbeAnnotator,
    find_model_probe,
    load_annotator,
    load_garment_encoder,
    resolve_annotator,
)
from idm_vton.annotation.encoder import GarmentEncoder
from idm_vton.commands._flags import SHARED
from idm_vton.commands.main import main
from idm_vton.data.captions import describe_vitonhd
from idm_vton.data.tags import (
    ATTRIBUTES,
    list_tagged_garments,
    load_label_sets,
    load_vitonhd_attribute_tags,
    parse_dresscode_caption,
    vocabulary_from_tag_files,
)
from idm_vton.enums import GarmentCategory
from idm_vton.errors import AnnotatorError, UsageError
from idm_vton.evaluation.annotator import (
    AnnotatorEvaluationConfig,
    evaluate_annotator,
    score_annotations,
)
from idm_vton.models.tiny import tiny_components

from .helpers.pipeline_inputs import H, W, box_mask, random_photo, tryon_images

VITONHD = load_label_sets("vitonhd")


def one_line(text: str) -> str:
    assert text.strip() and "\n" not in text.strip(), text
    return text


# ------------------------------------------------------------------------------ fixtures
def _noise_garment(seed: int) -> Image.Image:
    """A smooth random colour picture (upsampled noise), different for every seed."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((30, 40), Image.Resampling.BICUBIC)


def _tag_entry(name: str, **tags: str | None) -> dict:
    return {
        "file_name": name,
        "tag_info": [{"tag_name": k, "tag_category": v} for k, v in tags.items()],
    }


def write_tagged_vitonhd(root: Path, split: str, entries: dict[str, dict | None], seed=0):
    """A VITON-HD split whose garments are ``entries``' names (noise pictures), the pairs file
    listing each once (paired), and a tag file with the entries that are not None."""
    cloth = root / split / "cloth"
    cloth.mkdir(parents=True)
    for i, name in enumerate(entries):
        _noise_garment(seed * 1000 + i).save(cloth / name)
    (root / f"{split}_pairs.txt").write_text("".join(f"{n} {n}\n" for n in entries))
    data = [entry for entry in entries.values() if entry is not None]
    (root / split / f"vitonhd_{split}_tagged.json").write_text(json.dumps({"data": data}))


#: A training set the probe can fit exactly: 12 garments, every label a class of the label sets,
#: one tag null and one garment without an entry (they must not count).
TRAIN_TAGS = {
    f"{i:05d}_00.png": _tag_entry(
        f"{i:05d}_00.png",
        sleeveLength=VITONHD.labels["sleeveLength"][i % 4],
        neckLine=None if i == 5 else VITONHD.labels["neckLine"][i % 5],
        item=VITONHD.labels["item"][i % 7],
    )
    for i in range(11)
}
TRAIN_TAGS["00011_00.png"] = None


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vitonhd")
    write_tagged_vitonhd(root, "train", TRAIN_TAGS)
    return root


@pytest.fixture(scope="module")
def tiny_encoder() -> GarmentEncoder:
    return load_garment_encoder("tiny", torch.float32, "cpu")


@pytest.fixture(scope="module")
def trained_probe(tagged, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    args = ["train-annotator", "--model", "tiny", "--data", str(tagged), "--dataset", "vitonhd"]
    assert main([*args, "--out", str(out), "--num-workers", "0", "--no-progress"]) == 0
    return out


# ------------------------------------------------------------------------------ label sets, tags
def test_vitonhd_label_sets_are_the_vocabulary_of_the_published_test_tags(shared_dir):
    derived = vocabulary_from_tag_files([shared_dir / "examples" / "vitonhd_test_tagged.json"])
    assert derived == dict(VITONHD.labels)
    assert [len(VITONHD.labels[a]) for a in ATTRIBUTES] == [4, 14, 27]


def test_dresscode_label_sets_are_vitonhd_s_plus_the_category_names():
    dresscode = load_label_sets("dresscode")
    assert dresscode.labels["sleeveLength"] == VITONHD.labels["sleeveLength"]
    assert dresscode.labels["neckLine"] == VITONHD.labels["neckLine"]
    assert dresscode.labels["item"] == (*VITONHD.labels["item"], *GarmentCategory.values())
    with pytest.raises(UsageError, match="unknown label set 'zalando'"):
        load_label_sets("zalando")


def test_attribute_tags_follow_the_description_rule(tmp_path):
    entries = [
        _tag_entry("a.jpg", item="T-shirts", sleeveLength="Short Sleeve", neckLine=None),
        {"file_name": "b.jpg", "tag_info": None},
        {
            "file_name": "c.jpg",
            "tag_info": [
                {"tag_name": "neckLine", "tag_category": None},
                {"tag_name": "neckLine", "tag_category": "V Neck"},  # first non-null wins
                {"tag_name": "neckLine", "tag_category": "U Neck"},
                {"tag_name": "colors", "tag_category": "Navy"},
            ],
        },
    ]
    path = tmp_path / "tags.json"
    path.write_text(json.dumps({"data": entries}))
    assert load_vitonhd_attribute_tags(path) == {
        "a.jpg": {"sleeveLength": "Short Sleeve", "neckLine": None, "item": "T-shirts"},
        "b.jpg": {"sleeveLength": None, "neckLine": None, "item": None},
        "c.jpg": {"sleeveLength": None, "neckLine": "V Neck", "item": None},
    }


@pytest.mark.parametrize(
    "caption, category, expected",
    [
        ("Long Sleeve Round Neck T-shirts", "upper_body", ("Long Sleeve", "Round Neck", "T-shirts")),
        ("long  sleeve v neck blouse", "upper_body", ("Long Sleeve", "V Neck", "Blouse")),
        ("Sleeveless Slip Dress", "dresses", ("Sleeveless", None, "Slip Dress")),
        ("Halter Neck Dress", "dresses", (None, None, "Halter Neck Dress")),  # item stays whole
        ("Sleeveless Halter Neck Halter Neck Dress", "dresses", ("Sleeveless", "Halter Neck", "Halter Neck Dress")),
        ("Short Sleeve Round Neck Jeans", "lower_body", ("Short Sleeve", "Round Neck", "lower_body")),
        (None, "dresses", (None, None, "dresses")),
    ],
)  # fmt: skip
def test_dresscode_captions_are_read_as_sleeve_neckline_item(caption, category, expected):
    tags = parse_dresscode_caption(caption, load_label_sets("dresscode"), GarmentCategory(category))
    assert tags == dict(zip(ATTRIBUTES, expected, strict=True))


def test_garments_of_a_dresscode_split_with_their_caption_tags(tmp_path):
    from .helpers.datasets import make_dresscode

    make_dresscode(tmp_path)
    records = list_tagged_garments(tmp_path, "dresscode", "test", "upper_body")
    assert [r.path.name for r in records] == ["000001_1.jpg", "000002_1.jpg"]
    # "long  sleeve upper_body caption": the rest is no item label -> the category
    assert records[0].tags == {
        "sleeveLength": "Long Sleeve",
        "neckLine": None,
        "item": "upper_body",
    }
    assert records[1].tags == {"sleeveLength": None, "neckLine": None, "item": "upper_body"}


# ------------------------------------------------------------------------------ V
def _tags(scores: dict[str, tuple[str, float]], min_score=DEFAULT_MIN_SCORE) -> GarmentTags:
    return GarmentTags({a: AttributeTag(*scores[a]) for a in scores}, min_score)


def test_description_is_the_three_labels_in_the_paper_order_without_low_scores():
    tags = _tags(
        {"item": ("T-shirts", 0.9), "neckLine": ("Round Neck", 0.6), "sleeveLength": ("Short Sleeve", 0.8)}
    )  # fmt: skip
    assert tags.description == "Short Sleeve Round Neck T-shirts"
    entry = _tag_entry("x", item="T-shirts", neckLine="Round Neck", sleeveLength="Short Sleeve")
    assert describe_vitonhd(entry) == tags.description + " "  # the dataset's V: same words
    low = GarmentTags(tags.tags, min_score=0.7)
    assert low.description == "Short Sleeve T-shirts"
    assert low.to_json() == {
        "description": "Short Sleeve T-shirts",
        "tags": {
            "sleeveLength": {"label": "Short Sleeve", "score": 0.8},
            "neckLine": {"label": "Round Neck", "score": 0.6},
            "item": {"label": "T-shirts", "score": 0.9},
        },
    }
    assert SHARED["min_score"]["default"] == DEFAULT_MIN_SCORE


def test_the_datasets_trailing_space_gives_the_same_caption_tokens():
    tokenizer = tiny_components(text_encoders=True)["tokenizer"]
    assert (
        tokenizer("model is wearing Short Sleeve T-shirts ").input_ids
        == tokenizer("model is wearing Short Sleeve T-shirts").input_ids
    )


# ------------------------------------------------------------------------------ scores
def test_scores_of_a_known_prediction_set_are_those_computed_by_hand():
    truth = [
        {"sleeveLength": "Short Sleeve", "neckLine": "Round Neck", "item": "T-shirts"},
        {"sleeveLength": "Short Sleeve", "neckLine": None, "item": "Blouse"},  # null neckline
        {"sleeveLength": "Long Sleeve", "neckLine": "V Neck", "item": "T-shirts"},
        {"sleeveLength": None, "neckLine": None, "item": None},  # no tag: not counted at all
        {"sleeveLength": "Sleeveless", "neckLine": "Round Neck", "item": None},  # missing item
    ]
    predicted = [
        {"sleeveLength": "Short Sleeve", "neckLine": "Round Neck", "item": "T-shirts"},
        {"sleeveLength": "Long Sleeve", "neckLine": "U Neck", "item": "Blouse"},
        {"sleeveLength": "Long Sleeve", "neckLine": None, "item": "Blouse"},  # neckline left out
        {"sleeveLength": "Short Sleeve", "neckLine": "V Neck", "item": "Vest"},
        {"sleeveLength": "Sleeveless", "neckLine": "Round Neck", "item": "Vest"},
    ]
    result = score_annotations(truth, predicted)
    # sleeve: 4 tagged, right on rows 0, 2, 4 -> 3/4. Labels Short, Long, Sleeveless:
    #   Short TP1 FP0 FN1 -> 2/3; Long TP1 FP1 FN0 -> 2/3; Sleeveless TP1 -> 1: mean 7/9.
    # neckline: 3 tagged (rows 0, 2, 4), right on 0 and 4 -> 2/3. Labels Round (TP2 -> 1) and
    #   V Neck (TP0 FN1 -> 0); row 2's left-out neckline predicts no label: mean 1/2.
    # item: 3 tagged (rows 0, 1, 2), right on 0 and 1 -> 2/3. T-shirts TP1 FN1 -> 2/3;
    #   Blouse TP1 FP1 -> 2/3: mean 2/3.
    # exact match over the 4 tagged rows: row 0 only (row 4's V lacks the item: "Sleeveless
    #   Round Neck" vs "Sleeveless Round Neck Vest") -> 1/4.
    assert result == {
        "count": 4,
        "attributes": {
            "sleeveLength": {"accuracy": 0.75, "macro_f1": pytest.approx(7 / 9), "count": 4},
            "neckLine": {"accuracy": pytest.approx(2 / 3), "macro_f1": 0.5, "count": 3},
            "item": {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(2 / 3), "count": 3},
        },
        "exact_match": 0.25,
    }  # fmt: skip


class _ByColour(GarmentAnnotator):
    """Known predictions: garment ``i`` is a solid picture whose red channel is ``10 i``."""

    kind = "fixed"

    def __init__(self, predictions: list[dict[str, str]]) -> None:
        super().__init__(VITONHD, min_score=0.5)
        self.predictions = predictions

    def describe_batch(self, images):
        out = []
        for image in images:
            labels = self.predictions[round(np.asarray(image)[..., 0].mean() / 10)]
            out.append(_tags({a: (labels[a], 1.0) for a in ATTRIBUTES}, self.min_score))
        return out


def test_evaluate_annotator_scores_a_folder_as_computed_by_hand(tmp_path):
    entries = {
        "0.png": _tag_entry("0.png", sleeveLength="Short Sleeve", neckLine="Round Neck", item="Blouse"),
        "1.png": _tag_entry("1.png", sleeveLength="Long Sleeve", neckLine=None, item="Blouse"),
        "2.png": None,  # no entry in the tag file: not counted, not even annotated
        "3.png": _tag_entry("3.png", sleeveLength="Sleeveless", item="Vest"),  # no neckline tag
    }  # fmt: skip
    cloth = tmp_path / "test" / "cloth"
    cloth.mkdir(parents=True)
    for i, name in enumerate(entries):
        Image.new("RGB", (30, 40), (10 * i, 100, 100)).save(cloth / name)
    (tmp_path / "test_pairs.txt").write_text("0.png 1.png\n2.png 3.png\n")
    data = [e for e in entries.values() if e is not None]
    (tmp_path / "test" / "vitonhd_test_tagged.json").write_text(json.dumps({"data": data}))
    predictions = [
        {"sleeveLength": "Short Sleeve", "neckLine": "Round Neck", "item": "Blouse"},
        {"sleeveLength": "Short Sleeve", "neckLine": "V Neck", "item": "Blouse"},
        {"sleeveLength": "Short Sleeve", "neckLine": "V Neck", "item": "Blouse"},
        {"sleeveLength": "Sleeveless", "neckLine": "V Neck", "item": "Vest"},
    ]
    config = AnnotatorEvaluationConfig(
        model="tiny", data=tmp_path, dataset="vitonhd", num_workers=0, progress=False
    )
    annotator = _ByColour(predictions)
    seen = []
    annotator.describe_batch = lambda images, f=annotator.describe_batch: (
        seen.extend(images) or f(images)
    )
    result = evaluate_annotator(config, annotator=annotator)
    assert len(seen) == 3  # garment 2 has no tags
    # sleeve (3): right on 0 and 3, row 1 says Short for Long: 2/3; F1 Short 2/3, Long 0,
    # Sleeveless 1 -> 5/9. neckline (1): right -> 1, F1 1. item (3): all right -> 1, F1 1.
    # exact: row 0 yes; row 1 "Short Sleeve V Neck Blouse" vs "Long Sleeve Blouse" no; row 3
    # "Sleeveless V Neck Vest" vs "Sleeveless Vest" no -> 1/3.
    assert result == {
        "count": 3,
        "attributes": {
            "sleeveLength": {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(5 / 9), "count": 3},
            "neckLine": {"accuracy": 1.0, "macro_f1": 1.0, "count": 1},
            "item": {"accuracy": 1.0, "macro_f1": 1.0, "count": 3},
        },
        "exact_match": pytest.approx(1 / 3),
    }  # fmt: skip


# ------------------------------------------------------------------------------ the probe
def test_trained_probe_fits_its_separable_training_tags(tagged, trained_probe, tmp_path, capsys):
    out = tmp_path / "scores.json"
    args = ["evaluate-annotator", "--model", "tiny", "--data", str(tagged), "--dataset", "vitonhd"]
    extra = ["--split", "train", "--annotator", str(trained_probe), "--min-score", "0"]
    assert main([*args, *extra, "--json", str(out), "--num-workers", "0", "--no-progress"]) == 0
    # V matches on every garment but the one whose neckline tag is null: its V has no neckline,
    # the probe names one
    assert "exact match of V: 0.9091 over 11 garments" in capsys.readouterr().out
    assert json.loads(out.read_text()) == {
        "count": 11,
        "attributes": {
            "sleeveLength": {"accuracy": 1.0, "macro_f1": 1.0, "count": 11},
            "neckLine": {"accuracy": 1.0, "macro_f1": 1.0, "count": 10},  # one null
            "item": {"accuracy": 1.0, "macro_f1": 1.0, "count": 11},
        },
        "exact_match": 10 / 11,
    }


def test_probe_file_holds_its_label_sets_and_encoder_fingerprint(trained_probe, tiny_encoder):
    with safe_open(str(trained_probe), "pt") as stored:
        metadata = stored.metadata()
        assert stored.get_tensor("heads.item.weight").shape == (27, 16)
    assert metadata["format"] == "idm-vton-garment-probe"
    assert json.loads(metadata["label_sets"]) == {
        "name": "vitonhd",
        "labels": {a: list(VITONHD.labels[a]) for a in ATTRIBUTES},
    }
    assert metadata["encoder_fingerprint"] == tiny_encoder.fingerprint().digest
    assert json.loads(metadata["training"])["train_accuracy"] == dict.fromkeys(ATTRIBUTES, 1.0)


def _rewrite(source: Path, target: Path, tensors=None, **metadata: str) -> Path:
    with safe_open(str(source), "pt") as stored:
        original = {k: stored.get_tensor(k) for k in stored.keys()}
        meta = {**stored.metadata(), **metadata}
    save_file({**original, **(tensors or {})}, str(target), metadata=meta)
    return target


def test_probe_file_is_refused_for_another_encoder_or_other_label_sets(trained_probe, tmp_path):
    other = load_garment_encoder("tiny", torch.float32, "cpu")
    with torch.no_grad():
        other.image_encoder.visual_projection.weight.mul_(1.5)  # another encoder, same shapes
    with pytest.raises(AnnotatorError) as info:
        ProbeAnnotator.load(trained_probe, other)
    assert "trained on another image encoder (tiny" in one_line(str(info.value))

    labels = {a: list(VITONHD.labels[a]) for a in ATTRIBUTES}
    labels["item"][0] = "Blouses"
    renamed = _rewrite(
        trained_probe,
        tmp_path / "renamed.safetensors",
        label_sets=json.dumps({"name": "vitonhd", "labels": labels}),
    )
    encoder = load_garment_encoder("tiny", torch.float32, "cpu")
    with pytest.raises(AnnotatorError, match="trained on other vitonhd label sets"):
        ProbeAnnotator.load(renamed, encoder)
    cut = _rewrite(
        trained_probe, tmp_path / "cut.safetensors", {"heads.item.weight": torch.zeros(26, 16)}
    )
    with pytest.raises(AnnotatorError, match=r"heads.item.weight has shape \(26, 16\)"):
        ProbeAnnotator.load(cut, encoder)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "lora.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AnnotatorError, match="is not a probe file"):
        ProbeAnnotator.load(tmp_path / "lora.safetensors", encoder)
    (tmp_path / "text.safetensors").write_text("not weights")
    with pytest.raises(AnnotatorError, match="not a readable safetensors file"):
        ProbeAnnotator.load(tmp_path / "text.safetensors", encoder)


def test_probe_accepts_its_encoder_in_bf16(trained_probe):
    encoder = load_garment_encoder("tiny", torch.bfloat16, "cpu")
    probe = ProbeAnnotator.load(trained_probe, encoder)
    assert probe.describe(_noise_garment(0)).description  # loads and reads V


def test_model_probe_is_found_in_the_model_folder(trained_probe, tmp_path):
    model = tmp_path / "model"
    (model / "annotator").mkdir(parents=True)
    assert find_model_probe(str(model)) is None
    assert resolve_annotator(None, str(model)).kind == "zero-shot"  # the default without one
    with pytest.raises(AnnotatorError, match="has no probe"):
        resolve_annotator("probe", str(model))
    (model / "annotator" / "probe.safetensors").write_bytes(trained_probe.read_bytes())
    choice = resolve_annotator(None, str(model))
    assert (choice.kind, choice.probe_file) == ("probe", model / "annotator" / "probe.safetensors")
    assert resolve_annotator("zero-shot", str(model)).kind == "zero-shot"
    with pytest.raises(UsageError, match="nor a probe file"):
        resolve_annotator(str(tmp_path / "missing.safetensors"), "tiny")


# ------------------------------------------------------------------------------ in a try-on
@pytest.fixture(scope="module")
def pipe():
    from idm_vton.pipelines.loading import tiny_pipeline

    return tiny_pipeline()


def test_try_on_reads_v_from_the_clip_pass_it_already_makes(pipe, trained_probe):
    probe = load_annotator(trained_probe, model="tiny", pipe=pipe, min_score=0)
    calls = []
    hook = pipe.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        garment = random_photo(1)
        result = pipe(
            person_image=random_photo(0),
            garment_image=garment,
            mask_image=box_mask(),
            pose_image=random_photo(2),
            garment_description=None,
            garment_annotator=probe,
            num_inference_steps=1,
            height=H,
            width=W,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        assert len(calls) == 1  # the IP-Adapter's pass only
        expected = probe.describe(garment)
        assert len(calls) == 2  # describing the photo on its own takes a pass
    finally:
        hook.remove()
    assert result.garment_descriptions == [expected.description]
    assert result.garment_tags[0].labels == expected.labels
    auto = tryon_images(pipe, garment_description=None, garment_annotator=probe)
    assert np.array_equal(auto, tryon_images(pipe, garment_description=expected.description))


class _Recording(GarmentAnnotator):
    """Reads photos (like the zero-shot annotator) and remembers what it was given."""

    kind = "recording"

    def __init__(self) -> None:
        super().__init__(VITONHD, min_score=0.0)
        self.images: list[Image.Image] = []

    def describe_batch(self, images):
        self.images += list(images)
        return [_tags({a: (VITONHD.labels[a][1], 0.9) for a in ATTRIBUTES})] * len(images)


def test_an_annotator_of_photos_gets_each_garment_without_a_description(pipe):
    annotator = _Recording()
    garments = torch.stack([torch.full((3, H, W), 0.2), torch.full((3, H, W), 0.8)])
    result = pipe(
        person_image=torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)),
        garment_image=garments,
        mask_image=torch.ones(2, 1, H, W),
        pose_image=torch.zeros(2, 3, H, W),
        garment_clip_pixels=torch.zeros(2, 3, 32, 32),
        garment_description=["my own words", None],
        garment_annotator=annotator,
        num_inference_steps=1,
        height=H,
        width=W,
        output_type="latent",
    )
    assert result.garment_descriptions == ["my own words", "Long Sleeve Collarless Bolero"]
    assert result.garment_tags[0] is None
    [image] = annotator.images  # only the garment without a description, as a picture
    assert image.size == (W, H) and np.asarray(image).max() == round(0.8 * 255)
    # without an annotator, a garment without a description gets the empty text (as the CLI)
    plain = pipe(
        random_photo(0), random_photo(1), box_mask(), random_photo(2), height=H, width=W,
        num_inference_steps=1, output_type="latent",
    )  # fmt: skip
    assert plain.garment_descriptions == [""]


# ------------------------------------------------------------------------------ commands
def test_describe_prints_labels_of_the_label_sets_in_the_paper_order(tmp_path, capsys):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"g{i}.png")
        _noise_garment(100 + i).save(paths[-1])
    flags = [x for p in paths for x in ("--garment", str(p))]
    assert main(["describe", "--model", "tiny", *flags, "--json", "--min-score", "0.9"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["garment"] for entry in listed] == [str(p) for p in paths]
    for entry in listed:
        assert list(entry["tags"]) == list(ATTRIBUTES)
        for attribute, tag in entry["tags"].items():
            assert tag["label"] in VITONHD.labels[attribute]
            assert 0.0 <= tag["score"] <= 1.0
        kept = [t["label"] for t in entry["tags"].values() if t["score"] >= 0.9]
        assert entry["description"] == " ".join(kept)
    assert main(["describe", "--model", "tiny", *flags, "--min-score", "0.9"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [entry["description"] for entry in listed]  # after the tiny note


def test_description_auto_gives_the_image_of_the_printed_description(tmp_path, capsys):
    inputs = {"person": random_photo(0, (96, 128)), "garment": random_photo(1, (60, 80))}
    inputs["pose"] = random_photo(2, (96, 128))
    inputs["mask"] = box_mask((96, 128))
    for name, image in inputs.items():
        image.save(tmp_path / f"{name}.png")
    files = [x for n in inputs for x in (f"--{n}", str(tmp_path / f"{n}.png"))]
    assert main(["describe", "--model", "tiny", "--garment", str(tmp_path / "garment.png")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    common = ["tryon", "--model", "tiny", *files, "--steps", "2", "--height", "64", "--width", "48"]
    assert main([*common, "--description", "auto", "--out", str(tmp_path / "auto.png")]) == 0
    note = capsys.readouterr().out
    assert f"description read from the garment photo (probe): {json.dumps(printed)}" in note
    assert main([*common, "--description", printed, "--out", str(tmp_path / "hand.png")]) == 0
    other = "Long Sleeve V Neck Cardigan" if printed != "Long Sleeve V Neck Cardigan" else ""
    assert main([*common, "--description", other, "--out", str(tmp_path / "other.png")]) == 0
    auto, hand, different = (
        np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("auto", "hand", "other")
    )
    assert np.array_equal(auto, hand)
    assert not np.array_equal(auto, different)  # the description does change the image
    capsys.readouterr()
    assert main([*common, "--annotator", "probe", "--out", str(tmp_path / "x.png")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "--annotator only applies with --description auto" in err


def test_annotator_commands_refuse_bad_options_in_one_line(tagged, tmp_path, capsys):
    args = ["train-annotator", "--model", "tiny", "--data", str(tagged), "--dataset", "vitonhd"]
    assert main([*args, "--out", str(tmp_path / "probe.pt")]) == 2
    assert "--out must end in .safetensors" in one_line(capsys.readouterr().err)
    assert main([*args, "--split", "test", "--out", str(tmp_path / "p.safetensors")]) == 2
    assert "VITON-HD tag file not found" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "p.safetensors").exists()
    bad = tmp_path / "nowhere.safetensors"
    assert main(["describe", "--model", "tiny", "--garment", str(bad)]) == 2
    assert "--garment" in one_line(capsys.readouterr().err)
    assert (
        main(["describe", "--model", "tiny", "--garment", str(bad), "--annotator", str(bad)]) == 2
    )
    one_line(capsys.readouterr().err)


def test_infer_dataset_reads_each_garment_s_description_and_records_it(tmp_path, capsys):
    from .helpers.datasets import make_vitonhd

    names = make_vitonhd(tmp_path / "data", n=2)

    def infer(out: Path, *extra: str) -> int:
        args = ["infer-dataset", "--model", "tiny", "--data", str(tmp_path / "data")]
        args += ["--dataset", "vitonhd", "--out", str(out), "--steps", "1", "--height", str(H)]
        args += ["--width", str(W), "--num-workers", "0", "--device", "cpu", "--no-progress"]
        return main([*args, *extra])

    out = tmp_path / "out"
    assert infer(out, "--description", "auto", "--min-score", "0") == 0
    lines = [json.loads(line) for line in (out / "descriptions.jsonl").read_text().splitlines()]
    stems = [Path(n).stem for n in names]
    assert [line["image"] for line in lines] == [f"{s}_{s}.png" for s in stems]
    probe = load_annotator("probe", model="tiny", min_score=0)
    for line, name in zip(lines, names, strict=True):
        # the probe on the dataset's CLIP view of the garment = the probe on the garment file
        garment = Image.open(tmp_path / "data" / "test" / "cloth" / name)
        assert line["description"] == probe.describe(garment).description
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["description"], manifest["annotator"]) == ("auto", "probe:random-0")
    capsys.readouterr()
    assert infer(out) == 2  # the dataset's descriptions: another protocol
    assert "description 'auto' -> 'dataset'" in one_line(capsys.readouterr().err)

    # a folder written before descriptions had a source resumes as the dataset's
    older = tmp_path / "older"
    assert infer(older) == 0
    assert not (older / "descriptions.jsonl").exists()
    manifest = json.loads((older / "manifest.json").read_text())
    for key in ("description", "annotator", "min_score"):
        del manifest[key]
    (older / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert infer(older) == 0
    assert "2/2 images" in capsys.readouterr().out
