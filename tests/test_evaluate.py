"""evaluate_folders end to end on a tiny synthetic folder with random-weight metric networks."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

import idm_vton.evaluation.evaluate as evaluate_module
from idm_vton.commands.evaluate import add_evaluate_arguments, run_evaluate
from idm_vton.commands.main import run_command
from idm_vton.errors import EvaluationError
from idm_vton.evaluation.evaluate import evaluate_folders, format_table
from idm_vton.evaluation.metrics.clip_score import CLIPImageScorer
from idm_vton.evaluation.metrics.lpips import LPIPS_CHANNELS, AlexNetFeatures

from .helpers.metrics import (
    direct_mmd2,
    low_rank_fid,
    pt_inception_shapes,
    reference_clean_resize,
    reference_inception_features,
    reference_lpips,
    tiny_clip_folder,
)

RESOLUTION = (48, 40)  # (height, width)
STEMS = ["00001_00", "00002_00", "00003_00", "00004_00"]


def random_alexnet_files(folder, seed=0):
    torch.manual_seed(seed)
    trunk = AlexNetFeatures().state_dict()
    heads = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
        for k, c in enumerate(LPIPS_CHANNELS["alex"])
    }
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    torch.save(heads, folder / "alex.pth")
    return trunk, heads


def random_inception_file(folder, seed=0):
    """A pt_inception file (the key layout of tests/helpers/metrics.py, not the library's)."""
    # He-initialised convolutions and identity BatchNorm keep the random features dependent on
    # the input (PyTorch's default init makes them collapse to a near-constant vector).
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in pt_inception_shapes().items():
        if key.endswith("conv.weight"):
            std = (2.0 / np.prod(shape[1:])) ** 0.5
            state[key] = torch.randn(shape, generator=generator) * std
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = torch.ones(shape)
        else:  # BatchNorm bias and mean, and the unused 1008-way classifier
            state[key] = torch.zeros(shape)
    torch.save(state, folder / "pt_inception-2015-12-05-6726825d.pth")
    return state


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    weights = root / "weights"
    weights.mkdir()
    trunk, heads = random_alexnet_files(weights)
    inception = random_inception_file(weights)
    tiny_clip_folder(weights / "clip")

    rng = np.random.default_rng(0)
    pred_dir, gt_dir, garment_dir = root / "pred", root / "gt", root / "garment"
    for folder in (pred_dir, gt_dir, garment_dir):
        folder.mkdir()
    height, width = RESOLUTION
    for index, stem in enumerate(STEMS):
        # Smooth ground truth of different brightness per image, so a wrong pairing shows.
        gt = np.clip(rng.normal(60 * index + 40, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        pred = np.clip(gt + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pred).save(pred_dir / f"{stem}.png")
        if index == 0:  # stored at another size: must be resized to the evaluation resolution
            Image.fromarray(gt).resize((width * 2, height * 2)).save(gt_dir / f"{stem}.png")
        else:
            Image.fromarray(gt).save(gt_dir / f"{stem}.png")
        garment = rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)
        Image.fromarray(garment).save(garment_dir / f"{stem}.jpg")
    # A ground-truth image without an output: ignored and counted.
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(gt_dir / "99999_00.png")
    return {
        "root": root,
        "weights": weights,
        "pred": pred_dir,
        "gt": gt_dir,
        "garment": garment_dir,
        "trunk": trunk,
        "heads": heads,
        "inception": inception,
    }


@pytest.fixture(scope="module")
def full_result(dataset):
    # A 2048x2048 scipy sqrtm costs 15-80 s on two cores, so the end-to-end run swaps in the
    # exact low-rank formula (tests/helpers/metrics.py) and records the features it was given;
    # frechet_distance itself is checked against direct computations in test_metrics.py (and at
    # 2048-d in a slow test).
    seen = {}

    def spy_fid(pred_features, gt_features):
        seen["pred"], seen["gt"] = pred_features, gt_features
        return low_rank_fid(pred_features, gt_features)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "fid_from_features", spy_fid)
        result = evaluate_folders(
            dataset["pred"],
            dataset["gt"],
            garments_dir=dataset["garment"],
            weights_dir=dataset["weights"],
            resolution=RESOLUTION,
            batch_size=3,
            verify_weights=False,
            kid_subsets=5,
            progress=False,
        )
    result["_fid_inputs"] = seen
    return result


def loaded(folder, stem):
    """The image exactly as the evaluation sees it (resized with PIL bicubic if needed)."""
    image = Image.open(next(folder.glob(f"{stem}.*"))).convert("RGB")
    if image.size != (RESOLUTION[1], RESOLUTION[0]):
        image = image.resize((RESOLUTION[1], RESOLUTION[0]), Image.BICUBIC)
    return np.asarray(image)


def clip_similarity_by_hand(folder, images, references) -> np.ndarray:
    """CLIP-I computed here: CLIP's preprocessing written out (shortest side to 32 with PIL
    bicubic, centre crop, CLIP mean/std), the vision tower's projected embedding, cosine."""
    from transformers import CLIPVisionModelWithProjection

    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])

    def pixels(image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        short, long = (height, width) if height <= width else (width, height)
        scaled = int(32 * long / short)
        size = (scaled, 32) if height <= width else (32, scaled)  # PIL sizes are (W, H)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        top, left = (resized.shape[0] - 32) // 2, (resized.shape[1] - 32) // 2
        crop = resized[top : top + 32, left : left + 32] / 255.0
        return torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1)).float()

    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    with torch.no_grad():
        a = model(pixel_values=torch.stack([pixels(x) for x in images])).image_embeds.double()
        b = model(pixel_values=torch.stack([pixels(x) for x in references])).image_embeds.double()
    return (torch.nn.functional.cosine_similarity(a, b, dim=-1)).numpy()


def test_evaluate_folders_end_to_end(dataset, full_result):
    """Every metric against a computation made here without the library's metric code."""
    metrics, per_image = full_result["metrics"], full_result["per_image"]
    assert set(metrics) == {"ssim", "lpips", "fid", "kid", "kid_std", "clip_i"}
    assert sorted(per_image) == STEMS

    preds = [loaded(dataset["pred"], s) for s in STEMS]
    gts = [loaded(dataset["gt"], s) for s in STEMS]
    # SSIM per pair against scikit-image: also proves the files were paired by name.
    for stem, pred, gt in zip(STEMS, preds, gts, strict=True):
        reference = structural_similarity(
            pred / 255.0,
            gt / 255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        assert per_image[stem]["ssim"] == pytest.approx(reference, abs=1e-10)
    assert metrics["ssim"] == pytest.approx(np.mean([per_image[s]["ssim"] for s in STEMS]))

    # LPIPS: the AlexNet trunk and heads of the weight files, written out with functional ops.
    def as_tensor(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double() / 255

    expected_lpips = reference_lpips(
        "alex", dataset["trunk"], dataset["heads"], as_tensor(preds), as_tensor(gts)
    ).numpy()
    got_lpips = [per_image[s]["lpips"] for s in STEMS]
    assert (expected_lpips > 0).all()
    np.testing.assert_allclose(got_lpips, expected_lpips, rtol=1e-4)
    assert metrics["lpips"] == pytest.approx(expected_lpips.mean(), rel=1e-4)

    # FID / KID: clean-fid resizing and the Inception of the weight file, written out here.
    def features(images):
        batch = np.stack([reference_clean_resize(x) for x in images])
        return reference_inception_features(
            dataset["inception"], torch.from_numpy(batch).permute(0, 3, 1, 2)
        ).numpy()

    pred_features, gt_features = features(preds), features(gts)
    scale = np.abs(gt_features).max()
    assert np.abs(pred_features - gt_features).max() > 0.1 * scale
    # FID was given the features of the outputs and of the ground truth, in that order.
    seen = full_result["_fid_inputs"]
    np.testing.assert_allclose(seen["pred"], pred_features, atol=1e-4 * scale)
    np.testing.assert_allclose(seen["gt"], gt_features, atol=1e-4 * scale)
    assert metrics["fid"] == pytest.approx(low_rank_fid(pred_features, gt_features), rel=1e-4)
    # With 4 images every KID subset of size 4 is the whole set (in some order), so KID is the
    # unbiased MMD^2 of the two sets and does not vary across subsets.
    expected_kid = direct_mmd2(pred_features, gt_features, unbiased=True)
    assert metrics["kid"] == pytest.approx(expected_kid, rel=1e-3, abs=1e-9)
    assert metrics["kid_std"] == pytest.approx(0, abs=1e-6 * abs(expected_kid) + 1e-12)

    # CLIP-I: each output against the garment of the same name.
    garments = [
        np.asarray(Image.open(dataset["garment"] / f"{s}.jpg").convert("RGB")) for s in STEMS
    ]
    expected_clip = clip_similarity_by_hand(dataset["weights"] / "clip", preds, garments)
    np.testing.assert_allclose([per_image[s]["clip_i"] for s in STEMS], expected_clip, atol=1e-5)
    assert metrics["clip_i"] == pytest.approx(expected_clip.mean(), abs=1e-5)


def test_protocol_is_recorded(dataset, full_result):
    protocol = full_result["protocol"]
    assert protocol["resolution"] == list(RESOLUTION)
    assert protocol["num_pairs"] == 4
    assert protocol["num_gt_images"] == 5 and protocol["num_gt_unused"] == 1
    assert protocol["num_resized"] == {"pred": 0, "gt": 1}
    assert protocol["kid"] == {"num_subsets": 5, "subset_size": 4, "seed": 0}
    assert protocol["lpips_net"] == "alex"
    assert set(protocol["implementations"]) == {"ssim", "lpips", "fid", "kid", "clip_i"}
    assert protocol["weights_verified"] is False
    for key, filename in (
        ("alexnet", "alexnet-owt-7be5be79.pth"),
        ("lpips_alex", "alex.pth"),
        ("fid_inception", "pt_inception-2015-12-05-6726825d.pth"),
    ):
        record = protocol["weights"][key]
        digest = hashlib.sha256((dataset["weights"] / filename).read_bytes()).hexdigest()
        assert record["file"] == filename and record["sha256"] == digest
        assert record["verified"] is False
    clip_weights = protocol["clip_model"]["weights_sha256"]
    digest = hashlib.sha256((dataset["weights"] / "clip" / "model.safetensors").read_bytes())
    assert clip_weights == {"model.safetensors": digest.hexdigest()}
    assert any("FID from 4 images" in note for note in protocol["notes"])
    json.dumps({k: v for k, v in full_result.items() if k != "_fid_inputs"})  # serialisable

    table = format_table(full_result)
    for text in (
        "SSIM",
        "LPIPS (alex)",
        "FID",
        "KID",
        "CLIP-I",
        "4 pairs at 48x40",
        "NOT verified",
    ):
        assert text in table
    assert f"{full_result['metrics']['ssim']:.4f}" in table


def test_clip_i_is_skipped_without_garments_and_pairs_file_is_used(dataset, tmp_path):
    result = evaluate_folders(
        dataset["pred"],
        dataset["gt"],
        metrics=("ssim", "clip_i"),
        weights_dir=dataset["weights"],
        resolution=RESOLUTION,
        progress=False,
    )
    assert set(result["metrics"]) == {"ssim"}
    assert result["skipped"] == {"clip_i": "no garments_dir given"}
    assert "skipped clip_i" in format_table(result)

    # Unpaired setting: each output is scored against the garment the pairs file names.
    pairs = tmp_path / "test_pairs.txt"
    pairs.write_text("".join(f"{s}.jpg {STEMS[(i + 1) % 4]}.jpg\n" for i, s in enumerate(STEMS)))
    clip_by_pairs = dict(
        garments_dir=dataset["garment"],
        pairs_file=pairs,
        metrics=("clip_i",),
        weights_dir=dataset["weights"],
        progress=False,
    )
    unpaired = evaluate_folders(
        dataset["pred"], dataset["gt"], resolution=RESOLUTION, **clip_by_pairs
    )
    pairs.write_text(f"{STEMS[0]}.jpg {STEMS[1]}.jpg\n")
    with pytest.raises(EvaluationError, match=f"pairs file.*{STEMS[1]}"):
        evaluate_folders(dataset["pred"], dataset["gt"], **clip_by_pairs)
    scorer = CLIPImageScorer.from_pretrained(dataset["weights"] / "clip")
    pred = loaded(dataset["pred"], STEMS[0])
    garment = np.asarray(Image.open(dataset["garment"] / f"{STEMS[1]}.jpg").convert("RGB"))
    expected = scorer.similarity([pred], [garment])[0]
    assert unpaired["per_image"][STEMS[0]]["clip_i"] == pytest.approx(expected, abs=1e-6)


def test_missing_pairs_and_unreadable_images_are_named(dataset, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for stem in STEMS[:2]:
        (pred_dir / f"{stem}.png").write_bytes((dataset["pred"] / f"{stem}.png").read_bytes())
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(pred_dir / "55555_00.png")
    with pytest.raises(EvaluationError, match="no counterpart.*55555_00"):
        evaluate_folders(pred_dir, dataset["gt"], metrics=("ssim",), progress=False)

    (pred_dir / "55555_00.png").unlink()
    (pred_dir / f"{STEMS[1]}.png").write_bytes(b"this is not a png")
    with pytest.raises(EvaluationError, match=f"cannot read image .*{STEMS[1]}.png"):
        evaluate_folders(
            pred_dir, dataset["gt"], metrics=("ssim",), resolution=RESOLUTION, progress=False
        )

    garments = tmp_path / "garments"
    garments.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(garments / f"{STEMS[0]}.jpg")
    with pytest.raises(EvaluationError, match=f"garment folder.*{STEMS[1]}"):
        evaluate_folders(
            dataset["pred"],
            dataset["gt"],
            garments_dir=garments,
            metrics=("clip_i",),
            progress=False,
        )
    with pytest.raises(EvaluationError, match="unknown_metric"):
        evaluate_folders(dataset["pred"], dataset["gt"], metrics=("unknown_metric",))


def parse(argv):
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    return parser.parse_args(argv)


def test_run_evaluate_prints_table_and_writes_json(dataset, tmp_path, capsys):
    out = tmp_path / "reports" / "result.json"
    args = parse(
        [
            str(dataset["pred"]),
            str(dataset["gt"]),
            "--metrics",
            "ssim,lpips",
            "--weights-dir",
            str(dataset["weights"]),
            "--resolution",
            "48x40",
            "--no-verify-weights",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert args.resolution == (48, 40) and args.metrics == ("ssim", "lpips")
    assert run_evaluate(args) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert set(written["metrics"]) == {"ssim", "lpips"}
    assert f"{written['metrics']['ssim']:.4f}" in printed
    assert written["protocol"]["resolution"] == [48, 40]
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]  # no temp file left

    # Weight files are verified by default: random weights are refused with a one-line error.
    args = parse([str(dataset["pred"]), str(dataset["gt"]), "--metrics", "lpips"])
    args.weights_dir = dataset["weights"]
    assert run_command(run_evaluate, args, "idm-vton evaluate") == 2
    error = capsys.readouterr().err
    assert error.startswith("idm-vton evaluate: error: ") and "alexnet-owt-7be5be79.pth" in error
    assert error.count("\n") == 1

    with pytest.raises(SystemExit):
        parse(["a", "b", "--resolution", "big"])
    with pytest.raises(SystemExit):
        parse(["a", "b", "--metrics", "ssim,psnr"])


def test_infer_dataset_names_pair_with_ground_truth_and_garment(dataset, tmp_path):
    """``{person}_{garment}.png`` (infer-dataset's naming) pairs with ``{person}`` and names its garment."""
    import shutil

    renamed = tmp_path / "pred"
    renamed.mkdir()
    for i, stem in enumerate(STEMS):
        shutil.copy(dataset["pred"] / f"{stem}.png", renamed / f"{stem}_{STEMS[(i + 1) % 4]}.png")
    by_name = evaluate_folders(
        renamed,
        dataset["gt"],
        garments_dir=dataset["garment"],
        metrics=("ssim", "clip_i"),
        weights_dir=dataset["weights"],
        resolution=RESOLUTION,
        progress=False,
    )
    plain = evaluate_folders(
        dataset["pred"],
        dataset["gt"],
        metrics=("ssim",),
        weights_dir=dataset["weights"],
        resolution=RESOLUTION,
        progress=False,
    )
    for i, stem in enumerate(STEMS):
        key = f"{stem}_{STEMS[(i + 1) % 4]}"
        assert by_name["per_image"][key]["ssim"] == plain["per_image"][stem]["ssim"]
    scorer = CLIPImageScorer.from_pretrained(dataset["weights"] / "clip")
    garment = np.asarray(Image.open(dataset["garment"] / f"{STEMS[1]}.jpg").convert("RGB"))
    expected = scorer.similarity([loaded(dataset["pred"], STEMS[0])], [garment])[0]
    assert by_name["per_image"][f"{STEMS[0]}_{STEMS[1]}"]["clip_i"] == pytest.approx(
        expected, abs=1e-6
    )
    (renamed / "nobody_x.png").write_bytes((renamed / f"{STEMS[0]}_{STEMS[1]}.png").read_bytes())
    with pytest.raises(EvaluationError, match="nobody_x"):
        evaluate_folders(
            renamed,
            dataset["gt"],
            metrics=("ssim",),
            weights_dir=dataset["weights"],
            progress=False,
        )
