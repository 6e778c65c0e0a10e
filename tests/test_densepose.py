"""DensePose without detectron2: operators, weight loading, network and renderer.

The real checkpoint (model_final_162be9.pkl, ~250 MB) is not available here, so the network is
exercised with a scaled-down random checkpoint that has the real detectron2 key names; the
operators are checked against values worked out by hand from detectron2/torchvision semantics.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from idm_vton.errors import PreprocessModelError
from idm_vton.preprocess.densepose.model import (
    FrozenBatchNorm2d,
    RPNHead,
    _shortest_edge_size,
)
from idm_vton.preprocess.densepose.predictor import (
    DensePosePredictor,
    DensePoseRCNN,
    DensePoseRCNNConfig,
    DensePoseResult,
    NoPersonFoundError,
    apply_parula,
    chart_outputs_to_box,
    load_densepose_state_dict,
    part_labels_to_rgb,
    parula_table,
    render_densepose,
)
from idm_vton.preprocess.densepose.roi_ops import (
    apply_deltas,
    assign_boxes_to_levels,
    batched_nms,
    cell_anchors,
    clip_boxes,
    get_deltas,
    grid_anchors,
    nms,
    roi_align,
)

from .conftest import example_person_3x4
from .helpers.preprocess_models import REAL_SIZES, tiny_densepose_state, write_pickle

# ----------------------------------------------------------------------------------------------
# RoIAlign


def _ramp(height: int = 4, width: int = 4) -> torch.Tensor:
    """Feature map f(y, x) = 100 + x + 10 y: bilinear sampling of it is exact."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (100 + x + 10 * y).to(torch.float32)[None, None]


def _roi(*xyxy: float, batch: int = 0) -> torch.Tensor:
    return torch.tensor([[batch, *xyxy]], dtype=torch.float32)


def test_roi_align_half_pixel_offset_of_aligned_variant():
    feature = _ramp()
    # aligned=False: bins of the box [0, 4] are [0, 2] and [2, 4], one sample at each centre.
    legacy = roi_align(feature, _roi(0, 0, 4, 4), 2, 1.0, 1, aligned=False)
    assert torch.allclose(legacy[0, 0], torch.tensor([[111.0, 113.0], [131.0, 133.0]]))
    # aligned=True shifts the box by -0.5 px: samples at 0.5 and 2.5.
    aligned = roi_align(feature, _roi(0, 0, 4, 4), 2, 1.0, 1, aligned=True)
    assert torch.allclose(aligned[0, 0], torch.tensor([[105.5, 107.5], [125.5, 127.5]]))


def test_roi_align_borders_and_out_of_map_samples():
    feature = _ramp()
    sample = lambda *box: roi_align(feature, _roi(*box), 1, 1.0, 1, aligned=False)[0, 0, 0, 0]  # noqa: E731
    assert sample(-2, -2, 0, 0) == pytest.approx(100.0)  # sample at (-1, -1) reads the corner
    assert sample(-4, -4, -2, -2) == 0.0  # sample at (-3, -3) is outside: contributes 0
    assert sample(3, 3, 5, 5) == pytest.approx(133.0)  # (4, 4) == map size: clamps to (3, 3)
    assert sample(5, 5, 7, 7) == 0.0  # (6, 6) is past the map
    # Degenerate box: legacy RoIAlign makes it 1 px wide, the aligned one keeps it empty.
    assert sample(1, 1, 1, 1) == pytest.approx(116.5)
    point = roi_align(feature, _roi(1, 1, 1, 1), 1, 1.0, 1, aligned=True)[0, 0, 0, 0]
    assert point == pytest.approx(105.5)


def test_roi_align_scale_sampling_grid_and_batch_index():
    feature = _ramp()
    # Box [0, 8] at scale 1/2 -> [0, 4]; 2x2 samples per bin at 0.5, 1.5 | 2.5, 3.5(->3).
    out = roi_align(feature, _roi(0, 0, 8, 8), 2, 0.5, 2, aligned=False)[0, 0]
    assert torch.allclose(out, torch.tensor([[111.0, 112.75], [128.5, 130.25]]))
    # sampling_ratio 0: ceil(4 / 1) = 4 samples per axis at 0.5, 1.5, 2.5, 3.5(->3).
    adaptive = roi_align(feature, _roi(0, 0, 4, 4), 1, 1.0, 0, aligned=False)[0, 0, 0, 0]
    assert adaptive == pytest.approx(100 + 1.875 + 18.75)
    two_images = torch.cat([feature, feature + 1000])
    rois = torch.cat([_roi(0, 0, 4, 4, batch=1), _roi(0, 0, 4, 4, batch=0)])
    pooled = roi_align(two_images, rois, 2, 1.0, 1, aligned=False)
    assert torch.allclose(pooled[0] - pooled[1], torch.full((1, 2, 2), 1000.0))


def test_assign_boxes_to_levels_follows_fpn_equation():
    sizes = torch.tensor([224.0, 112.0, 448.0, 2000.0, 10.0, 223.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sizes, sizes], dim=1)
    levels = assign_boxes_to_levels(boxes, 2, 5, 224.0, 4)
    assert levels.tolist() == [2, 1, 3, 3, 0, 1]


# ----------------------------------------------------------------------------------------------
# NMS, box decoding, anchors


def _strip(x0: float, x1: float) -> list[float]:
    return [x0, 0.0, x1, 1.0]


def test_nms_is_greedy_and_sorted_by_score():
    # IoU(A, B) = IoU(B, C) = 6/14 ~ 0.43, IoU(A, C) = 2/18.
    boxes = torch.tensor([_strip(8, 18), _strip(0, 10), _strip(4, 14)])
    scores = torch.tensor([0.7, 0.9, 0.8])
    # A keeps and removes B; C survives because B, which overlaps it, is gone.
    assert nms(boxes, scores, 0.4).tolist() == [1, 0]
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 0]


def test_nms_keeps_boxes_at_exactly_the_threshold():
    boxes = torch.tensor([_strip(0, 3), _strip(1, 4)])  # IoU = 2 / 4 = 0.5 exactly
    scores = torch.tensor([0.6, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [1, 0]
    assert nms(boxes, scores, 0.49).tolist() == [1]


def test_batched_nms_only_suppresses_within_a_group():
    boxes = torch.tensor([_strip(0, 10), _strip(1, 10), _strip(0, 9), _strip(50, 60)])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    groups = torch.tensor([0, 1, 0, 1])
    # Group 0: box 2 (0.8) suppresses box 0 (IoU 0.9). Box 1 overlaps both but is in group 1.
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [1, 2, 3]


def test_apply_deltas_by_hand_and_scale_clamp():
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    weights = (10.0, 10.0, 5.0, 5.0)
    # dx = 1 / 10 of the width to the right, width doubled, height kept.
    deltas = torch.tensor([[1.0, 0.0, 5.0 * math.log(2.0), 0.0]])
    assert torch.allclose(apply_deltas(deltas, box, weights), torch.tensor([[-4.0, 0, 16, 20]]))
    huge = torch.tensor([[0.0, 0.0, 1000.0, 0.0]])
    width = apply_deltas(huge, box, weights)[0, 2] - apply_deltas(huge, box, weights)[0, 0]
    assert width == pytest.approx(10.0 * 1000.0 / 16, rel=1e-5)


def test_box_deltas_round_trip():
    generator = torch.Generator().manual_seed(0)
    src = torch.rand(50, 2, generator=generator) * 100
    src = torch.cat([src, src + 1 + torch.rand(50, 2, generator=generator) * 100], dim=1)
    tgt = torch.rand(50, 2, generator=generator) * 100
    tgt = torch.cat([tgt, tgt + 1 + torch.rand(50, 2, generator=generator) * 100], dim=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        decoded = apply_deltas(get_deltas(src, tgt, weights), src, weights)
        assert torch.allclose(decoded, tgt, atol=1e-3)
    # Class-specific deltas (N, 4k) decode every class against the same box.
    two = torch.cat([get_deltas(src, tgt, weights), get_deltas(src, src, weights)], dim=1)
    decoded = apply_deltas(two, src, weights)
    assert torch.allclose(decoded[:, 4:], src, atol=1e-3)


def test_anchors_layout_matches_rpn_head_outputs():
    base = cell_anchors((32,), (0.5, 1.0, 2.0))
    half_w = math.sqrt(32.0**2 / 0.5) / 2
    assert torch.allclose(base[0], torch.tensor([-half_w, -half_w / 2, half_w, half_w / 2]))
    assert torch.allclose(base[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    anchors = grid_anchors((2, 3), 4, base)
    assert anchors.shape == (2 * 3 * 3, 4)
    # Location (row 1, col 2) is centred at (8, 4); anchors are location-major.
    assert torch.allclose(anchors[(1 * 3 + 2) * 3 + 1], torch.tensor([-8.0, -12.0, 24.0, 20.0]))

    head = RPNHead(channels=4, num_anchors=3)
    with torch.no_grad():
        for conv in (head.objectness_logits, head.anchor_deltas):
            conv.weight.zero_()
            conv.bias.copy_(torch.arange(conv.bias.numel(), dtype=torch.float32))
    logits, deltas = head(torch.randn(1, 4, 2, 3))
    location, anchor = 4, 2
    assert logits[0, location * 3 + anchor] == anchor
    assert deltas[0, location * 3 + anchor].tolist() == [8.0, 9.0, 10.0, 11.0]


def test_frozen_batch_norm_matches_batch_norm_in_eval():
    frozen, reference = FrozenBatchNorm2d(5), torch.nn.BatchNorm2d(5).eval()
    stats = {
        name: torch.rand(5) + 0.5 for name in ("weight", "bias", "running_mean", "running_var")
    }
    frozen.load_state_dict(stats)
    reference.load_state_dict(stats, strict=False)
    x = torch.randn(2, 5, 3, 3)
    assert torch.allclose(frozen(x), reference(x), atol=1e-6)


def test_frozen_batch_norm_is_detectron2s_fused_batch_norm_bit_for_bit():
    """detectron2 runs F.batch_norm at inference; the folded x * scale + bias rounds otherwise."""
    g = torch.Generator().manual_seed(0)
    n = 64
    stats = {
        "weight": torch.randn(n, generator=g),
        "bias": torch.randn(n, generator=g),
        "running_mean": torch.randn(n, generator=g) * 3,
        "running_var": torch.rand(n, generator=g) * 4 + 0.01,
    }
    frozen = FrozenBatchNorm2d(n, eps=1e-5)
    frozen.load_state_dict(stats)
    x = torch.randn(2, n, 16, 16, generator=g) * 5
    reference = torch.nn.functional.batch_norm(
        x,
        stats["running_mean"],
        stats["running_var"],
        stats["weight"],
        stats["bias"],
        training=False,
        eps=1e-5,
    )
    assert torch.equal(frozen(x), reference)
    with torch.no_grad():
        assert torch.equal(frozen(x), reference)
    # The folded form is not bit-identical on these statistics, so the check above is not trivial.
    scale = stats["weight"] * (stats["running_var"] + 1e-5).rsqrt()
    shift = stats["bias"] - stats["running_mean"] * scale
    assert not torch.equal(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), reference)
    # With autograd on, the module still differentiates (detectron2's folded branch).
    x_grad = x.clone().requires_grad_(True)
    out = frozen(x_grad)
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.allclose(x_grad.grad, scale.view(1, -1, 1, 1).expand_as(x))


# ----------------------------------------------------------------------------------------------
# Weight files


def test_restricted_unpickler_loads_numpy_checkpoint(tmp_path):
    arrays = OrderedDict(
        [("a.weight", np.arange(600, dtype=np.float32).reshape(20, 30)), ("b", np.ones(3))]
    )
    payload = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    for protocol in (2, 4):
        path = write_pickle(tmp_path / f"ok{protocol}.pkl", payload, protocol)
        state = load_densepose_state_dict(path)
        assert set(state) == {"a.weight", "b"}
        assert torch.equal(state["a.weight"], torch.arange(600.0).reshape(20, 30))
        assert state["b"].dtype == torch.float64


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": {"w": np.zeros(2000, np.float32)}, "evil": _Exploit(marker)}
    path = write_pickle(tmp_path / "evil.pkl", payload)
    with pytest.raises(PreprocessModelError, match="refusing to load global"):
        load_densepose_state_dict(path)
    assert not marker.exists()


def _detectron2_like_arrays() -> OrderedDict:
    return OrderedDict(
        [
            ("backbone.conv.weight", np.arange(600, dtype=np.float32).reshape(20, 30) / 7),
            ("backbone.norm.running_var", np.linspace(0.1, 2.0, 30, dtype=np.float32)),
            ("head.strides", np.array([4, 8, 16, 32], dtype=np.int64)),
            ("head.scale", np.array(0.25, dtype=np.float32)),  # 0-d
            ("head.table", np.arange(12, dtype=np.float64).reshape(3, 4).T),  # not C-contiguous
            ("head.mask", np.array([[1, 0], [0, 1]], dtype=np.uint8)),
        ]
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pickles_of_every_protocol_round_trip(tmp_path, protocol):
    arrays = _detectron2_like_arrays()
    payload = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path = write_pickle(tmp_path / f"model{protocol}.pkl", payload, protocol)
    state = load_densepose_state_dict(path)
    assert list(state) == list(arrays)
    for key, array in arrays.items():
        loaded = state[key].numpy()
        assert loaded.dtype == array.dtype and loaded.shape == array.shape, key
        assert np.array_equal(loaded, array), key


@pytest.mark.parametrize("protocol", [2, 5])
def test_code_and_object_arrays_are_refused_in_one_line(tmp_path, protocol):
    marker = tmp_path / "pwned"
    code = {"model": {"w": np.zeros(2000, np.float32)}, "evil": _Exploit(marker)}
    with pytest.raises(
        PreprocessModelError, match=r"refusing to load global (posix|nt|os)\.system"
    ):
        load_densepose_state_dict(write_pickle(tmp_path / "code.pkl", code, protocol))
    assert not marker.exists()
    objects = np.array([1, "text", None] * 400, dtype=object)
    for name, value in (
        ("object", objects),
        ("field", np.zeros(400, dtype=[("a", "f4"), ("b", "O")])),
        ("subarray", np.zeros(400, dtype=("O", (2,)))),
    ):
        path = write_pickle(tmp_path / f"{name}.pkl", {"model": {"w": value}}, protocol)
        with pytest.raises(PreprocessModelError, match="object array") as err:
            load_densepose_state_dict(path)
        assert "\n" not in str(err.value), name
        assert "were not loaded" in str(err.value), name


def test_weight_file_problems_are_explained(tmp_path):
    with pytest.raises(PreprocessModelError, match=r"not found at .*missing\.pkl.*yisol/IDM-VTON"):
        load_densepose_state_dict(tmp_path / "missing.pkl")
    placeholder = tmp_path / "model_final_162be9.pkl"
    placeholder.write_text("put densepose model here")  # 25 bytes, as the official repo ships
    with pytest.raises(PreprocessModelError, match="placeholder"):
        load_densepose_state_dict(placeholder)
    placeholder.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 255\n"
    )
    with pytest.raises(PreprocessModelError, match="git-lfs"):
        load_densepose_state_dict(placeholder)
    whole = pickle.dumps({"model": {"w": np.zeros(5000, np.float32)}}, protocol=2)
    placeholder.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PreprocessModelError, match="truncated or corrupt"):
        load_densepose_state_dict(placeholder)


def test_pth_and_safetensors_copies_load(tmp_path):
    from safetensors.torch import save_file

    state = {"x.weight": torch.randn(40, 30), "x.bias": torch.randn(40)}
    torch.save({"model": state}, tmp_path / "w.pth")
    save_file(state, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        loaded = load_densepose_state_dict(tmp_path / name)
        assert torch.equal(loaded["x.weight"], state["x.weight"])


# ----------------------------------------------------------------------------------------------
# A scaled-down checkpoint with detectron2's key names


@pytest.fixture(scope="module")
def tiny_pkl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("densepose") / "model_final_162be9.pkl"
    payload = {"model": tiny_densepose_state(), "__author__": "test", "matching_heuristics": True}
    return write_pickle(path, payload)


@pytest.fixture(scope="module")
def predictor(tiny_pkl) -> DensePosePredictor:
    return DensePosePredictor(tiny_pkl)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return example_person_3x4()


def test_architecture_is_read_from_weight_shapes(predictor):
    model = predictor.model
    assert [len(getattr(model.backbone.bottom_up, f"res{i}")) for i in (2, 3, 4, 5)] == [1, 2, 1, 1]
    assert model.roi_heads.box_pooler_resolution == 7
    assert model.roi_heads.densepose_head.n_stacked_convs == 2
    assert model.roi_heads.decoder.levels == [2, 3, 4, 5]
    assert len(model.roi_heads.decoder.p5) == 6  # conv, up, conv, up, conv, up


def test_checkpoint_keys_and_shapes_are_checked():
    state = {k: torch.from_numpy(v) for k, v in tiny_densepose_state().items()}
    model = DensePoseRCNN.from_state_dict(state)
    assert model.load_checked_state_dict(state) == []
    # Entries the network has no use for outside the modules it runs are ignored and named:
    # another task's head, BatchNorm counters, the pixel statistics and the anchor buffers.
    extras = {
        "roi_heads.mask_head.mask_fcn1.weight": torch.zeros(1),
        "backbone.bottom_up.stem.conv1.norm.num_batches_tracked": torch.tensor(0),
        "pixel_mean": torch.zeros(3, 1, 1),
        "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4),
    }
    ignored = model.load_checked_state_dict({**state, **extras})
    assert ignored == sorted(extras)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state if key in loaded)

    # A key inside a module the network runs is a different architecture: refused, named.
    with pytest.raises(PreprocessModelError) as info:
        DensePoseRCNN.from_state_dict({**state, "roi_heads.box_head.conv1.weight": torch.zeros(1)})
    assert "1 weights this network does not use" in str(info.value)
    assert "['roi_heads.box_head.conv1.weight']" in str(info.value)
    bad = dict(state)
    bad["backbone.fpn_output3.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(PreprocessModelError) as info:
        DensePoseRCNN.from_state_dict(bad)
    assert "backbone.fpn_output3.weight: checkpoint (16, 16, 1, 1) vs model (16, 16, 3, 3)" in str(
        info.value
    )
    missing = dict(state)
    del missing["roi_heads.densepose_predictor.u_lowres.bias"]
    del missing["backbone.fpn_lateral4.bias"]
    with pytest.raises(PreprocessModelError) as info:
        DensePoseRCNN.from_state_dict(missing)
    assert "lacks 2 weights" in str(info.value)
    assert "['backbone.fpn_lateral4.bias', 'roi_heads.densepose_predictor.u_lowres.bias']" in str(
        info.value
    )
    assert "\n" not in str(info.value)  # one line
    # Frozen BN saved without statistics (early detectron2) gets mean 0, variance 1.
    no_stats = {k: v for k, v in state.items() if not k.endswith("stem.conv1.norm.running_var")}
    stem_norm = DensePoseRCNN.from_state_dict(no_stats).backbone.bottom_up.stem.conv1.norm
    assert torch.equal(stem_norm.running_var, torch.ones(8))


def test_shortest_edge_resize_and_preprocess(predictor):
    assert _shortest_edge_size(512, 384, 800, 1333) == (1067, 800)
    assert _shortest_edge_size(1024, 768, 800, 1333) == (1067, 800)
    assert _shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)
    rgb = np.zeros((512, 384, 3), np.uint8)
    rgb[...] = (10, 20, 30)
    batch, size = predictor.model.preprocess(rgb)
    assert size == (1067, 800) and batch.shape == (1, 3, 1088, 800)
    # BGR minus the Caffe2 mean; padding rows stay 0.
    assert batch[0, :, 0, 0].tolist() == pytest.approx([30 - 103.53, 20 - 116.28, 10 - 123.675])
    assert batch[0, :, 1067:].abs().max() == 0


def test_end_to_end_detections_on_a_real_photo(predictor, photo):
    small = photo.resize((384, 512), Image.Resampling.BICUBIC)
    result = predictor(small)
    assert len(result) > 0 and result.image_size == (512, 384)
    assert (result.scores > 0.8).all()
    assert (result.scores[:-1] >= result.scores[1:]).all()
    # Zero RPN/box deltas: each detection is an anchor of the 1067x800 input, clipped there
    # and scaled back to the 384x512 photo.
    anchors = torch.cat(
        [
            grid_anchors(
                (math.ceil(1088 / 2**level), math.ceil(800 / 2**level)),
                2**level,
                cell_anchors((size,), (0.5, 1.0, 2.0)),
            )
            for level, size in zip((2, 3, 4, 5, 6), (32, 64, 128, 256, 512), strict=True)
        ]
    )
    expected = clip_boxes(anchors, 1067, 800) * torch.tensor([384 / 800, 512 / 1067] * 2)
    for box in result.boxes_xyxy:
        assert (expected - box).abs().max(dim=1).values.min() < 1e-3
    for box, labels, uv in zip(result.boxes_xyxy, result.labels, result.uv, strict=True):
        width, height = int(box[2] - box[0]), int(box[3] - box[1])
        assert labels.shape == (max(height, 1), max(width, 1)) and uv.shape == (2, *labels.shape)
        assert 0 <= labels.min() and labels.max() <= 24
        assert (uv[:, labels == 0] == 0).all()


def test_densepose_image_is_the_demo_composition(predictor, photo):
    picture = predictor.densepose_image(photo)
    assert picture.mode == "RGB" and picture.size == photo.size
    small = photo.resize((384, 512), Image.Resampling.BICUBIC)
    drawn = render_densepose(np.asarray(small), predictor(small))
    expected = Image.fromarray(drawn).resize(photo.size, Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert drawn.any()  # the last instance painted something


def test_legacy_checkpoint_without_decoder_runs(tmp_path, photo):
    path = write_pickle(tmp_path / "legacy.pkl", {"model": tiny_densepose_state(decoder=False)})
    legacy = DensePosePredictor(path)
    assert legacy.model.roi_heads.decoder is None
    assert len(legacy(photo.resize((192, 256)))) > 0


def test_no_person_raises(tmp_path, photo):
    path = write_pickle(tmp_path / "nobody.pkl", {"model": tiny_densepose_state(person_logit=-6.0)})
    nobody = DensePosePredictor(path)
    small = photo.resize((192, 256))
    assert len(nobody(small)) == 0
    with pytest.raises(NoPersonFoundError, match="no person"):
        nobody.densepose_image(small, detect_size=None)


# ----------------------------------------------------------------------------------------------
# Chart resampling and rendering


def test_chart_outputs_resampled_to_the_integer_box():
    coarse = torch.zeros(1, 2, 4, 4)
    coarse[0, 1, :, :2] = 5.0  # foreground on the left half
    fine = torch.zeros(1, 25, 4, 4)
    fine[0, 3] = 1.0
    fine[0, 7, 2:] = 2.0  # part 7 on the bottom half, part 3 on top
    u = torch.rand(1, 25, 4, 4)
    u[0, 3] = 0.25
    v = torch.full((1, 25, 4, 4), 0.5)
    outputs = {"coarse_segm": coarse, "fine_segm": fine, "u": u, "v": v}
    # xywh = (10.6, 20.2, 8.3, 8.9) -> int box (10, 20, 8, 8): each map is upsampled 2x.
    labels, uv = chart_outputs_to_box(outputs, torch.tensor([10.6, 20.2, 18.9, 29.1]))
    # Bilinear, align_corners=False: output column 4 samples input x = 1.75, where the
    # foreground logit is still 1.25 > 0, and row 4 samples y = 1.75 where part 7 wins (1.5 > 1).
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[:4, :5] = 3
    expected[4:, :5] = 7
    assert torch.equal(labels, expected)
    assert torch.allclose(uv[0][:4, :5], torch.full((4, 5), 0.25))
    assert (uv[:, :, 5:] == 0).all() and torch.allclose(uv[1][:, :5], torch.full((8, 5), 0.5))


def test_parula_table_equals_opencv():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    opencv_bgr = cv2.applyColorMap(values, cv2.COLORMAP_PARULA)
    assert np.array_equal(apply_parula(values), opencv_bgr[..., ::-1])
    assert parula_table().shape == (256, 3)
    assert parula_table()[255].tolist() == [249, 251, 14]  # yellow end, in RGB order


def test_part_colours_use_the_255_over_24_scale():
    labels = np.arange(25)
    expected = cv2.applyColorMap(
        np.floor(labels * 255 / 24).astype(np.uint8)[None], cv2.COLORMAP_PARULA
    )
    assert np.array_equal(part_labels_to_rgb(labels), expected[0, :, ::-1])


def _result(boxes, label_maps):
    return DensePoseResult(
        image_size=(30, 40),
        boxes_xyxy=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.linspace(0.99, 0.9, len(boxes)),
        labels=[torch.as_tensor(m) for m in label_maps],
        uv=[torch.zeros(2, *np.shape(m)) for m in label_maps],
    )


def test_render_draws_parts_opaque_on_black_at_the_truncated_box():
    photo = np.full((30, 40, 3), 200, np.uint8)
    labels = np.zeros((9, 10), np.int64)  # box (2.7, 3.2, 12.9, 13.1) -> x 2, y 3, w 10, h 9
    labels[1:8, 2:9] = np.arange(1, 8)[:, None] * 3
    canvas = render_densepose(photo, _result([[2.7, 3.2, 12.9, 13.1]], [labels]))
    assert canvas.shape == (30, 40, 3) and canvas.dtype == np.uint8
    person = np.zeros((30, 40), bool)
    person[3:12, 2:12] = labels > 0
    assert not canvas[~person].any()  # background (also inside the box) is black
    colours = cv2.applyColorMap(np.floor(labels * 10.625).astype(np.uint8), cv2.COLORMAP_PARULA)
    assert np.array_equal(canvas[3:12, 2:12][labels > 0], colours[..., ::-1][labels > 0])


def test_render_keeps_only_the_last_instance_like_the_demo():
    first = np.full((5, 5), 24, np.int64)
    second = np.full((4, 4), 1, np.int64)
    canvas = render_densepose(
        np.zeros((30, 40, 3), np.uint8), _result([[0, 0, 5, 5], [20, 10, 24, 14]], [first, second])
    )
    assert not canvas[:5, :5].any()  # wiped when the second instance was drawn
    assert (canvas[10:14, 20:24] == part_labels_to_rgb(np.array(1))).all()
    with pytest.raises(NoPersonFoundError):
        render_densepose(np.zeros((30, 40, 3), np.uint8), _result(np.zeros((0, 4)), []))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IDM_VTON_SLOW") != "1", reason="set IDM_VTON_SLOW=1")
def test_real_sized_checkpoint_layout_runs(tmp_path, photo):
    """The real R50-FPN shapes (random values) go through inference at the demo's size."""
    path = write_pickle(tmp_path / "real.pkl", {"model": tiny_densepose_state(sizes=REAL_SIZES)})
    config = DensePoseRCNNConfig(detections_per_image=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    real = DensePosePredictor(path, device=device, config=config)
    assert [len(getattr(real.model.backbone.bottom_up, f"res{i}")) for i in (2, 3, 4, 5)] == [
        3,
        4,
        6,
        3,
    ]
    assert real.model.roi_heads.densepose_head.n_stacked_convs == 8
    picture = real.densepose_image(photo)
    assert picture.size == photo.size and np.asarray(picture).any()
