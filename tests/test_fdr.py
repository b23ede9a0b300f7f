"""D-FINE's Fine-grained Distribution Refinement (the geometry in ``dfine/modeling/decoder/fdr.py``, the
FGL/DDF losses in ``dfine/modeling/criterion/losses.py``, the union set in
``dfine/modeling/criterion/matcher.py``) against the official D-FINE code (Peterande/D-FINE; commit and
torch version in the JSON).

Every expected number comes from ``tests/golden/dfine_fdr_golden.json``, which
``tools/golden/make_dfine_fdr_golden.py`` wrote by running the official functions IN FLOAT64 (its
docstring says how to rerun, describes every field, and says how the official ``translate_gt``, which
casts to float32, was made to follow its input's dtype). The inputs are rebuilt here by
``golden.dfine_inputs.fdr_inputs``, which needs neither the official code nor ``dfine``;
``test_inputs_are_the_ones_the_official_code_saw`` checks them bit for bit. They are drawn as
float32 and compared in float64 (exact conversion), with ``up`` / ``reg_scale`` float64 as well.

Tolerance: ``TIGHT`` (rtol 1e-12, atol 1e-14). Ours and the official functions differ only by the
order of a few float64 operations: the largest relative difference measured, natively on AVX-512,
with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 and with ATEN_CPU_CAPABILITY=default, is 3.1e-15
(the integral; a few ulp), so the margin is above 300; a real change is far larger.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine.modeling.criterion.losses import ddf_balance_weights, fgl_and_ddf_losses, unimodal_distribution_focal_loss
from dfine.modeling.criterion.matcher import union_matched_indices
from dfine.modeling.decoder.fdr import bbox2distance, distance2bbox, integral, weighting_function
from dfine.modeling.layers.box_ops import box_xyxy_to_cxcywh
from golden.dfine_inputs import EDGE_OFFSETS, WEIGHTING_CASES, fdr_inputs
from golden.synth import fingerprint

GOLDEN = json.loads((Path(__file__).parent / "golden" / "dfine_fdr_golden.json").read_text())
INPUTS = fdr_inputs()
DTYPE = torch.float64
# The official decoder keeps up / reg_scale as frozen one-element parameters.
UP, SCALE4, SCALE8 = (torch.tensor([v], dtype=DTYPE) for v in (0.5, 4.0, 8.0))
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def t(array):
    """A float32 input array as a float64 tensor (exact), as the golden script hands it over."""
    return torch.from_numpy(array).to(DTYPE)


def tensor(values):
    return torch.tensor(values, dtype=DTYPE)


def close(actual, expected, **tolerance):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), **(tolerance or TIGHT))


def test_inputs_are_the_ones_the_official_code_saw():
    assert fingerprint({k: v for k, v in INPUTS.items() if k != "union"}) == GOLDEN["inputs_crc32"]


@pytest.mark.parametrize("case", range(len(WEIGHTING_CASES)))
def test_weighting_function_matches_official(case):
    """Official ``weighting_function`` in training mode and in ``deploy=True`` mode (the same values,
    computed another way), float64."""
    golden = GOLDEN["weighting"][case]
    reg_max, up, reg_scale = WEIGHTING_CASES[case]
    assert (golden["reg_max"], golden["up"], golden["reg_scale"]) == (reg_max, up, reg_scale)
    ours = weighting_function(reg_max, tensor([up]), tensor([reg_scale]))
    assert ours.shape == (reg_max + 1,) and ours.dtype == torch.float64
    close(ours, golden["train"])
    close(ours, golden["deploy"])
    # The dtype follows ``up``: float32 for a float32 tensor (and for Python numbers).
    as_float = weighting_function(reg_max, torch.tensor([up]), reg_scale)
    assert as_float.dtype == weighting_function(reg_max, up, reg_scale).dtype == torch.float32
    close(as_float, golden["train"], rtol=1e-6, atol=1e-6)


def test_weighting_function_shape_rules():
    w = weighting_function(32, 0.5, 4.0)
    assert w[16] == 0 and torch.all(w[1:] > w[:-1])
    close(w, -w.flip(0), rtol=0, atol=0)
    assert w[0] == -4 and w[32] == 4  # the end bins sit at 2 * up * reg_scale
    with pytest.raises(ValueError, match="even"):
        weighting_function(31, 0.5, 4.0)


def test_integral_matches_official():
    """Official ``Integral(32)(logits [2, 5, 132], W(32, 0.5, 4))``."""
    project = weighting_function(32, UP, SCALE4)
    ours = integral(t(INPUTS["integral_logits"]), project)
    assert ours.shape == (2, 5, 4)
    close(ours, GOLDEN["integral"])


def test_distance2bbox_matches_official():
    """Official ``distance2bbox``: the reference notes' example (s = 4) and random boxes (s = 8)."""
    golden = GOLDEN["distance2bbox"]
    ref = tensor([[0.5, 0.5, 0.2, 0.4]])
    close(distance2bbox(ref, torch.zeros(1, 4, dtype=DTYPE), SCALE4), golden["fixed_zero"])
    close(distance2bbox(ref, tensor([[1.0, -1.0, 2.0, 0.5]]), SCALE4), golden["fixed"])
    close(golden["fixed"], [[0.525, 0.575, 0.35, 0.35]])  # the reference notes' numbers
    points, distance = t(INPUTS["d2b_points"]), t(INPUTS["d2b_distance"])
    close(distance2bbox(points, distance, SCALE8), golden["random"])
    close(distance2bbox(points, distance, -8.0), golden["random"])  # only |reg_scale| counts


@pytest.mark.parametrize("case", ["reference", "edges", "random_s4", "random_s8"])
def test_bbox2distance_matches_official(case):
    """Official ``bbox2distance`` (with ``translate_gt``): target bins and the two interpolation weights.

    ``edges`` puts every edge exactly ``EDGE_OFFSETS`` from a unit-edge reference box: below ``W(0)``
    (bin 0, left weight 1), on ``W(0)``, ``W(16) = 0`` and ``W(32)``, and above ``W(32)`` (target
    31.9, right weight 1)."""
    scale = SCALE8 if case == "random_s8" else SCALE4
    if case == "reference":
        points, boxes = tensor([[0.5, 0.5, 0.2, 0.4]]), tensor([[0.35, 0.25, 0.62, 0.71]])
    elif case == "edges":
        points = tensor([[0.0, 0.0, 4.0, 4.0]]).expand(len(EDGE_OFFSETS), 4)
        boxes = t(INPUTS["edge_boxes"])
    else:
        points, boxes = t(INPUTS["b2d_points"]), t(INPUTS["b2d_boxes"])
    target, weight_right, weight_left = bbox2distance(points, boxes, 32, scale, UP)
    assert target.dtype == weight_right.dtype == weight_left.dtype == DTYPE
    golden_target, golden_right, golden_left = GOLDEN["bbox2distance"][case]
    assert target.shape == weight_right.shape == weight_left.shape == (4 * len(points),)
    close(target, golden_target)
    close(weight_right, golden_right)
    close(weight_left, golden_left)
    if case == "reference":  # the reference notes' numbers, worked out from float32 inputs
        close(golden_target, [25, 21, 20, 17], rtol=0, atol=0)
        close(golden_right, [0.454850, 0.526941, 0.585205, 0.293651], rtol=0, atol=1e-5)
    if case == "edges":
        per_offset = np.asarray(golden_target)[::4]
        close(per_offset, [0, 0, 1, 16, 19, 31, 31, 31.9, 31.9], rtol=0, atol=1e-6)
    if case.startswith("random"):  # the random pairs do reach past both end bins
        assert (np.asarray(golden_target) == 0).sum() > 4 and (np.asarray(golden_target) > 31.8).sum() > 4


def test_round_trip_through_the_two_bin_targets():
    """Offsets rebuilt from ``bbox2distance``'s targets, decoded by ``distance2bbox``: the official
    values, and the ground truth itself for the boxes whose four edges are inside ``[W(0), W(32)]``."""
    points, boxes = t(INPUTS["b2d_points"]), t(INPUTS["b2d_boxes"])
    project = weighting_function(32, UP, SCALE4)
    target, weight_right, weight_left = bbox2distance(points, boxes, 32, SCALE4, UP)
    left = target.long()
    offsets = (project[left] * weight_left + project[left + 1] * weight_right).reshape(-1, 4)
    decoded = distance2bbox(points, offsets, SCALE4)
    close(decoded, GOLDEN["round_trip"])
    inside = ((target > 0) & (target < 31.8)).reshape(-1, 4).all(1)
    assert inside.sum() >= 3
    close(decoded[inside], box_xyxy_to_cxcywh(boxes)[inside], rtol=0, atol=1e-14)


def test_unimodal_distribution_focal_loss_matches_official():
    """Official ``DFINECriterion.unimodal_distribution_focal_loss`` on random logits [64, 33] and the
    targets of the random reg_scale-4 pairs, for each reduction."""
    golden = GOLDEN["udfl"]
    logits, row_weight = t(INPUTS["udfl_logits"]), t(INPUTS["udfl_weight"])
    target, right, left = bbox2distance(t(INPUTS["b2d_points"]), t(INPUTS["b2d_boxes"]), 32, SCALE4, UP)

    def loss(*weight, **kwargs):
        return unimodal_distribution_focal_loss(logits, target, right, left, *weight, **kwargs)

    close(loss(), golden["sum"])
    close(loss(row_weight, reduction="mean"), golden["mean_weighted"])
    close(loss(row_weight, avg_factor=5.0), golden["avg_factor_weighted"])
    close(loss(row_weight, reduction="none"), golden["none_weighted"])
    with pytest.raises(ValueError, match="reduction"):
        loss(reduction="max")


def _local_case(prefix_corners, prefix_boxes, teacher, dn=False):
    """Arguments of ``fgl_and_ddf_losses`` for one output of the golden ``local`` case."""
    a = {k: t(v) if v.dtype.kind == "f" else torch.from_numpy(v) for k, v in INPUTS["local"].items()}
    key = "dn_" if dn else ""
    batch_idx = torch.cat([torch.full_like(a[f"{key}query_idx_{i}"], i) for i in range(2)])
    query_idx = torch.cat([a[f"{key}query_idx_{i}"] for i in range(2)])
    target_boxes = torch.cat([a[f"gt_boxes_{i}"][a[f"{key}gt_idx_{i}"]] for i in range(2)])
    kwargs = dict(
        pred_corners=a[prefix_corners].clone().requires_grad_(True),
        pred_boxes=a[prefix_boxes],
        ref_points=a[key + "ref_points"],
        batch_idx=batch_idx,
        query_idx=query_idx,
        target_boxes=target_boxes,
        num_boxes=GOLDEN["local"]["dn_num_boxes" if dn else "num_boxes"],
        reg_scale=SCALE4,
        up=UP,
    )
    if teacher:
        final = "dn_final" if dn else "final"
        kwargs.update(teacher_corners=a[final + "_corners"], teacher_logits=a[final + "_logits"])
    return kwargs


def test_fgl_and_ddf_match_official_loss_local():
    """Official ``DFINECriterion.loss_local`` (T = 5) called in the order of one criterion call: final
    layer (no teacher), an auxiliary layer (teacher = final), a denoising layer and the last denoising
    layer (its own teacher). The denoising layers use the auxiliary layer's ``num_pos``/``num_neg``."""
    golden = GOLDEN["local"]
    final = fgl_and_ddf_losses(**_local_case("final_corners", "final_boxes", teacher=False))
    assert set(final) == {"loss_fgl"}
    close(final["loss_fgl"], golden["final"]["loss_fgl"])

    aux_args = _local_case("aux_corners", "aux_boxes", teacher=True)
    aux = fgl_and_ddf_losses(**aux_args)
    close(aux["loss_fgl"], golden["aux"]["loss_fgl"])
    close(aux["loss_ddf"], golden["aux"]["loss_ddf"])

    weights = ddf_balance_weights(aux_args["batch_idx"], aux_args["query_idx"], 2, 6)
    close(torch.stack(weights), [golden["num_pos"], golden["num_neg"]])
    dn_args = _local_case("dn_corners", "dn_boxes", teacher=True, dn=True)
    dn = fgl_and_ddf_losses(**dn_args, ddf_weights=weights)
    close(dn["loss_fgl"], golden["dn"]["loss_fgl"])
    close(dn["loss_ddf"], golden["dn"]["loss_ddf"])
    # The reuse matters: the denoising matching's own weights give another number.
    own = fgl_and_ddf_losses(**dn_args)["loss_ddf"].item()
    assert abs(own - golden["dn"]["loss_ddf"]) > 1e-3

    dn_final_args = _local_case("dn_final_corners", "dn_final_boxes", teacher=True, dn=True)
    dn_final = fgl_and_ddf_losses(**dn_final_args, ddf_weights=weights)
    close(dn_final["loss_fgl"], golden["dn_final"]["loss_fgl"])
    assert dn_final["loss_ddf"].item() == golden["dn_final"]["loss_ddf"] == 0
    dn_final["loss_ddf"].backward()  # an exact zero that still belongs to the graph
    assert torch.all(dn_final_args["pred_corners"].grad == 0)


def test_fgl_and_ddf_gradients_reach_only_the_corners():
    args = _local_case("aux_corners", "aux_boxes", teacher=True)
    args["pred_boxes"] = args["pred_boxes"].clone().requires_grad_(True)
    args["teacher_corners"] = args["teacher_corners"].clone().requires_grad_(True)
    args["teacher_logits"] = args["teacher_logits"].clone().requires_grad_(True)
    losses = fgl_and_ddf_losses(**args)
    sum(losses.values()).backward()
    assert args["pred_corners"].grad.abs().sum() > 0
    assert args["pred_boxes"].grad is None and args["teacher_corners"].grad is None
    assert args["teacher_logits"].grad is None


def test_fgl_and_ddf_without_matches_are_finite():
    args = _local_case("aux_corners", "aux_boxes", teacher=True)
    empty = torch.zeros(0, dtype=torch.int64)
    args.update(batch_idx=empty, query_idx=empty, target_boxes=torch.zeros(0, 4, dtype=DTYPE), num_boxes=1.0)
    losses = fgl_and_ddf_losses(**args)
    assert losses["loss_fgl"].item() == 0
    # Only the unmatched part is left, so the weights cancel: the mean over every edge.
    assert torch.isfinite(losses["loss_ddf"]) and losses["loss_ddf"].item() > 0


def test_union_matched_indices_matches_official():
    """Official ``_get_go_indices``: image 0 is the reference notes' example, image 1 has only ties
    (every pair once), which come out in ascending (query, gt) order."""
    union = INPUTS["union"]

    def pairs(per_image):
        return [(torch.tensor(q, dtype=torch.int64), torch.tensor(g, dtype=torch.int64)) for q, g in per_image]

    ours = union_matched_indices(pairs(union["indices"]), [pairs(aux) for aux in union["indices_aux"]])
    assert [[q.tolist(), g.tolist()] for q, g in ours] == GOLDEN["union"]
    assert GOLDEN["union"][0] == [[2, 0, 1, 3], [1, 0, 1, 0]]  # the reference notes' numbers
    assert all(q.dtype == g.dtype == torch.int64 for q, g in ours)


def test_union_matched_indices_of_an_image_without_ground_truth():
    none = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    one = (torch.tensor([7]), torch.tensor([0]))
    ours = union_matched_indices([none, one], [[none, one], [none, (torch.tensor([3]), torch.tensor([0]))]])
    assert ours[0][0].numel() == 0 and ours[0][1].numel() == 0
    assert ours[1][0].tolist() == [7, 3] and ours[1][1].tolist() == [0, 0]
