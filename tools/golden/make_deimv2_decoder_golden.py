"""Write ``deimv2_decoder_golden.json`` / ``.npz``: the DEIMv2 decoder (``DEIMTransformer``), its RMSNorm
and SwiGLU FFN and its matcher switch, computed by the official DEIMv2 code (Intellindust-AI-Lab/DEIMv2,
``engine/deim/deim_decoder.py``, ``deim_utils.py``, ``matcher.py``).

The official tree is imported at run time, inside :func:`main`, from the work tree given as the only
argument (its ``git rev-parse HEAD`` is recorded); nothing of it is copied here. Every input comes from
:func:`decoder_inputs`, :func:`module_inputs` and :func:`matcher_inputs` (NumPy, fixed seeds) and the
weights from ``synth.synth_state_dict``, so ``tests/test_deimv2_decoder.py`` rebuilds them without the
official code. Run from the repository root, with a Python environment that has the official
requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_decoder_golden.py PATH/TO/DEIMv2

Everything runs in float64. The official RMSNorm computes its statistics in float32 whatever the input
dtype; it is patched to use float64 for float64 inputs (tools/golden/float64_patches.py, recorded
in the JSON's ``patches``; half inputs keep the official float32 statistics).

The official ``engine`` package imports ``calflops`` (never used here), which is replaced by a stub.
``torch.set_num_threads(1)``; two runs give identical files.

Decoder configs (``CONFIGS``): ``atto`` = ``configs/deimv2/deimv2_hgnetv2_atto_coco.yml`` and ``s`` =
``configs/deimv2/deimv2_dinov3_s_coco.yml``, each resolved with the official
``load_config(path, dict())`` (a fresh dict per config: its default argument is mutable), i.e. merged
over ``configs/base/deimv2.yml``. Their ``DEIMTransformer`` section is used as it is, plus
``num_classes: 80`` and ``eval_spatial_size: [320, 320]`` (the top-level shared keys; 320 is the
Atto config's size, and the S model is run at 320 too to keep the files small).

Synthetic weights: ``synth_state_dict(shapes, seed=0)`` over the official state-dict keys, without
``up`` / ``reg_scale`` (the frozen W(n) hyper-parameters; the model keeps its own, 0.5 and the
YAML's integer 4 as an int64 tensor) and the constructor buffers of ``synth.CONSTRUCTOR_BUFFERS``.
Keys that name one shared tensor (the shared box head of Atto: ``dec_bbox_head.{0,1,2}.*``;
``up`` / ``reg_scale`` under ``decoder.`` too) all get the tensor of the first key of their group
(``aliases``), then ``load_state_dict(strict=True)``.

JSON fields:

* provenance: ``official`` (``repo``, ``commit``), ``torch``, ``numpy``, ``command``.
* ``rmsnorm``: ``RMSNorm(64)`` with ``scale`` = ``module_inputs()["rmsnorm_scale"]`` on
  ``rmsnorm_x`` [3, 5, 64] float32 (NPZ ``rmsnorm_out``) and on the same input as float16
  (NPZ ``rmsnorm_out_half``: float32, since the scale is a float32 parameter); ``eps`` 1e-6.
* ``swiglu``: ``SwiGLUFFN(64, 80, 64)`` with ``synth_state_dict(swiglu state, seed=0)`` on
  ``swiglu_x`` [3, 5, 64] (NPZ ``swiglu_out``); ``state_dict`` key -> shape.
* ``decoders[name]`` for ``atto`` and ``s``: ``config`` (path), ``args`` (the ``DEIMTransformer``
  arguments used), ``state_dict`` (key -> shape in state-dict order, buffers included),
  ``dtypes`` (keys that are not float32), ``num_state_dict_entries``, ``num_parameters`` (each
  shared parameter once), ``aliases`` (groups of keys naming one tensor), ``weights_crc32``
  (``fingerprint`` of the loaded synthetic tensors), ``feats_crc32``;
  ``eval``: ``model.eval()`` on ``decoder_inputs(name)["feats"]`` (batch 2, the 320x320 strides):
  ``query_pos_head_calls`` (forward calls of ``query_pos_head``), ``enc_topk_index`` [2, K] (the
  official query selection of ``enc_score_head`` on the masked memory) and ``enc_topk_gap_at_cut`` /
  ``enc_topk_min_gap`` (smallest gap around / inside the selection over both images), NPZ
  ``{name}_eval_logits`` [2, K, 80] and ``{name}_eval_boxes`` [2, K, 4] (normalised cxcywh);
  ``deploy``: after the official ``convert_to_deploy`` of the decoder and its ``decoder``
  (as ``DEIM.deploy()`` does), ``state_dict`` / ``num_state_dict_entries`` / ``num_parameters`` /
  ``aliases`` and ``max_abs_diff_logits`` / ``max_abs_diff_boxes`` against the eval outputs;
  ``train`` (``atto`` only): ``model.train()`` with ``num_denoising`` set to 0 on the built model
  (no random denoising queries), ``query_pos_head_calls``, ``output_keys`` and NPZ
  ``atto_train_logits`` / ``atto_train_boxes`` [L, 2, K, ...] (aux layers then the final one),
  ``atto_train_pre_boxes``, ``atto_train_pre_logits``, ``atto_train_enc_boxes``,
  ``atto_train_enc_logits`` and ``atto_train_corners`` (final layer, [2, K, 132]).
* ``matcher``: the official ``HungarianMatcher`` with the Atto criterion's matcher arguments
  (``args``: weights 2/5/2, alpha 0.25, gamma 2, ``use_focal_loss`` True, ``change_matcher`` True,
  ``iou_order_alpha`` 4, ``matcher_change_epoch`` 450) on ``matcher_inputs()`` (2 images, 20
  queries, 10 classes, 3 and 5 ground truths): ``indices[str(epoch)]`` per image ``[query indices,
  target indices]`` for epochs 0, 449 (switch off) and 450, 500 (on); ``cost_on`` (NPZ
  ``matcher_cost_on`` [40, 8]): ``-(p * IoU^4)``, the switched cost before the per-image split.
"""
import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.synth / golden.deimv2_synth
from golden.deimv2_synth import (MATCHER_ARGS, MATCHER_EPOCHS, aliases, count_calls, decoder_inputs,  # noqa: E402
                                 load_synth, matcher_inputs, module_inputs, stored_part)
from golden.synth import fingerprint, synth_state_dict  # noqa: E402

import float64_patches  # noqa: E402  (tools/golden, this script's directory)

CONFIGS = {
    "atto": "configs/deimv2/deimv2_hgnetv2_atto_coco.yml",
    "s": "configs/deimv2/deimv2_dinov3_s_coco.yml",
}
EXTRA_ARGS = {"num_classes": 80, "eval_spatial_size": [320, 320]}
DTYPE = float64_patches.DTYPE


def _state_shapes(state: dict) -> dict:
    return {k: list(v.shape) for k, v in state.items()}


def _num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _topk_gaps(values: torch.Tensor, k: int):
    top = values.double().sort(dim=-1, descending=True).values[:, : k + 1]
    gaps = top[:, :-1] - top[:, 1:]
    return float(gaps[:, : k - 1].min()), float(gaps[:, k - 1].min())


def _decoder_case(name, DEIMTransformer, load_config, root, npz, train: bool) -> dict:
    cfg = load_config(str(root / CONFIGS[name]), dict())
    args = dict(cfg["DEIMTransformer"], **EXTRA_ARGS)
    model = DEIMTransformer(**args)
    state = model.state_dict()
    weights = load_synth(model)
    model.to(DTYPE)
    feats = decoder_inputs(name, args["feat_channels"], args["feat_strides"])
    out = {
        "config": CONFIGS[name],
        "args": args,
        "state_dict": _state_shapes(state),
        "dtypes": {k: str(v.dtype) for k, v in state.items() if v.dtype != torch.float32},
        "num_state_dict_entries": len(state),
        "num_parameters": _num_parameters(model),
        "aliases": aliases(state),
        "weights_crc32": fingerprint(weights),
        "feats_crc32": fingerprint(feats),
    }
    calls = count_calls(model.query_pos_head)
    with torch.no_grad():
        memory, _ = model._get_encoder_input(feats)
        enc_logits = model.enc_score_head(model.valid_mask.to(memory.dtype) * memory).max(-1).values
    min_gap, gap_at_cut = _topk_gaps(enc_logits, model.num_queries)

    model.eval()
    with torch.no_grad():
        ev = model(feats)
    out["eval"] = {
        "query_pos_head_calls": calls[0],
        "enc_topk_index": enc_logits.topk(model.num_queries, dim=-1).indices.tolist(),
        "enc_topk_min_gap": min_gap,
        "enc_topk_gap_at_cut": gap_at_cut,
    }
    npz[f"{name}_eval_logits"] = ev["pred_logits"].numpy()
    npz[f"{name}_eval_boxes"] = ev["pred_boxes"].numpy()

    if train:
        model.train()
        model.num_denoising = 0
        calls[0] = 0
        with torch.no_grad():
            tr = model(feats)
        out["train"] = {"query_pos_head_calls": calls[0], "output_keys": sorted(tr)}
        layers = tr["aux_outputs"] + [tr]
        npz[f"{name}_train_logits"] = torch.stack([o["pred_logits"] for o in layers]).numpy()
        npz[f"{name}_train_boxes"] = torch.stack([o["pred_boxes"] for o in layers]).numpy()
        npz[f"{name}_train_corners"] = tr["pred_corners"].numpy()
        npz[f"{name}_train_pre_boxes"] = tr["pre_outputs"]["pred_boxes"].numpy()
        npz[f"{name}_train_pre_logits"] = tr["pre_outputs"]["pred_logits"].numpy()
        npz[f"{name}_train_enc_boxes"] = tr["enc_aux_outputs"][0]["pred_boxes"].numpy()
        npz[f"{name}_train_enc_logits"] = tr["enc_aux_outputs"][0]["pred_logits"].numpy()
        model.num_denoising = args["num_denoising"]

    model.eval()
    model.convert_to_deploy()
    model.decoder.convert_to_deploy()
    with torch.no_grad():
        dep = model(feats)
    deployed = model.state_dict()
    out["deploy"] = {
        "state_dict": _state_shapes(deployed),
        "num_state_dict_entries": len(deployed),
        "num_parameters": _num_parameters(model),
        "aliases": aliases(deployed),
        "max_abs_diff_logits": float((dep["pred_logits"] - ev["pred_logits"]).abs().max()),
        "max_abs_diff_boxes": float((dep["pred_boxes"] - ev["pred_boxes"]).abs().max()),
    }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    root = parser.parse_args().official.resolve()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    sys.path.insert(0, str(root))
    sys.modules["calflops"] = types.SimpleNamespace(calculate_flops=None)
    torch.set_num_threads(1)
    patches = float64_patches.install("engine.deim", "rmsnorm")
    from engine.core.yaml_utils import load_config
    from engine.deim.deim_decoder import DEIMTransformer
    from engine.deim.deim_utils import RMSNorm, SwiGLUFFN
    from engine.deim.matcher import HungarianMatcher

    npz = {}
    golden = {
        "official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit},
        "dtype": str(DTYPE)[len("torch."):],
        "patches": patches,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_decoder_golden.py <official DEIMv2>",
    }

    inputs = module_inputs()
    norm = RMSNorm(64).to(DTYPE)
    with torch.no_grad():
        norm.scale.copy_(torch.from_numpy(inputs["rmsnorm_scale"]))
        x = torch.from_numpy(inputs["rmsnorm_x"])
        npz["rmsnorm_out"] = norm(x).numpy()
        half = RMSNorm(64)
        half.scale.copy_(torch.from_numpy(inputs["rmsnorm_scale"]))
        half_dtype = str(half(x.half()).dtype)
    golden["rmsnorm"] = {"dim": 64, "eps": norm.eps, "half_output_dtype_with_float32_scale": half_dtype}

    ffn = SwiGLUFFN(64, 80, 64)
    ffn_state = ffn.state_dict()
    ffn.load_state_dict(synth_state_dict(_state_shapes(ffn_state), seed=0), strict=True)
    ffn.to(DTYPE)
    with torch.no_grad():
        npz["swiglu_out"] = ffn(torch.from_numpy(inputs["swiglu_x"])).numpy()
    golden["swiglu"] = {"in_features": 64, "hidden_features": 80, "out_features": 64,
                        "state_dict": _state_shapes(ffn_state)}
    golden["module_inputs_crc32"] = fingerprint(inputs)

    golden["decoders"] = {
        name: _decoder_case(name, DEIMTransformer, load_config, root, npz, train=name == "atto") for name in CONFIGS
    }

    m = matcher_inputs()
    matcher = HungarianMatcher(**MATCHER_ARGS)
    outputs = {"pred_logits": torch.from_numpy(m["logits"]), "pred_boxes": torch.from_numpy(m["boxes"])}
    targets = [{k: torch.from_numpy(v) for k, v in t.items()} for t in m["targets"]]
    indices = {}
    for epoch in MATCHER_EPOCHS:
        result = matcher(outputs, targets, epoch=epoch)["indices"]
        indices[str(epoch)] = [[q.tolist(), g.tolist()] for q, g in result]
    from engine.deim.box_ops import box_cxcywh_to_xyxy, box_iou

    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()[:, torch.cat([t["labels"] for t in targets])]
    iou = box_iou(box_cxcywh_to_xyxy(outputs["pred_boxes"].flatten(0, 1)),
                  box_cxcywh_to_xyxy(torch.cat([t["boxes"] for t in targets])))[0]
    npz["matcher_cost_on"] = (-(prob * iou ** MATCHER_ARGS["iou_order_alpha"])).numpy()
    golden["matcher"] = {"args": MATCHER_ARGS, "epochs": list(MATCHER_EPOCHS), "indices": indices,
                         "inputs_crc32": fingerprint([m["logits"], m["boxes"], m["targets"]])}

    (GOLDEN_DIR / "deimv2_decoder_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "deimv2_decoder_golden.npz", **{k: stored_part(k, v) for k, v in npz.items()})
    print("wrote deimv2_decoder_golden.{json,npz}", (GOLDEN_DIR / "deimv2_decoder_golden.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
