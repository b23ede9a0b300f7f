"""Inputs of the RT-DETRv2, D-FINE and DEIM golden files that the tests rebuild.

The scripts in ``tools/golden/`` (``make_dfine_fdr_golden.py``, ``make_deim_golden.py``,
``make_dfine_golden.py``, ``make_rtdetrv2_golden.py``) hand these inputs to the official code; the
tests hand the same ones to ours. Nothing here needs the official code or ``dfine``. Every builder
takes a ``dtype``: the goldens of the numeric comparisons are made in float64.
"""
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parent

WEIGHTING_CASES = [(32, 0.5, 4.0), (32, 0.5, 8.0), (16, 0.5, 4.0)]
EDGE_OFFSETS = [-5.0, -4.0, -1.9, 0.0, 0.3, 2.0, 3.99, 4.0, 5.0]


def _uniform(rng, low, high, shape):
    return (low + (high - low) * rng.random(shape)).astype(np.float32)


def _boxes_around(rng, ref, low, high):
    """xyxy boxes whose edges lie ``u * size`` from the centre of ``ref`` (cxcywh), ``u`` in [low, high]."""
    u = _uniform(rng, low, high, ref.shape)
    cx, cy, w, h = ref.T
    return np.stack([cx - u[:, 0] * w, cy - u[:, 1] * h, cx + u[:, 2] * w, cy + u[:, 3] * h], 1).astype(np.float32)


def _ref_boxes(rng, shape):
    return np.concatenate([_uniform(rng, 0.3, 0.7, shape + (2,)), _uniform(rng, 0.1, 0.4, shape + (2,))], -1)


def fdr_inputs():
    """All inputs, NumPy float32 / int64 arrays and Python numbers (shared with the test)."""
    rng = np.random.default_rng(1)
    integral_logits = _uniform(rng, -4, 4, (2, 5, 132))
    rng = np.random.default_rng(2)
    d2b_points = _ref_boxes(rng, (2, 3))
    d2b_distance = _uniform(rng, -8, 8, (2, 3, 4))
    rng = np.random.default_rng(3)
    b2d_points = _ref_boxes(rng, (16,))
    b2d_boxes = _boxes_around(rng, b2d_points, -0.7, 1.7)
    edge_boxes = np.array([[-(v + 2), -(v + 2), v + 2, v + 2] for v in EDGE_OFFSETS], np.float32)
    rng = np.random.default_rng(4)
    udfl_logits = _uniform(rng, -3, 3, (64, 33))
    udfl_weight = _uniform(rng, 0, 1, (64,))

    rng = np.random.default_rng(5)
    b, q, q_dn, c = 2, 6, 4, 3
    local = {
        "ref_points": _ref_boxes(rng, (b, q)),
        "aux_corners": _uniform(rng, -3, 3, (b, q, 132)),
        "final_corners": _uniform(rng, -3, 3, (b, q, 132)),
        "final_logits": _uniform(rng, -4, 4, (b, q, c)),
        "gt_boxes_0": _ref_boxes(rng, (2,)),
        "gt_boxes_1": _ref_boxes(rng, (3,)),
        "gt_labels_0": np.array([0, 2], np.int64),
        "gt_labels_1": np.array([1, 1, 0], np.int64),
        "query_idx_0": np.array([1, 4], np.int64),
        "gt_idx_0": np.array([0, 1], np.int64),
        "query_idx_1": np.array([0, 2, 5], np.int64),
        "gt_idx_1": np.array([2, 0, 1], np.int64),
        "dn_ref_points": _ref_boxes(rng, (b, q_dn)),
        "dn_corners": _uniform(rng, -3, 3, (b, q_dn, 132)),
        "dn_final_corners": _uniform(rng, -3, 3, (b, q_dn, 132)),
        "dn_final_logits": _uniform(rng, -4, 4, (b, q_dn, c)),
        "dn_query_idx_0": np.array([0, 2], np.int64),
        "dn_gt_idx_0": np.array([0, 1], np.int64),
        "dn_query_idx_1": np.array([1, 3], np.int64),
        "dn_gt_idx_1": np.array([2, 0], np.int64),
    }
    # Predicted boxes near the reference boxes, so that matched IoUs spread over (0, 1).
    for prefix, ref in (("aux", local["ref_points"]), ("final", local["ref_points"]), ("dn", local["dn_ref_points"])):
        jitter = _uniform(rng, -0.3, 0.3, ref.shape)
        local[prefix + "_boxes"] = (ref * (1 + jitter)).astype(np.float32)
    local["dn_final_boxes"] = local["dn_boxes"]

    union = {
        "indices": [[[0, 1], [0, 1]], [[3, 0], [1, 0]]],  # per image (queries, gts)
        "indices_aux": [
            [[[0, 2], [0, 1]], [[3], [0]]],
            [[[3, 2], [0, 1]], [[1], [1]]],
            [[[0, 2], [1, 1]], [[0, 5], [2, 1]]],
        ],
    }
    return {
        "integral_logits": integral_logits,
        "d2b_points": d2b_points,
        "d2b_distance": d2b_distance,
        "b2d_points": b2d_points,
        "b2d_boxes": b2d_boxes,
        "edge_boxes": edge_boxes,
        "udfl_logits": udfl_logits,
        "udfl_weight": udfl_weight,
        "local": local,
        "union": union,
    }


MOSAIC_SIZES = [(40, 60), (50, 30), (64, 64), (30, 45)]  # (h, w) of the four images
MOSAIC_AFFINE = {"angle": 7.5, "translate": (3, -2), "scale": 1.2, "shear": (0.0, 0.0)}


def mosaic_inputs():
    """Four uint8 RGB images and their XYXY boxes / labels (shared with the test)."""
    images, boxes, labels = [], [], []
    for i, (h, w) in enumerate(MOSAIC_SIZES):
        rng = np.random.default_rng(100 + i)
        images.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        x0, y0 = rng.uniform(0, w / 2, 2), rng.uniform(0, h / 2, 2)
        b = np.stack([x0, y0, x0 + rng.uniform(2, w / 2, 2), y0 + rng.uniform(2, h / 2, 2)], 1)
        boxes.append(b.astype(np.float32))
        labels.append(rng.integers(0, 5, size=2).astype(np.int64))
    return images, boxes, labels


def mixup_inputs():
    """Three 2x8x6 uint8 images, with normalised cxcywh boxes and labels (shared with the test)."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, 2, 8, 6), dtype=np.uint8)
    counts = [2, 1, 3]
    boxes = [rng.uniform(0.2, 0.6, size=(n, 4)).astype(np.float32) for n in counts]
    labels = [rng.integers(0, 5, size=n).astype(np.int64) for n in counts]
    return images, boxes, labels


def criterion_case():
    """``(outputs, targets)`` of ``rtdetrv2_criterion.npz`` without its denoising outputs: final, two
    auxiliary and one encoder output (shared with the test)."""
    arrays = np.load(GOLDEN_DIR / "rtdetrv2_criterion.npz")

    def head(prefix):
        return {k: torch.from_numpy(arrays[prefix + k]) for k in ("pred_logits", "pred_boxes")}

    outputs = head("")
    outputs["aux_outputs"] = [head("aux_0_"), head("aux_1_")]
    outputs["enc_aux_outputs"] = [head("enc_0_")]
    targets = [{"labels": torch.from_numpy(arrays[f"target_{b}_labels"]),
                "boxes": torch.from_numpy(arrays[f"target_{b}_boxes"])} for b in range(2)]
    return outputs, targets


def encoder_features(in_channels, feat_strides, size=64, dtype=torch.float32):
    """The synthetic backbone maps of the encoder golden values: standard normal, drawn as float32,
    returned in ``dtype``."""
    rng = np.random.default_rng(7)
    return [torch.from_numpy(rng.standard_normal((1, c, size // s, size // s)).astype(np.float32)).to(dtype)
            for c, s in zip(in_channels, feat_strides)]


def train_targets(dtype=torch.float64):
    """The ground truth of the training-loss goldens: ``synth_targets([3, 5], 80, seed=3)`` with every
    box shrunk to the corners on a 1/256 grid inside it. On that grid the boxes survive, bit for bit,
    the path of a Detectron2 model: normalised cxcywh -> absolute xyxy pixels of a 640 x 640 image in
    ``Boxes`` (which hold float32) -> normalised cxcywh in the model's dtype; so the official model and
    ours see the very same float64 targets. Returns one {"labels", "boxes" (cxcywh, ``dtype``)} per image."""
    from golden.synth import synth_targets

    out = []
    for target in synth_targets([3, 5], 80, seed=3):
        cx, cy, w, h = target["boxes"].double().unbind(-1)
        low = torch.stack([cx - w / 2, cy - h / 2], -1).mul(256).ceil()
        high = torch.stack([cx + w / 2, cy + h / 2], -1).mul(256).floor()
        boxes = torch.cat([(low + high) / 512, (high - low) / 256], -1)
        out.append({"labels": target["labels"], "boxes": boxes.to(dtype)})
    return out
