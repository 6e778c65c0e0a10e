"""Tests for the OpenPose body adapter: scaled-down random checkpoints with the real key names,
hand-computed peak finding / PAF scoring / assembly cases, JSON I/O and weight-file errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idm_vton.errors import PreprocessModelError
from idm_vton.preprocess.openpose import (
    LIMBS,
    PAF_CHANNELS,
    OpenPoseBody,
    assemble_people,
    connect_limbs,
    convert_body_pose_state_dict,
    find_peaks,
    load_openpose_json,
    select_person,
    write_openpose_json,
)

from .conftest import example_person_3x4
from .helpers.preprocess_models import make_body_state_dict

# --- a scaled-down body_pose_model.pth ------------------------------------------------------


@pytest.fixture(scope="module")
def body_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("openpose") / "body_pose_model.pth"
    torch.save(make_body_state_dict(), path)
    return path


# --- network and end to end -----------------------------------------------------------------


def test_network_from_scaled_down_checkpoint(body_pth):
    body = OpenPoseBody(body_pth)
    sd = torch.load(body_pth, weights_only=True)
    loaded = body.net.state_dict()
    assert len(loaded) == len(sd)  # every checkpoint tensor used exactly once
    converted = convert_body_pose_state_dict(sd)
    for key, tensor in converted.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    pafs, heatmaps = body.net(torch.randn(1, 3, 64, 48))
    assert pafs.shape == (1, 38, 8, 6) and heatmaps.shape == (1, 19, 8, 6)
    # pytorch-openpose's final heatmap layer is followed by a ReLU, the PAF layer is not.
    assert heatmaps.min() >= 0 and pafs.min() < 0
    # A checkpoint saved from pytorch-openpose's own module ("model0.conv1_1.weight") also loads.
    prefixed = {
        ("model0." if k.startswith("conv") and "_L" not in k else "model1_1.") + k: v
        for k, v in sd.items()
    }
    assert convert_body_pose_state_dict(prefixed).keys() == converted.keys()


class _PlantedNet(torch.nn.Module):
    """Stands in for the network: fixed heatmaps / PAFs on the stride-8 grid."""

    def __init__(self, pafs: np.ndarray, heatmaps: np.ndarray) -> None:
        super().__init__()
        self.pafs = torch.from_numpy(pafs)
        self.heatmaps = torch.from_numpy(heatmaps)

    def forward(self, x):
        return self.pafs, self.heatmaps


# A standing person in the 384 x 512 working image (x, y), BODY_PARTS order.
_PERSON = np.array(
    [
        [192, 80], [192, 130], [150, 135], [130, 200], [120, 260], [234, 135], [254, 200],
        [264, 260], [165, 280], [160, 370], [158, 450], [219, 280], [224, 370], [226, 450],
        [180, 70], [204, 70], [168, 76], [216, 76],
    ],
    dtype=np.float64,
)  # fmt: skip


def _planted_maps(points: np.ndarray, drop: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    # Grid cell g lands at working pixel (8 g + 4) * 384 / 138 - 0.5 (x8 upsampling, 138 -> 384).
    grid_h, grid_w = 23, 18
    g = ((points + 0.5) * 138 / 384 - 4) / 8
    yy, xx = np.mgrid[0:grid_h, 0:grid_w]
    heatmaps = np.zeros((1, 19, grid_h, grid_w), np.float32)
    for part, (gx, gy) in enumerate(g):
        if part not in drop:
            heatmaps[0, part] = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * 0.7**2))
    pafs = np.zeros((1, 38, grid_h, grid_w), np.float32)
    for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS, strict=True):
        direction = (points[b] - points[a]) / np.linalg.norm(points[b] - points[a])
        pafs[0, cx], pafs[0, cy] = direction
    return pafs, heatmaps


def test_planted_person_is_decoded_in_photo_pixels(body_pth):
    body = OpenPoseBody(body_pth)
    body.net = _PlantedNet(*_planted_maps(_PERSON, drop=(4,)))
    keypoints = body(example_person_3x4())  # 768 x 1024 photo: twice the working coordinates
    expected = 2 * _PERSON
    expected[4] = 0  # the dropped right wrist is reported missing
    np.testing.assert_allclose(keypoints, expected, atol=4.0)
    assert (keypoints[4] == 0).all()


@pytest.mark.parametrize("size", [(600, 768), (300, 400)])  # shrunk and widened; enlarged
def test_pose_on_real_photo_uses_demo_geometry(body_pth, size):
    body = OpenPoseBody(body_pth)
    body.net = _PlantedNet(*_planted_maps(_PERSON))
    seen = []
    body.net.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    photo = example_person_3x4().resize(size, Image.Resampling.BICUBIC)
    keypoints = body(photo)
    # Either photo -> 384 x 512 working image -> scale 0.5 * 368 / 512 -> 138 x 184, padded
    # right to 144 with grey 128, which the x / 256 - 0.5 normalisation makes exactly 0.
    assert [tuple(x.shape) for x in seen] == [(1, 3, 184, 144)]
    assert (seen[0][..., 138:] == 0).all() and seen[0][..., :138].abs().amax() > 0.1
    # The planted person comes back at its working-image places scaled to the photo, x and y
    # each by their own factor.
    factor = np.array([size[0] / 384, size[1] / 512])
    np.testing.assert_allclose(keypoints, factor * _PERSON, atol=2.0 * factor.max())
    np.testing.assert_array_equal(body(np.asarray(photo)), keypoints)  # arrays too
    # The network sees BGR: a red photo is blue and green -0.5, red 255 / 256 - 0.5.
    body(Image.new("RGB", size, (255, 0, 0)))
    torch.testing.assert_close(
        seen[-1][0, :, :, :138].amax(dim=(1, 2)), torch.tensor([-0.5, -0.5, 255 / 256 - 0.5])
    )
    torch.testing.assert_close(
        seen[-1][0, :, :, :138].amin(dim=(1, 2)), torch.tensor([-0.5, -0.5, 255 / 256 - 0.5])
    )


# --- peak finding ---------------------------------------------------------------------------


def _blob(h, w, x, y, amp, sigma=2.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def test_find_peaks_hand_values():
    h, w = 40, 50
    maps = np.zeros((h, w, 19))
    maps[:, :, 0] = _blob(h, w, 35, 30, 0.5) + _blob(h, w, 10, 12, 1.0)
    maps[:, :, 1] = _blob(h, w, 20, 20, 0.05)  # below the threshold after smoothing
    maps[:, :, 2] = _blob(h, w, 5, 7, 0.9)
    peaks = find_peaks(maps)
    assert len(peaks) == 18
    # Row-major order (y first), score = unsmoothed value, ids running across parts.
    np.testing.assert_allclose(peaks[0], [[10, 12, 1.0, 0], [35, 30, 0.5, 1]], atol=1e-4)
    assert peaks[1].shape == (0, 4)
    np.testing.assert_allclose(peaks[2], [[5, 7, 0.9, 2]], atol=1e-4)
    assert all(p.shape == (0, 4) for p in peaks[3:])
    assert len(find_peaks(maps, threshold=0.95)[0]) == 0  # the threshold is on the smoothed map


# --- PAF scoring ----------------------------------------------------------------------------

NECK, R_SHOULDER = 1, 2  # LIMBS[0] = (neck, right shoulder), PAF channels (12, 13)


def _peaks(parts: dict[int, list[tuple[float, float, float]]]) -> list[np.ndarray]:
    out, next_id = [], 0
    for part in range(18):
        rows = [[x, y, s, next_id + i] for i, (x, y, s) in enumerate(parts.get(part, []))]
        next_id += len(rows)
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 4))
    return out


def _field(h, w, fx, fy):
    pafs = np.zeros((h, w, 38))
    pafs[:, :, 12], pafs[:, :, 13] = fx, fy
    return pafs


def test_paf_along_the_limb_connects():
    peaks = _peaks({NECK: [(10, 20, 1.0)], R_SHOULDER: [(30, 20, 1.0)]})
    conns = connect_limbs(peaks, _field(100, 60, 1.0, 0.0), image_height=100)
    np.testing.assert_allclose(conns[0], [[0, 1, 1.0, 0, 0]])
    assert all(c is None for c in conns[1:])  # other limbs have no candidates
    # Length prior: 0.5 * 30 / 20 - 1 = -0.25 is added when the image is only 30 high.
    conns = connect_limbs(peaks, _field(100, 60, 1.0, 0.0), image_height=30)
    np.testing.assert_allclose(conns[0][:, 2], [0.75])


def test_paf_pointing_the_wrong_way_or_across_does_not_connect():
    peaks = _peaks({NECK: [(10, 20, 1.0)], R_SHOULDER: [(30, 20, 1.0)]})
    for fx, fy in ((-1.0, 0.0), (0.0, 1.0)):
        conns = connect_limbs(peaks, _field(100, 60, fx, fy), image_height=100)
        assert conns[0].shape == (0, 5)


def test_paf_needs_more_than_80_percent_of_samples():
    # Samples at x = 10, 12, 14, 17, 19, 21, 23, 26, 28, 30 (rounded linspace, half to even).
    peaks = _peaks({NECK: [(10, 20, 1.0)], R_SHOULDER: [(30, 20, 1.0)]})
    pafs = _field(100, 60, 0.0, 0.0)
    pafs[:, :24, 12] = 1.0  # 7 of 10 samples: mean 0.7 > 0 but rejected
    assert connect_limbs(peaks, pafs, 100)[0].shape == (0, 5)
    pafs[:, :29, 12] = 1.0  # 9 of 10 samples: accepted with score 0.9
    np.testing.assert_allclose(connect_limbs(peaks, pafs, 100)[0][:, 2], [0.9])


def test_greedy_matching_two_people():
    peaks = _peaks(
        {NECK: [(10, 20, 1.0), (10, 60, 1.0)], R_SHOULDER: [(30, 20, 1.0), (30, 60, 1.0)]}
    )
    # Field along +x: the horizontal pairs score 1.0, the diagonals 20 / sqrt(2000) = 0.447.
    conns = connect_limbs(peaks, _field(100, 60, 1.0, 0.0), image_height=100)
    np.testing.assert_allclose(conns[0], [[0, 2, 1.0, 0, 0], [1, 3, 1.0, 1, 1]])
    # Field along +y: only the downward diagonal (neck 0 -> shoulder 1) lines up: 40 / sqrt(2000).
    conns = connect_limbs(peaks, _field(100, 60, 0.0, 1.0), image_height=100)
    np.testing.assert_allclose(conns[0], [[0, 3, 40 / np.sqrt(2000), 0, 1]])


# --- assembly and selection -----------------------------------------------------------------


def _limb(part_a, part_b):
    return LIMBS.index((part_a, part_b))


def test_assemble_people_and_select_the_most_complete():
    # Person A: neck 0, right shoulder 1, left shoulder 2, nose 3. Person B: neck 4, r-shoulder 5.
    peaks = _peaks(
        {
            0: [(50, 10, 1.0)],
            1: [(50, 30, 1.0), (150, 30, 1.0)],
            2: [(30, 32, 1.0), (130, 32, 1.0)],
            5: [(70, 32, 1.0)],
        }
    )
    connections = [None] * len(LIMBS)
    connections[_limb(1, 2)] = np.array([[1, 3, 0.9, 0, 0], [2, 4, 0.9, 1, 1]])
    connections[_limb(1, 5)] = np.array([[1, 5, 0.8, 0, 0]])
    connections[_limb(1, 0)] = np.array([[1, 0, 0.7, 0, 0]])
    candidate, subset = assemble_people(peaks, connections)
    assert candidate.shape == (6, 4)
    # Person B has 2 parts (< 4) and is dropped; person A has 4 parts and score
    # (1 + 1 + 0.9) + (1 + 0.8) + (1 + 0.7) = 6.4.
    assert subset.shape == (1, 20)
    expected = -np.ones(18)
    expected[[0, 1, 2, 5]] = [0, 1, 3, 5]
    np.testing.assert_array_equal(subset[0, :18], expected)
    np.testing.assert_allclose(subset[0, 18:], [6.4, 4])
    keypoints = select_person(candidate, subset)
    np.testing.assert_array_equal(keypoints[[0, 1, 2, 5]], [[50, 10], [50, 30], [30, 32], [70, 32]])
    assert (keypoints[[3, 4] + list(range(6, 18))] == 0).all()
    assert (select_person(candidate, subset[:0]) == 0).all()


def test_select_person_prefers_more_parts_then_score():
    candidate = np.array([[1, 1, 1, 0], [2, 2, 1, 1], [3, 3, 1, 2], [4, 4, 1, 3]], dtype=np.float64)
    subset = -np.ones((3, 20))
    subset[0, [0, 1]], subset[0, 18:] = [0, 1], [9.0, 4]
    subset[1, [0, 1, 2]], subset[1, 18:] = [1, 2, 3], [3.0, 5]
    subset[2, [0, 1, 2]], subset[2, 18:] = [0, 1, 2], [4.0, 5]
    np.testing.assert_array_equal(select_person(candidate, subset)[:3], [[1, 1], [2, 2], [3, 3]])


def test_redundant_shoulder_ear_limb_never_starts_a_person():
    peaks = _peaks({2: [(10, 10, 1.0)], 16: [(12, 2, 1.0)]})
    connections = [None] * len(LIMBS)
    connections[_limb(2, 16)] = np.array([[0, 1, 0.9, 0, 0]])
    _, subset = assemble_people(peaks, connections)
    assert subset.shape == (0, 20)


# --- OpenPose JSON --------------------------------------------------------------------------


def test_load_body25_json_converts_to_18_points(tmp_path):
    points = [[10.0 * i, 10.0 * i + 1, 0.9] for i in range(25)]
    points[4] = [0.0, 0.0, 0.0]  # right wrist not detected
    points[7] = [70.0, 71.0, 0.03]  # left wrist, low confidence
    path = tmp_path / "00034_00_keypoints.json"
    flat = [v for p in points for v in p]
    path.write_text(
        json.dumps({"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": flat}]})
    )
    kp = load_openpose_json(path)
    assert kp.shape == (18, 2)
    np.testing.assert_array_equal(kp[8], [90, 91])  # COCO right hip = BODY_25 index 9
    np.testing.assert_array_equal(kp[17], [180, 181])  # left ear = BODY_25 index 18
    np.testing.assert_array_equal(kp[4], [0, 0])
    np.testing.assert_array_equal(kp[7], [70, 71])  # kept by default, as VITON-HD does
    np.testing.assert_array_equal(load_openpose_json(path, min_confidence=0.05)[7], [0, 0])


def test_json_round_trip_and_demo_format(tmp_path):
    kp = np.arange(36, dtype=np.float64).reshape(18, 2) * 3.5 + 1
    kp[10] = 0
    path = tmp_path / "pose.json"
    write_openpose_json(path, kp)
    data = json.loads(path.read_text())
    assert len(data["people"][0]["pose_keypoints_2d"]) == 54
    assert data["people"][0]["pose_keypoints_2d"][10 * 3 + 2] == 0.0  # missing -> confidence 0
    np.testing.assert_array_equal(load_openpose_json(path), kp)
    # The IDM-VTON demo writes {"pose_keypoints_2d": [[x, y], ...]} without "people".
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"pose_keypoints_2d": kp.tolist()}))
    np.testing.assert_array_equal(load_openpose_json(demo), kp)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"people": []}))
    assert (load_openpose_json(empty) == 0).all()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 40}]}))
    with pytest.raises(ValueError, match="18 or 25"):
        load_openpose_json(bad)
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        write_openpose_json(path, kp[:17])


# --- weight-file errors ---------------------------------------------------------------------


def test_missing_and_placeholder_weights(tmp_path):
    missing = tmp_path / "ckpts" / "body_pose_model.pth"
    with pytest.raises(PreprocessModelError) as err:
        OpenPoseBody(missing)
    assert str(missing) in str(err.value)
    assert "yisol/IDM-VTON" in str(err.value) and "openpose/ckpts/" in str(err.value)
    placeholder = tmp_path / "body_pose_model.pth"
    placeholder.write_bytes(b"put body_pose_model.pth here")  # the official repo's 28 bytes
    with pytest.raises(PreprocessModelError, match="28-byte placeholder"):
        OpenPoseBody(placeholder)


def test_corrupt_and_wrong_checkpoints(tmp_path, body_pth):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(
        b"PK\x03\x04" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    )
    with pytest.raises(PreprocessModelError, match="corrupt.pth is truncated or corrupt"):
        OpenPoseBody(corrupt)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(body_pth.read_bytes()[:20_000])
    with pytest.raises(PreprocessModelError, match="cut.pth is truncated or corrupt"):
        OpenPoseBody(cut)

    sd = make_body_state_dict()
    del sd["Mconv3_stage4_L2.weight"]
    path = tmp_path / "missing_key.pth"
    torch.save(sd, path)
    with pytest.raises(PreprocessModelError, match="Mconv3_stage4_L2.weight"):
        OpenPoseBody(path)

    sd = make_body_state_dict()
    sd["Mconv7_stage6_L2.weight"] = sd["Mconv7_stage6_L2.weight"][:18]
    sd["Mconv7_stage6_L2.bias"] = sd["Mconv7_stage6_L2.bias"][:18]
    torch.save(sd, path)
    with pytest.raises(PreprocessModelError, match="outputs 18 channels, not 19"):
        OpenPoseBody(path)

    sd = make_body_state_dict()
    sd["hand.conv1_1.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(PreprocessModelError, match="unexpected"):
        OpenPoseBody(path)
