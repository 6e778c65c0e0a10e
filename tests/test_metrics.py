"""Metric implementations against scikit-image, direct numpy/scipy formulas and written-out nets.

No real weights exist on this machine: networks get random weights that the tests write under
the published key names, and reference values are computed here independently of the library.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity

from idm_vton.errors import StateDictMismatchError, WeightFileError
from idm_vton.evaluation.metrics.clip_score import CLIPImageScorer
from idm_vton.evaluation.metrics.fid import (
    FIDInceptionA,
    FIDInceptionE,
    FIDInceptionV3,
    clean_resize,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    load_fid_inception,
    polynomial_mmd2,
)
from idm_vton.evaluation.metrics.lpips import LPIPS, load_lpips
from idm_vton.evaluation.metrics.ssim import ssim
from idm_vton.evaluation.metrics.weights import KNOWN_WEIGHTS, WeightFile, resolve_weight_file

from .conftest import EXAMPLES
from .helpers.metrics import (
    ALEX_CONVS,
    VGG_WIDTHS,
    direct_fid,
    direct_mmd2,
    low_rank_fid,
    pt_inception_shapes,
    random_heads,
    random_pt_inception,
    random_trunk,
    reference_clean_resize,
    reference_inception_features,
    reference_lpips,
    tiny_clip_folder,
    vgg_convs,
)

# ----------------------------------------------------------------------------- helpers


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) float array -> (B, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(2, 32, 40, 3), (3, 17, 11, 1), (1, 64, 48, 3)])
def test_ssim_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(0)
    a = rng.random(shape)
    # Correlated second image so SSIM is far from 0 and from 1.
    b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1)
    ours = ssim(to_tensor(a), to_tensor(b)).numpy()
    reference = [skimage_ssim(a[i], b[i]) for i in range(shape[0])]
    assert ours.shape == (shape[0],)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    # float64 computation should in fact agree to rounding error.
    np.testing.assert_allclose(ours, reference, atol=1e-10)


def test_ssim_matches_skimage_on_real_images():
    # The example photo and the garment picture cut to the same size (face, suit, background).
    a = load_rgb(EXAMPLES / "person.jpg")[:400, :384] / 255.0
    b = load_rgb(EXAMPLES / "garment.jpg")[200:600, 100:484] / 255.0
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1)
    x = to_tensor(np.stack([a, a]))
    y = to_tensor(np.stack([b, noisy]))
    ours = ssim(x, y).numpy()
    np.testing.assert_allclose(ours, [skimage_ssim(a, b), skimage_ssim(a, noisy)], atol=1e-4)
    # The float32 path used on accelerators stays within the tolerance too.
    ours32 = ssim(x.float(), y.float(), dtype=torch.float32).numpy()
    np.testing.assert_allclose(ours32, ours, atol=1e-4)


def test_ssim_identical_is_one_and_rejects_bad_input():
    x = torch.rand(2, 3, 20, 20)
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 3, 10, 30), torch.rand(1, 3, 10, 30))
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 21))


# ----------------------------------------------------------------------------- FID / KID


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 16))
    scale = np.trace(np.cov(x, rowvar=False))
    assert abs(fid_from_features(x, x)) < 1e-8 * scale


def test_fid_matches_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))
    y = rng.standard_normal((350, 12)) * 1.5 + 0.3
    ours = fid_from_features(x, y)
    reference = direct_fid(x, y)
    assert reference > 1.0
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_fid_with_singular_covariances_is_real_and_finite():
    # Fewer samples than dimensions: sqrtm may return complex values; the result must be real.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 32)), rng.standard_normal((6, 32)) + 1
    value = fid_from_features(x, y)
    assert isinstance(value, float)
    # Exact without any square root of a singular matrix: the low-rank form of the trace term.
    assert value == pytest.approx(low_rank_fid(x, y), rel=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("IDM_VTON_SLOW") != "1", reason="2048-d sqrtm, set IDM_VTON_SLOW=1"
)
def test_fid_at_inception_size_with_fewer_images_than_dimensions():
    # The real VITON-HD case: 2032 images, 2048-d features, singular covariances.
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((40, 2048)), rng.standard_normal((30, 2048)) + 0.05
    xc, yc = x - x.mean(0), y - y.mean(0)
    tr_sqrt = np.linalg.svd(xc @ yc.T / np.sqrt(39 * 29), compute_uv=False).sum()
    reference = (
        ((x.mean(0) - y.mean(0)) ** 2).sum() + (xc**2).sum() / 39 + (yc**2).sum() / 29 - 2 * tr_sqrt
    )
    np.testing.assert_allclose(fid_from_features(x, y), reference, rtol=1e-4)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_matches_direct_computation_on_whole_sets():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 10))
    y = rng.standard_normal((60, 10)) + 0.5
    result = kid_from_features(x, y, num_subsets=4, max_subset_size=1000)
    # Subsets of the whole sets are permutations: every subset gives the same value.
    reference = direct_mmd2(x, y, unbiased=True)
    assert result.subset_size == 60
    np.testing.assert_allclose(result.mean, reference, rtol=1e-6)
    assert result.std < 1e-9 * abs(reference)


def test_kid_subsets_follow_the_documented_draws():
    rng_data = np.random.default_rng(4)
    x = rng_data.standard_normal((50, 6))
    y = rng_data.standard_normal((40, 6)) + 0.2
    result = kid_from_features(x, y, num_subsets=5, max_subset_size=15, seed=7)
    rng = np.random.default_rng(7)
    values = []
    for _ in range(5):
        y_sub = y[rng.choice(40, 15, replace=False)]
        x_sub = x[rng.choice(50, 15, replace=False)]
        values.append(direct_mmd2(x_sub, y_sub, unbiased=True))
    np.testing.assert_allclose(result.mean, np.mean(values), rtol=1e-6)
    np.testing.assert_allclose(result.std, np.std(values), rtol=1e-6)
    assert result == kid_from_features(x, y, num_subsets=5, max_subset_size=15, seed=7)


def test_kid_is_unbiased_and_the_biased_estimator_is_not():
    rng = np.random.default_rng(5)
    repeats, m, dim = 400, 12, 4
    unbiased, biased = [], []
    for _ in range(repeats):
        x = rng.standard_normal((m, dim))
        y = rng.standard_normal((m, dim))  # same distribution: the true MMD is 0
        unbiased.append(kid_from_features(x, y, num_subsets=1, max_subset_size=m).mean)
        biased.append(direct_mmd2(x, y, unbiased=False))
        assert np.isclose(polynomial_mmd2(x, y, unbiased=False), biased[-1], rtol=1e-9)
    for values, is_unbiased in ((unbiased, True), (biased, False)):
        mean = np.mean(values)
        standard_error = np.std(values, ddof=1) / np.sqrt(repeats)
        if is_unbiased:
            assert abs(mean) < 4 * standard_error, (mean, standard_error)
        else:
            assert mean > 10 * standard_error, (mean, standard_error)


# ----------------------------------------------------------------------------- LPIPS


# The reference networks are written out in tests/helpers/metrics.py.
@pytest.mark.parametrize(
    "net,convs,widths",
    [("alex", ALEX_CONVS, [64, 192, 384, 256, 256]), ("vgg", None, VGG_WIDTHS)],
)
def test_lpips_matches_direct_computation(net, convs, widths):
    trunk = random_trunk(convs or vgg_convs(), seed=0)
    heads = random_heads(widths, seed=1)
    model = LPIPS.from_state_dicts(net, trunk, heads)
    gen = torch.Generator().manual_seed(2)
    size = (72, 56) if net == "alex" else (40, 36)
    x0 = torch.rand(2, 3, *size, generator=gen)
    x1 = (x0 + 0.3 * torch.rand(2, 3, *size, generator=gen)).clamp(0, 1)
    ours = model(x0, x1)
    reference = reference_lpips(net, trunk, heads, x0, x1)
    assert (reference > 0).all()
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-7)


def test_lpips_is_zero_for_identical_images_and_symmetric():
    model = LPIPS.from_state_dicts(
        "alex", random_trunk(ALEX_CONVS, 3), random_heads([64, 192, 384, 256, 256], 4)
    )
    gen = torch.Generator().manual_seed(5)
    x0, x1 = torch.rand(3, 3, 64, 64, generator=gen), torch.rand(3, 3, 64, 64, generator=gen)
    assert torch.equal(model(x0, x0), torch.zeros(3))
    d01, d10 = model(x0, x1), model(x1, x0)
    assert (d01 > 0).all()
    torch.testing.assert_close(d01, d10, rtol=1e-6, atol=0)


def test_lpips_loads_published_files_by_name(tmp_path):
    trunk = random_trunk(ALEX_CONVS, 6)
    # The torchvision file also carries the classifier: accepted and dropped.
    trunk["classifier.6.weight"] = torch.zeros(1000, 4096)
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(random_heads([64, 192, 384, 256, 256], 7), tmp_path / "alex.pth")
    model, record = load_lpips("alex", tmp_path, verify=False)
    assert torch.equal(model.trunk.features[3].weight, trunk["features.3.weight"])
    digest = hashlib.sha256((tmp_path / "alex.pth").read_bytes()).hexdigest()
    assert record["lpips_alex"] == {
        "file": "alex.pth",
        "sha256": digest,
        "published_sha256": KNOWN_WEIGHTS["lpips_alex"].sha256,
        "verified": False,
    }
    # With verification on, random files are rejected with the expected digest in the message.
    with pytest.raises(WeightFileError, match="alexnet-owt-7be5be79.pth"):
        load_lpips("alex", tmp_path, verify=True)


def test_lpips_state_dict_errors_name_each_key():
    trunk = random_trunk(ALEX_CONVS, 8)
    heads = random_heads([64, 192, 384, 256, 256], 9)
    broken = dict(trunk)
    del broken["features.8.bias"]
    broken["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    broken["features.99.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as info:
        LPIPS.from_state_dicts("alex", broken, heads)
    message = str(info.value)
    assert "missing keys: features.8.bias" in message
    assert "unexpected keys: features.99.weight" in message
    assert "features.3.weight (file (192, 64, 3, 3), network (192, 64, 5, 5))" in message
    wrong_heads = dict(heads)
    wrong_heads["lin5.model.1.weight"] = wrong_heads.pop("lin4.model.1.weight")
    with pytest.raises(StateDictMismatchError, match=r"missing keys: lin4\.model\.1\.weight"):
        LPIPS.from_state_dicts("alex", trunk, wrong_heads)


# ----------------------------------------------------------------------------- FID Inception


def test_fid_inception_architecture_loads_pt_inception_layout(tmp_path):
    shapes = pt_inception_shapes()
    backbone_parameters = sum(
        int(np.prod(s)) for k, s in shapes.items() if "running" not in k and not k.startswith("fc")
    )
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and
    # the 1000-way fc (2,049,000) that leaves the pool3 backbone.
    assert backbone_parameters == 27_161_264 - 3_326_696 - 2_049_000
    model = FIDInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == backbone_parameters

    state = random_pt_inception(0)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    loaded, record = load_fid_inception(tmp_path, verify=False)
    assert torch.equal(
        loaded.Mixed_6e.branch7x7dbl_5.conv.weight, state["Mixed_6e.branch7x7dbl_5.conv.weight"]
    )
    assert record["fid_inception"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    # The forward equals the network written out block by block from the same state dict
    # (tests/helpers/metrics.py): a swapped branch, pool or padding would change the features.
    gen = torch.Generator().manual_seed(1)
    noise = torch.rand(3, 299, 299, generator=gen) * 255
    ramp = torch.linspace(0, 255, 299)
    colours = torch.stack([ramp.expand(299, 299), ramp[:, None].expand(299, 299), 255 - noise[2]])
    images = torch.stack([noise, colours])
    features = loaded(images)
    expected = reference_inception_features(state, images)
    scale = expected.abs().max()
    assert (expected[0] - expected[1]).abs().max() > 0.1 * scale  # the input reaches pool3
    torch.testing.assert_close(features.double(), expected, rtol=1e-4, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="299"):
        loaded(torch.rand(1, 3, 224, 224))


def test_fid_inception_accepts_num_batches_tracked_and_names_bad_keys():
    state = random_pt_inception(2)
    with_counters = dict(state)
    with_counters["Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(0)
    FIDInceptionV3.from_state_dict(with_counters)

    broken = dict(state)
    del broken["Mixed_7c.branch_pool.bn.running_var"]
    broken["fc.weight"] = torch.zeros(1000, 2048)
    broken["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    with pytest.raises(StateDictMismatchError) as info:
        FIDInceptionV3.from_state_dict(broken)
    message = str(info.value)
    assert "missing keys: Mixed_7c.branch_pool.bn.running_var" in message
    assert "unexpected keys: AuxLogits.fc.weight" in message
    assert "fc.weight (file (1000, 2048), network (1008, 2048))" in message


def _identity_block(block: torch.nn.Module) -> torch.nn.Module:
    """Zero every conv except ``branch_pool`` (all ones), BatchNorm as identity."""
    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.constant_(module.weight, 1.0 if name.startswith("branch_pool") else 0.0)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(1.0 - module.eps)
    return block.eval()


def test_fid_inception_pools_follow_tensorflow():
    with torch.no_grad():
        # TF average pooling ignores padding: a constant input stays constant at the borders.
        ones = torch.ones(1, 1, 5, 5)
        for block in (FIDInceptionA(1, pool_features=1), FIDInceptionE(1, max_pool=False)):
            pool_branch = _identity_block(block)(ones)[0, -1]
            torch.testing.assert_close(pool_branch, torch.ones(5, 5))
        # The last E block max-pools: an isolated peak spreads to its 3x3 neighbourhood unchanged.
        peak = torch.zeros(1, 1, 5, 5)
        peak[0, 0, 2, 2] = 1.0
        pool_branch = _identity_block(FIDInceptionE(1, max_pool=True))(peak)[0, -1]
        expected = torch.zeros(5, 5)
        expected[1:4, 1:4] = 1.0
        torch.testing.assert_close(pool_branch, expected)
    model = FIDInceptionV3()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_clean_resize_is_per_channel_float_bicubic():
    image = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    resized = clean_resize(image)
    assert resized.shape == (299, 299, 3) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized, reference_clean_resize(image))
    # Not re-quantised: bicubic overshoot between pixels leaves fractional values.
    assert (resized != np.round(resized)).mean() > 0.5


# ----------------------------------------------------------------------------- weight files


def test_missing_weight_file_names_file_and_source(tmp_path):
    with pytest.raises(WeightFileError) as info:
        resolve_weight_file("fid_inception", tmp_path)
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "github.com/mseitzer/pytorch-fid" in message
    with pytest.raises(WeightFileError, match="vgg16-397923af.pth"):
        load_lpips("vgg", tmp_path)


def test_weight_digest_checks(tmp_path):
    payload = b"not really weights"
    (tmp_path / "w.pth").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    exact = WeightFile("w", "w.pth", digest, len(payload), "https://example.org/w.pth", "test file")
    assert resolve_weight_file(exact, tmp_path) == tmp_path / "w.pth"
    prefix_only = WeightFile("w", "w.pth", digest[:8], None, "https://example.org/w.pth", "test")
    assert resolve_weight_file(prefix_only, tmp_path) == tmp_path / "w.pth"
    wrong = WeightFile("w", "w.pth", "0" * 64, None, "https://example.org/w.pth", "test file")
    with pytest.raises(WeightFileError, match="SHA-256 " + digest):
        resolve_weight_file(wrong, tmp_path)
    wrong_size = WeightFile("w", "w.pth", digest, 5, "https://example.org/w.pth", "test file")
    with pytest.raises(WeightFileError, match="has 18 bytes"):
        resolve_weight_file(wrong_size, tmp_path)
    # Known files: the published digest starts with the prefix torchvision puts in the name.
    for spec in KNOWN_WEIGHTS.values():
        stem = Path(spec.filename).stem
        if "-" in stem:
            assert spec.sha256.startswith(stem.rsplit("-", 1)[1])
        assert len(spec.sha256) == 64


# ----------------------------------------------------------------------------- CLIP-I


def test_clip_image_similarity(tmp_path):
    scorer = CLIPImageScorer.from_pretrained(tiny_clip_folder(tmp_path / "clip"))
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    b = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_allclose(scorer.similarity(a, a), 1.0, atol=1e-6)
    # Cosine of the projected embeddings, computed here from the model outputs directly.
    processor, encoder = scorer.image_processor, scorer.image_encoder
    with torch.no_grad():
        ea = encoder(
            pixel_values=processor(images=a, return_tensors="pt")["pixel_values"]
        ).image_embeds
        eb = encoder(
            pixel_values=processor(images=b, return_tensors="pt")["pixel_values"]
        ).image_embeds
    expected = F.cosine_similarity(ea, eb, dim=-1).numpy()
    np.testing.assert_allclose(scorer.similarity(a, b), expected, atol=1e-6)
    assert not np.allclose(expected, 1.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPImageScorer.from_pretrained(tmp_path / "nowhere")
