"""Write ``tests/golden/dfine_fdr_golden.json``: D-FINE's FDR functions and FGL / DDF losses, computed
by the official D-FINE implementation (Peterande/D-FINE, ``src/zoo/dfine/dfine_utils.py``,
``dfine_decoder.Integral``, ``dfine_criterion.DFINECriterion``).

The official code is imported from a clone outside this repository; nothing of it is copied here,
and the JSON records the clone's commit. ``golden.dfine_inputs.fdr_inputs`` (``tests/golden``)
draws every input with NumPy from fixed seeds; ``tests/test_fdr.py`` calls it too, and the JSON
records a CRC-32 of the inputs so that a drifting generator cannot go unnoticed. How to rerun, from
the repository root::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_fdr_golden.py PATH/TO/D-FINE

The inputs are drawn as float32 and handed to the official functions as float64 (exact), with
``up`` and ``reg_scale`` float64 one-element tensors, as the official decoder's frozen parameters
after ``model.double()``: every number is float64, so it holds on every CPU. The official
``translate_gt`` and ``DFINECriterion.unimodal_distribution_focal_loss`` cast to float32; they are
replaced at run time, in the imported modules only, by ``tools/golden/float64_patches.py``
(``translate_gt`` and ``dfl_weight``, checked equal to the official functions in float32); the JSON
lists them in ``patches``.

Fields of the JSON:

* ``weighting``: ``W(n)`` for (reg_max, up, reg_scale) in ``WEIGHTING_CASES``, in the official
  training mode (``train``) and ``deploy=True`` mode (``deploy``).
* ``integral``: ``Integral(32)(logits, W(32, 0.5, 4))`` on random logits ``[2, 5, 132]``.
* ``distance2bbox``: the reference box (0.5, 0.5, 0.2, 0.4) with offsets 0 and (1, -1, 2, 0.5) at
  reg_scale 4 (``fixed``), and random boxes ``[2, 3, 4]`` with offsets in [-8, 8] at reg_scale 8.
* ``bbox2distance``: ``(target, weight_right, weight_left)`` for the reference example (ref box above,
  GT xyxy (0.35, 0.25, 0.62, 0.71), reg_scale 4), for ``EDGE_OFFSETS`` (the reference box
  (0, 0, 4, 4) at reg_scale 4 has unit edges, so every edge of the GT gets exactly that offset: below,
  on and above the end bins), and for 16 random pairs at reg_scale 4 and 8, about a fifth of whose
  edges fall outside ``[W(0), W(R)]``.
* ``round_trip``: for the random pairs at reg_scale 4, offsets rebuilt from the two-bin targets,
  ``W(k) * weight_left + W(k + 1) * weight_right``, decoded by ``distance2bbox``.
* ``udfl``: ``unimodal_distribution_focal_loss`` on random logits ``[64, 33]`` and the targets of the
  random reg_scale-4 pairs, with and without a per-row weight, for each reduction.
* ``local``: ``DFINECriterion(reg_max=32).loss_local`` (T = 5) on two images of 6 queries (2 and 3
  ground truths) in the official order of one criterion call: the final output (no teacher), an
  auxiliary layer (teacher = final layer), a denoising layer of 4 queries (teacher = last denoising
  layer; it reuses the auxiliary layer's ``num_pos`` / ``num_neg``) and the last denoising layer
  (its own teacher). ``num_pos`` / ``num_neg`` are the criterion's after the auxiliary layer.
* ``union``: ``_get_go_indices`` on the example of the reference notes (image 0) and on pairs that
  all occur once (image 1, the tie order).
"""
import json
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.synth and golden.dfine_inputs
from golden.dfine_inputs import EDGE_OFFSETS, WEIGHTING_CASES, fdr_inputs  # noqa: E402
from golden.synth import fingerprint  # noqa: E402
from make_dfine_model_golden import patch_for_float64  # noqa: E402
from make_rtdetrv2_golden import official_commit  # noqa: E402

DTYPE = torch.float64
LOCAL_NUM_BOXES, LOCAL_DN_NUM_BOXES = 5.0, 10.0

def official_values(inputs):
    from src.zoo.dfine.dfine_criterion import DFINECriterion
    from src.zoo.dfine.dfine_decoder import Integral
    from src.zoo.dfine.dfine_utils import bbox2distance, distance2bbox, weighting_function

    def t(array):
        return torch.from_numpy(array).to(DTYPE)

    def tensor(values):
        return torch.tensor(values, dtype=DTYPE)

    def params(up, reg_scale):
        return torch.nn.Parameter(tensor([up]), requires_grad=False), torch.nn.Parameter(
            tensor([reg_scale]), requires_grad=False
        )

    out = {"weighting": []}
    for reg_max, up, reg_scale in WEIGHTING_CASES:
        up_p, scale_p = params(up, reg_scale)
        out["weighting"].append({
            "reg_max": reg_max, "up": up, "reg_scale": reg_scale,
            "train": weighting_function(reg_max, up_p, scale_p).tolist(),
            "deploy": weighting_function(reg_max, up_p, scale_p, deploy=True).tolist(),
        })

    up, scale4 = params(0.5, 4.0)
    _, scale8 = params(0.5, 8.0)
    project = weighting_function(32, up, scale4)
    out["integral"] = Integral(32)(t(inputs["integral_logits"]), project).tolist()

    ref = tensor([[0.5, 0.5, 0.2, 0.4]])
    out["distance2bbox"] = {
        "fixed_zero": distance2bbox(ref, torch.zeros(1, 4, dtype=DTYPE), scale4).tolist(),
        "fixed": distance2bbox(ref, tensor([[1.0, -1.0, 2.0, 0.5]]), scale4).tolist(),
        "random": distance2bbox(t(inputs["d2b_points"]), t(inputs["d2b_distance"]), scale8).tolist(),
    }

    def b2d(points, boxes, scale):
        return [x.tolist() for x in bbox2distance(points, boxes, 32, scale, up)]

    unit_edges = tensor([[0.0, 0.0, 4.0, 4.0]]).expand(len(EDGE_OFFSETS), 4)  # w / reg_scale = 1
    out["bbox2distance"] = {
        "reference": b2d(ref, tensor([[0.35, 0.25, 0.62, 0.71]]), scale4),
        "edges": b2d(unit_edges, t(inputs["edge_boxes"]), scale4),
        "random_s4": b2d(t(inputs["b2d_points"]), t(inputs["b2d_boxes"]), scale4),
        "random_s8": b2d(t(inputs["b2d_points"]), t(inputs["b2d_boxes"]), scale8),
    }

    target, weight_right, weight_left = bbox2distance(t(inputs["b2d_points"]), t(inputs["b2d_boxes"]), 32, scale4, up)
    left = target.long()
    offsets = (project[left] * weight_left + project[left + 1] * weight_right).reshape(-1, 4)
    out["round_trip"] = distance2bbox(t(inputs["b2d_points"]), offsets, scale4).tolist()

    criterion = DFINECriterion(matcher=None, weight_dict={}, losses=["local"], reg_max=32)
    logits, row_weight = t(inputs["udfl_logits"]), t(inputs["udfl_weight"])
    udfl = criterion.unimodal_distribution_focal_loss
    out["udfl"] = {
        "sum": udfl(logits, target, weight_right, weight_left).item(),
        "mean_weighted": udfl(logits, target, weight_right, weight_left, row_weight, reduction="mean").item(),
        "avg_factor_weighted": udfl(logits, target, weight_right, weight_left, row_weight, avg_factor=5.0).item(),
        "none_weighted": udfl(logits, target, weight_right, weight_left, row_weight, reduction="none").tolist(),
    }

    assert all(isinstance(v, float) or v.dtype == DTYPE for v in (project, target, weight_right, offsets))
    out["local"] = official_local(criterion, inputs["local"], up, scale4)
    out["union"] = official_union(criterion, inputs["union"])
    return out


def official_local(criterion, arrays, up, reg_scale):
    a = {k: torch.from_numpy(v).to(DTYPE) if v.dtype.kind == "f" else torch.from_numpy(v) for k, v in arrays.items()}
    targets = [{"boxes": a[f"gt_boxes_{i}"], "labels": a[f"gt_labels_{i}"]} for i in range(2)]
    indices = [(a[f"query_idx_{i}"], a[f"gt_idx_{i}"]) for i in range(2)]
    dn_indices = [(a[f"dn_query_idx_{i}"], a[f"dn_gt_idx_{i}"]) for i in range(2)]
    shared = {"up": up, "reg_scale": reg_scale}
    final = {
        "pred_corners": a["final_corners"], "pred_boxes": a["final_boxes"], "ref_points": a["ref_points"], **shared,
    }
    aux = {
        "pred_corners": a["aux_corners"], "pred_boxes": a["aux_boxes"], "ref_points": a["ref_points"],
        "teacher_corners": a["final_corners"], "teacher_logits": a["final_logits"], **shared,
    }
    dn = {
        "pred_corners": a["dn_corners"], "pred_boxes": a["dn_boxes"], "ref_points": a["dn_ref_points"],
        "teacher_corners": a["dn_final_corners"], "teacher_logits": a["dn_final_logits"], "is_dn": True, **shared,
    }
    dn_final = {**dn, "pred_corners": a["dn_final_corners"], "pred_boxes": a["dn_final_boxes"]}

    criterion._clear_cache()  # what every DFINECriterion.forward does first
    values = {}
    values["final"] = criterion.loss_local(final, targets, indices, LOCAL_NUM_BOXES)
    values["aux"] = criterion.loss_local(aux, targets, indices, LOCAL_NUM_BOXES)
    num_pos, num_neg = criterion.num_pos.item(), criterion.num_neg.item()
    values["dn"] = criterion.loss_local(dn, targets, dn_indices, LOCAL_DN_NUM_BOXES)
    values["dn_final"] = criterion.loss_local(dn_final, targets, dn_indices, LOCAL_DN_NUM_BOXES)
    result = {name: {k: v.item() for k, v in losses.items()} for name, losses in values.items()}
    result.update(num_boxes=LOCAL_NUM_BOXES, dn_num_boxes=LOCAL_DN_NUM_BOXES, num_pos=num_pos, num_neg=num_neg)
    return result


def official_union(criterion, union):
    def pairs(per_image):
        return [(torch.tensor(q, dtype=torch.int64), torch.tensor(g, dtype=torch.int64)) for q, g in per_image]

    results = criterion._get_go_indices(pairs(union["indices"]), [pairs(aux) for aux in union["indices_aux"]])
    return [[rows.tolist(), cols.tolist()] for rows, cols in results]


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    official = Path(argv[0]).resolve()
    sys.path.insert(0, str(official))
    # src.misc imports calflops (FLOP counting), which these functions never use.
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    import src  # noqa: F401  (the official modules)

    patches = patch_for_float64("dfine", "translate_gt", "dfl_weight")
    inputs = fdr_inputs()
    golden = {
        "official_repo": "Peterande/D-FINE",
        "official_commit": official_commit(official),
        "torch": torch.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_fdr_golden.py <D-FINE clone>",
        "dtype": "float64 (inputs drawn as float32, converted exactly)",
        "patches": patches,
        "inputs_crc32": fingerprint({k: v for k, v in inputs.items() if k != "union"}),
        **official_values(inputs),
    }
    (GOLDEN_DIR / "dfine_fdr_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print("wrote dfine_fdr_golden.json")


if __name__ == "__main__":
    main(sys.argv[1:])
