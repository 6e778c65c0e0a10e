"""Small preprocessing-model files in the real formats (human parsing, OpenPose, DensePose).

- SCHP human parsers: ONNX graphs with the exports' signature (:func:`make_random_schp`,
  :func:`make_constant_schp` for a graph whose output is given);
- OpenPose: a scaled-down ``body_pose_model.pth`` with the CMU layer names
  (:func:`make_body_state_dict`);
- DensePose: a scaled-down detectron2 checkpoint with the real key names
  (:func:`tiny_densepose_state`, written with :func:`write_pickle`);
- all of them in the demo's ``ckpt/`` layout (:func:`make_preprocess_models`, the parsers alone
  with :func:`make_random_parsers`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from idm_vton.loaders.hub import MODEL_FILES
from idm_vton.preprocess.parsing import ATR_INPUT_SIZE, LIP_INPUT_SIZE

# ------------------------------------------------------------------------------ human parsing


def quarter(size: tuple[int, int]) -> tuple[int, int]:
    """Output size of the SCHP graphs: a quarter of the input, rounded up."""
    return -(-size[0] // 4), -(-size[1] // 4)


def save_schp_graph(path: Path, input_size, num_labels: int, nodes, initializers) -> Path:
    """Write an ONNX graph with the SCHP exports' input and three outputs around ``nodes``."""
    h, w = input_size
    oh, ow = quarter(input_size)
    graph = helper.make_graph(
        nodes,
        "schp",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, h, w])],
        [
            helper.make_tensor_value_info("parsing", TensorProto.FLOAT, [1, num_labels, oh, ow]),
            helper.make_tensor_value_info("fusion", TensorProto.FLOAT, [1, num_labels, oh, ow]),
            helper.make_tensor_value_info("edge", TensorProto.FLOAT, [1, 2, oh, ow]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_random_schp(path: Path, input_size, num_labels: int, seed: int) -> Path:
    """Quarter-resolution average pool followed by random 3x3 convolutions."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    inits = [
        weight("w_parse", num_labels, 3, 3, 3),
        weight("w_fuse", num_labels, 3, 3, 3),
        weight("b_fuse", num_labels),
        weight("w_edge", 2, 3, 3, 3),
    ]
    pool = dict(kernel_shape=[4, 4], strides=[4, 4], ceil_mode=1)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], **pool),
        helper.make_node("Conv", ["pooled", "w_parse"], ["parsing"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["pooled", "w_fuse", "b_fuse"], ["fusion"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["pooled", "w_edge"], ["edge"], pads=[1, 1, 1, 1]),
    ]
    return save_schp_graph(path, input_size, num_labels, nodes, inits)


def make_constant_schp(path: Path, input_size, fused_logits: np.ndarray) -> Path:
    """A graph whose fused output is ``fused_logits`` whatever the image (input * 0 + const)."""
    num_labels = fused_logits.shape[0]
    inits = [
        numpy_helper.from_array(fused_logits[None].astype(np.float32), "const"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.zeros((1, 2, 1, 1), np.float32), "edge_const"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "const"], ["parsing"]),
        helper.make_node("Add", ["nothing", "const"], ["fusion"]),
        helper.make_node("Add", ["nothing", "edge_const"], ["edge"]),
    ]
    return save_schp_graph(path, input_size, num_labels, nodes, inits)


# ------------------------------------------------------------------------------ OpenPose


def body_layer_shapes(width: int = 8, mid: int = 16) -> dict[str, tuple[int, int, int, int]]:
    """Conv shapes (out, in, k, k) of the CMU body model with narrow hidden layers.

    The real model has widths 64-512; only the 38 PAF and 19 heatmap outputs are kept here.
    """
    shapes = {}
    prev = 3
    for name in [
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM",
    ]:  # fmt: skip
        shapes[name] = (width, prev, 3, 3)
        prev = width
    for branch, out in (("L1", 38), ("L2", 19)):
        for i in (1, 2, 3):
            shapes[f"conv5_{i}_CPM_{branch}"] = (width, width, 3, 3)
        shapes[f"conv5_4_CPM_{branch}"] = (mid, width, 1, 1)
        shapes[f"conv5_5_CPM_{branch}"] = (out, mid, 1, 1)
        for stage in range(2, 7):
            shapes[f"Mconv1_stage{stage}_{branch}"] = (width, 38 + 19 + width, 7, 7)
            for i in (2, 3, 4, 5):
                shapes[f"Mconv{i}_stage{stage}_{branch}"] = (width, width, 7, 7)
            shapes[f"Mconv6_stage{stage}_{branch}"] = (width, width, 1, 1)
            shapes[f"Mconv7_stage{stage}_{branch}"] = (out, width, 1, 1)
    return shapes


def make_body_state_dict(seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    """A He-initialised ``body_pose_model.pth`` state dict of :func:`body_layer_shapes`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in body_layer_shapes(**kw).items():
        fan_in = shape[1] * shape[2] * shape[3]
        sd[f"{name}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return sd


# ------------------------------------------------------------------------------ DensePose


def write_pickle(path: Path, payload: object, protocol: int = 2) -> Path:
    """``payload`` pickled to ``path`` (detectron2 writes its ``.pkl`` files with protocol 2)."""
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


TINY_SIZES = {
    "stem": 8,
    "stages": {2: (4, 16, 1), 3: (8, 24, 2), 4: (8, 32, 1), 5: (16, 48, 1)},
    "fpn": 16,
    "fc": 32,
    "decoder": (12, 16),
    "head": (2, 20),
}
# The shapes of model_final_162be9.pkl (R50: 3, 4, 6, 3 bottlenecks; 8 x 512 DensePose convs).
REAL_SIZES = {
    "stem": 64,
    "stages": {2: (64, 256, 3), 3: (128, 512, 4), 4: (256, 1024, 6), 5: (512, 2048, 3)},
    "fpn": 256,
    "fc": 1024,
    "decoder": (256, 256),
    "head": (8, 512),
}


def tiny_densepose_state(
    seed: int = 0, decoder: bool = True, person_logit: float = 6.0, sizes=None
) -> dict[str, np.ndarray]:
    """Random weights with the real key names and small shapes (numpy, as in the .pkl).

    RPN and box deltas are zero, so every detection is an anchor clipped to the image; the
    classifier has zero weights, so every box scores softmax(person_logit, 0): ~0.998 by
    default, ~0.002 with ``person_logit=-6``.
    """
    sizes = sizes or TINY_SIZES
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv(name, out_ch, in_ch, k, bias=True, std=None):
        std = (2.0 / (in_ch * k * k)) ** 0.5 if std is None else std
        weight = rng.standard_normal((out_ch, in_ch, k, k), dtype=np.float32) * np.float32(std)
        state[name + ".weight"] = weight
        if bias:
            state[name + ".bias"] = np.zeros(out_ch, np.float32)

    def conv_bn(name, out_ch, in_ch, k, std=None):
        conv(name, out_ch, in_ch, k, bias=False, std=std)
        state[name + ".norm.weight"] = np.ones(out_ch, np.float32)
        state[name + ".norm.bias"] = (rng.standard_normal(out_ch) * 0.1).astype(np.float32)
        state[name + ".norm.running_mean"] = np.zeros(out_ch, np.float32)
        state[name + ".norm.running_var"] = np.ones(out_ch, np.float32)

    def linear(name, out_features, in_features, std):
        weight = rng.standard_normal((out_features, in_features), dtype=np.float32)
        state[name + ".weight"] = weight * np.float32(std)
        state[name + ".bias"] = np.zeros(out_features, np.float32)

    bottom_up, fpn, fc = "backbone.bottom_up.", sizes["fpn"], sizes["fc"]
    conv_bn(bottom_up + "stem.conv1", sizes["stem"], 3, 7, std=0.01)
    in_ch = sizes["stem"]
    for level, (width, out_ch, blocks) in sizes["stages"].items():
        for index in range(blocks):
            block = f"{bottom_up}res{level}.{index}."
            if index == 0:
                conv_bn(block + "shortcut", out_ch, in_ch, 1)
            conv_bn(block + "conv1", width, in_ch if index == 0 else out_ch, 1)
            conv_bn(block + "conv2", width, width, 3)
            conv_bn(block + "conv3", out_ch, width, 1)
            in_ch = out_ch
        conv(f"backbone.fpn_lateral{level}", fpn, out_ch, 1)
        conv(f"backbone.fpn_output{level}", fpn, fpn, 3)
    conv("proposal_generator.rpn_head.conv", fpn, fpn, 3)
    conv("proposal_generator.rpn_head.objectness_logits", 3, fpn, 1)
    conv("proposal_generator.rpn_head.anchor_deltas", 12, fpn, 1, std=0.0)
    linear("roi_heads.box_head.fc1", fc, fpn * 49, (1.0 / (fpn * 49)) ** 0.5)
    linear("roi_heads.box_head.fc2", fc, fc, (1.0 / fc) ** 0.5)
    linear("roi_heads.box_predictor.cls_score", 2, fc, 0.0)  # score = softmax(bias)
    state["roi_heads.box_predictor.cls_score.bias"][0] = person_logit
    linear("roi_heads.box_predictor.bbox_pred", 4, fc, 0.0)
    dp_in = fpn
    if decoder:
        dims, dp_in = sizes["decoder"]
        for level, convs in {2: 1, 3: 1, 4: 2, 5: 3}.items():
            for index in range(convs):
                # Sequential indices: conv, upsample, conv, ... (no upsample at stride 4).
                position = index if level == 2 else 2 * index
                conv(f"roi_heads.decoder.p{level}.{position}", dims, fpn if index == 0 else dims, 3)
        conv("roi_heads.decoder.predictor", dp_in, dims, 1)
    head_convs, head_dim = sizes["head"]
    for index in range(head_convs):
        conv(f"roi_heads.densepose_head.body_conv_fcn{index + 1}", head_dim, dp_in, 3)
        dp_in = head_dim
    for name, out_ch in {
        "ann_index_lowres": 2,
        "index_uv_lowres": 25,
        "u_lowres": 25,
        "v_lowres": 25,
    }.items():
        key = f"roi_heads.densepose_predictor.{name}"
        weight = rng.standard_normal((head_dim, out_ch, 4, 4), dtype=np.float32)
        state[key + ".weight"] = weight * np.float32((2.0 / (head_dim * 4)) ** 0.5)
        state[key + ".bias"] = np.zeros(out_ch, np.float32)
    state["roi_heads.densepose_predictor.ann_index_lowres.bias"][1] = 1.0
    return state


# ------------------------------------------------------------------------------ the ckpt/ folder


def make_random_parsers(root: Path) -> Path:
    """The two random SCHP parsers (ATR, 18 labels; LIP, 20 labels) under ``root`` in the demo's
    layout (``humanparsing/parsing_atr.onnx``, ``humanparsing/parsing_lip.onnx``)."""
    (root / MODEL_FILES["parsing_atr"]).parent.mkdir(parents=True, exist_ok=True)
    make_random_schp(root / MODEL_FILES["parsing_atr"], ATR_INPUT_SIZE, 18, seed=1)
    make_random_schp(root / MODEL_FILES["parsing_lip"], LIP_INPUT_SIZE, 20, seed=2)
    return root


def make_preprocess_models(root: Path) -> Path:
    """Random-weight parsing, OpenPose and DensePose files in the real formats and the demo's
    ``ckpt/`` layout (:data:`idm_vton.loaders.hub.MODEL_FILES`); returns ``root``."""
    for key in MODEL_FILES.values():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
    make_random_parsers(root)
    torch.save(make_body_state_dict(), root / MODEL_FILES["openpose"])
    write_pickle(
        root / MODEL_FILES["densepose"], {"model": tiny_densepose_state(), "__author__": "test"}
    )
    return root
