"""Write ``deimv2_model_golden.json`` / ``.npz``: the twelve whole DEIMv2 models, run by the official code.

The official DEIMv2 tree (Intellindust-AI-Lab/DEIMv2) is imported at run time from the work tree given
as the only argument (its ``git rev-parse HEAD`` is recorded); nothing of it is copied here. Weights,
images and targets come from tests/golden/deimv2_synth.py, so a test rebuilds them without the official
code. Run from the repository root, with a Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_model_golden.py PATH/TO/DEIMv2

Everything runs in float64 (models ``.to(torch.float64)``, float64 images and targets). The official
steps that compute in float32 whatever the model dtype (DINOv3 / ViT-Tiny RoPE, the decoder's RMSNorm,
the encoder's sin-cos embedding, the FGL's IoU weights, ``translate_gt``) are patched at run time to
follow the dtype, see tools/golden/float64_patches.py and the JSON's ``patches``.

Without ``--job`` every job of ``JOBS`` runs, each in its own subprocess (``JOB NAME OUT``, which writes
``OUT.json`` and maybe ``OUT.npz``), and the parent merges the results into the two files. One official
config is loaded per subprocess because the official ``load_config(path, cfg=dict())`` keeps its mutable
default dict: every config loaded in a process merges into the keys left by the previous ones. Only the
``chained`` job loads several configs in one process, on purpose. The official ``engine`` package
imports ``calflops`` (FLOP counting, never used here), which is replaced by a stub. Every config is
built by ``YAMLConfig(path, HGNetv2={"pretrained": False})`` (no download), with
``torch.set_num_threads(1)``. The DINOv3 L / X configs name ``weights_path`` files that are not
there; the official ``DINOv3STAs`` then keeps its fresh initialisation (no effect: synthetic
weights replace it). Two runs give identical files.

Configs (``CONFIGS``): ``hgnetv2_{atto,femto,pico,n,s,m,l,x}`` =
``configs/deimv2/deimv2_hgnetv2_*_coco.yml``, ``dinov3_{s,m,l,x}`` = ``configs/deimv2/deimv2_dinov3_*_coco.yml``.

Synthetic weights (``synth_weights``): ``synth_vit_state_dict(shapes, seed=0)`` (``synth_state_dict`` plus
ViT class / storage / mask tokens, LayerScale ``gamma`` and the qkv ``bias_mask``) over the model's own
state-dict keys except the leaves ``up`` / ``reg_scale`` (the frozen W(n) hyper-parameters, 0.5 and the
YAML's integer 4 as int64: ``KEEP_OWN_LEAVES``), the RoPE ``periods`` and the constructor buffers of
``synth.CONSTRUCTOR_BUFFERS``, which all keep the model's own values. Keys naming one shared tensor
(``aliases``: Atto-N's shared box head ``decoder.dec_bbox_head.{0,1,..}.*`` and ``up`` / ``reg_scale``
under ``decoder.decoder.``) all get the tensor of the first key of their group. Loaded with
``strict=True``.

JSON fields:

* provenance: ``official`` (``repo``, ``commit``), ``torch``, ``torchvision``, ``numpy``, ``command``,
  ``weight_seed``, ``keep_own_leaves``, ``constructor_buffers``, the images / targets (with
  ``synth.fingerprint`` CRC-32s).
* ``reference_num_parameters``: {name: count}, the counts an issue quotes as the official ones;
  checked against ``counts`` and ``chained_counts``.
* ``counts[name]`` (one fresh subprocess per config): ``config``, ``num_parameters`` (each shared
  parameter once), ``num_trainable``, ``num_parameters_deploy`` (after the official ``DEIM.deploy()``),
  ``num_state_dict_entries`` / ``num_state_dict_entries_deploy``, ``state_dict`` (key -> shape, in order,
  buffers included), ``dtypes`` (entries that are not float32, besides the int64
  ``num_batches_tracked``), ``aliases`` (groups of keys of one tensor), ``synth_unsupported_keys``
  (``synth_weights`` errors: empty), ``resolved`` (values read from the built model: backbone and
  encoder class, decoder ``num_layers``, ``hidden_dim``,
  ``num_queries``, ``ffn_hidden`` (SwiGLU hidden width of layer 0), HGNetv2 ``use_lab`` where there is one).
* ``chained_counts``: ``order`` (the twelve names), per name ``num_parameters`` (chained),
  ``num_parameters_fresh``, ``resolved`` {"chained", "fresh"}, ``leaked``: every dotted key of the
  model / criterion / postprocessor sections (and of the ``DEIM``, ``HGNetv2``, ``DINOv3STAs``,
  ``HybridEncoder``, ``LiteEncoder``, ``DEIMTransformer``, ``DEIMCriterion``, ``PostProcessor``
  sections) of the resolved YAML whose value differs from the fresh load ({"chained", "fresh"}, null =
  absent), ``reference``, ``chained_matches_reference``, ``fresh_matches_reference``;
  ``leak_explains_reference``: every reference equals the chained count.
* ``eval[name]`` (``dinov3_s`` at 640, ``hgnetv2_atto`` at 320; fresh subprocess): ``config``,
  ``input`` (how the image is made), ``weights_crc32``, ``kept_own_values``, ``num_parameters``;
  ``model.eval()`` on ``synth_image(S, S, seed=0)`` as RGB float / 255 (then normalised with the
  ImageNet mean / std for the DINOv3 model, as the official val transform does); ``enc_topk_index``
  (the official query selection: top-K anchors of the per-anchor max of ``decoder.enc_score_head``),
  ``enc_topk_min_gap`` / ``enc_topk_num_ties`` / ``enc_topk_gap_at_cut`` (see ``_top_gaps``);
  ``deploy``: ``num_parameters`` and the max abs differences of the deployed outputs.
  NPZ ``{name}_eval_logits`` [1, K, 80] / ``{name}_eval_boxes`` [1, K, 4] (normalised cxcywh).
* ``train[name]`` (same two models; ``DEIMTransformer.num_denoising: 0``; 2 images ``synth_image(S, S,
  seed)`` for seeds 1, 2 prepared as in ``eval``; targets ``synth_targets([3, 5], 80, seed=3)``):
  ``model.train()`` (BatchNorm with batch statistics; ``torch.manual_seed(0)`` first although nothing
  is drawn: ViT-Tiny has no RoPE jitter) and the config's ``DEIMCriterion`` called with the official
  metas ``{"epoch": E, "step": 0, "global_step": 0, "epoch_step": 1}`` for ``E`` in ``epochs`` (0, and
  one at or past the criterion's ``matcher_change_epoch``), a new forward per epoch. ``criterion_args``
  (losses, weight_dict, alpha, gamma, the matcher's ``change_matcher`` / ``iou_order_alpha`` /
  ``matcher_change_epoch``), per epoch ``losses`` (every weighted entry as float64), ``total`` (their sum
  in float64, in dict order), ``total_float32`` (``sum(loss_dict.values())``) and
  ``matcher_indices_last_layer``. NPZ ``{name}_train_logits`` / ``{name}_train_boxes`` (final layer).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.synth / golden.deimv2_synth

from golden.deimv2_synth import KEEP_OWN_LEAVES, aliases, image_tensor, synth_weights, train_targets  # noqa: E402
from golden.synth import CONSTRUCTOR_BUFFERS, fingerprint, synth_targets  # noqa: E402

import float64_patches  # noqa: E402  (tools/golden, this script's directory)

HGNETV2 = ("atto", "femto", "pico", "n", "s", "m", "l", "x")
DINOV3 = ("s", "m", "l", "x")
CONFIGS = {f"hgnetv2_{s}": f"configs/deimv2/deimv2_hgnetv2_{s}_coco.yml" for s in HGNETV2}
CONFIGS.update({f"dinov3_{s}": f"configs/deimv2/deimv2_dinov3_{s}_coco.yml" for s in DINOV3})
ORDER = list(CONFIGS)
REFERENCE_NUM_PARAMETERS = dict(zip(ORDER, [
    508_985, 983_945, 1_539_539, 3_302_941, 9_332_429, 17_319_204, 28_687_566, 57_888_398,
    8_889_714, 16_810_602, 31_355_106, 48_808_260,
]))
RUNS = {  # name -> input size, ImageNet normalisation, epochs of the train losses
    "dinov3_s": {"size": 640, "imagenet": True, "epochs": [0, 100]},
    "hgnetv2_atto": {"size": 320, "imagenet": False, "epochs": [0, 500]},
}
JOBS = [("counts", name) for name in ORDER] + [("chained", "-")]
JOBS += [(job, name) for job in ("eval", "train") for name in RUNS]

DTYPE = float64_patches.DTYPE
PACKAGE = "engine.deim"  # the official DEIMv2 package (tools/golden/float64_patches.py)
WEIGHT_SEED = 0
EVAL_IMAGE_SEED = 0
TRAIN_IMAGE_SEEDS = (1, 2)
TRAIN_TARGET_SEED = 3
TRAIN_NUM_TARGETS = [3, 5]
NUM_CLASSES = 80
BASE_OVERRIDES = {"HGNetv2": {"pretrained": False}}
TRAIN_OVERRIDES = {"DEIMTransformer": {"num_denoising": 0}}
SECTIONS = ("DEIM", "HGNetv2", "DINOv3STAs", "HybridEncoder", "LiteEncoder", "DEIMTransformer", "DEIMCriterion",
            "PostProcessor")
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_model_golden.py <official DEIMv2>"
OFFICIAL = None  # the official tree, set by main() / _run_job()


def _build(name: str, train: bool = False):
    from engine.core import YAMLConfig

    overrides = {k: dict(v) for k, v in BASE_OVERRIDES.items()}
    if train:
        overrides.update({k: dict(v) for k, v in TRAIN_OVERRIDES.items()})
    return YAMLConfig(str(OFFICIAL / CONFIGS[name]), **overrides)


def _count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _load_synth(model: torch.nn.Module):
    state = model.state_dict()
    weights = synth_weights({k: list(v.shape) for k, v in state.items()}, aliases(state))
    kept = [k for k in state if k not in weights]
    assert all(k.rpartition(".")[2] in CONSTRUCTOR_BUFFERS | KEEP_OWN_LEAVES for k in kept), kept
    model.load_state_dict({k: weights.get(k, v) for k, v in state.items()}, strict=True)
    kept_values = {k: state[k].tolist() for k in kept if k.rpartition(".")[2] in {"up", "reg_scale"}}
    return fingerprint(weights), kept_values


def _resolved(model) -> dict:
    dec = model.decoder
    out = {
        "backbone": type(model.backbone).__name__,
        "encoder": type(model.encoder).__name__,
        "num_layers": len(dec.decoder.layers),
        "hidden_dim": dec.hidden_dim,
        "num_queries": dec.num_queries,
        "ffn_hidden": dec.decoder.layers[0].swish_ffn.w3.in_features,
    }
    if hasattr(model.backbone, "use_lab"):
        out["use_lab"] = bool(model.backbone.use_lab)
    return out


def _flat_sections(cfg) -> dict:
    """Dotted key -> value of the model / criterion / postprocessor sections of the resolved YAML and
    of ``SECTIONS``, JSON-normalised."""
    yaml_cfg = cfg.yaml_cfg
    names = [yaml_cfg.get(k) for k in ("model", "criterion", "postprocessor")] + list(SECTIONS)
    out = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for name in dict.fromkeys(n for n in names if isinstance(n, str) and n in yaml_cfg):
        visit(name, yaml_cfg[name])
    return json.loads(json.dumps(out))


def job_counts(name: str) -> tuple:
    cfg = _build(name)
    sections = _flat_sections(cfg)
    model = cfg.model
    sd = model.state_dict()
    unsupported = []
    try:
        synth_weights({k: list(v.shape) for k, v in sd.items()}, [])
    except ValueError as e:
        unsupported.append(str(e))
    result = {
        "config": CONFIGS[name],
        "num_parameters": _count(model),
        "num_trainable": _count(model, trainable=True),
        "num_state_dict_entries": len(sd),
        "state_dict": {k: list(v.shape) for k, v in sd.items()},
        "dtypes": {k: str(v.dtype)[len("torch."):] for k, v in sd.items()
                   if v.dtype != torch.float32 and not k.endswith("num_batches_tracked")},
        "aliases": aliases(sd),
        "synth_unsupported_keys": unsupported,
        "resolved": _resolved(model),
    }
    model.deploy()
    result["num_parameters_deploy"] = _count(model)
    result["num_state_dict_entries_deploy"] = len(model.state_dict())
    return {"result": result, "sections": sections}, {}


def job_chained(_name: str) -> tuple:
    out = {}
    for name in ORDER:  # one process, the official loader's shared default dict left as it is
        cfg = _build(name)
        sections = _flat_sections(cfg)
        model = cfg.model
        out[name] = {"num_parameters": _count(model), "resolved": _resolved(model), "sections": sections}
        del cfg, model
    return out, {}


def _enc_capture(model):
    captured = {}
    model.decoder.enc_score_head.register_forward_hook(lambda m, i, o: captured.__setitem__("enc", o))
    return captured


def job_eval(name: str) -> tuple:
    run = RUNS[name]
    model = _build(name).model
    weights_crc32, kept_values = _load_synth(model)
    model.eval().to(DTYPE)
    float64_patches.rope_follow_dtype(model)
    captured = _enc_capture(model)
    size = run["size"]
    images = image_tensor(size, size, EVAL_IMAGE_SEED, run["imagenet"])[None]
    k = model.decoder.num_queries
    with torch.no_grad():
        outputs = model(images)
        enc_max = captured["enc"].max(-1).values
        topk = torch.topk(enc_max, k, dim=-1).indices
        num_parameters = _count(model)
        model.deploy()
        deployed = model(images)
    result = {
        "config": CONFIGS[name],
        "overrides": {"HGNetv2.pretrained": False},
        "input": f"synth_image({run['size']}, {run['size']}, seed={EVAL_IMAGE_SEED}) RGB float/255"
                 + (", ImageNet mean/std" if run["imagenet"] else ""),
        "input_crc32": fingerprint(images.numpy()),
        "weights_crc32": weights_crc32,
        "kept_own_values": kept_values,
        "num_parameters": num_parameters,
        "eval_idx": model.decoder.eval_idx,
        "enc_topk_index": topk[0].tolist(),
        "deploy": {
            "num_parameters": _count(model),
            "max_abs_diff_logits": (deployed["pred_logits"] - outputs["pred_logits"]).abs().max().item(),
            "max_abs_diff_boxes": (deployed["pred_boxes"] - outputs["pred_boxes"]).abs().max().item(),
        },
    }
    arrays = {f"{name}_eval_logits": outputs["pred_logits"].numpy(),
              f"{name}_eval_boxes": outputs["pred_boxes"].numpy()}
    return result, arrays


def job_train(name: str) -> tuple:
    run = RUNS[name]
    cfg = _build(name, train=True)
    model, criterion = cfg.model, cfg.criterion
    assert model.decoder.num_denoising == 0
    weights_crc32, kept_values = _load_synth(model)
    model.train().to(DTYPE)
    float64_patches.rope_follow_dtype(model)
    criterion.train()
    size = run["size"]
    images = torch.stack([image_tensor(size, size, s, run["imagenet"]) for s in TRAIN_IMAGE_SEEDS])
    targets = []
    for target in train_targets(size):  # float32 pixel XYXY -> normalised cxcywh in float64
        xyxy = target["boxes"].to(DTYPE) / size
        boxes = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        targets.append({"labels": target["labels"], "boxes": boxes})
    matcher = criterion.matcher
    assert run["epochs"][-1] >= matcher.matcher_change_epoch and matcher.change_matcher
    result = {
        "config": CONFIGS[name],
        "overrides": {"HGNetv2.pretrained": False, "DEIMTransformer.num_denoising": 0},
        "input": f"synth_image({run['size']}, {run['size']}, seed) for seeds {list(TRAIN_IMAGE_SEEDS)}, RGB float/255"
                 + (", ImageNet mean/std" if run["imagenet"] else ""),
        "weights_crc32": weights_crc32,
        "kept_own_values": kept_values,
        "criterion": type(criterion).__name__,
        "criterion_args": {
            "losses": list(criterion.losses),
            "weight_dict": dict(criterion.weight_dict),
            "alpha": criterion.alpha,
            "gamma": criterion.gamma,
            "mal_alpha": getattr(criterion, "mal_alpha", None),
            "use_uni_set": getattr(criterion, "use_uni_set", None),
            "change_matcher": matcher.change_matcher,
            "iou_order_alpha": matcher.iou_order_alpha,
            "matcher_change_epoch": matcher.matcher_change_epoch,
        },
        "epochs": {},
    }
    for epoch in run["epochs"]:
        metas = {"epoch": epoch, "step": 0, "global_step": 0, "epoch_step": 1}
        torch.manual_seed(0)  # nothing random is expected (no dropout, no denoising, no RoPE jitter)
        outputs = model(images, targets=targets)
        last = {k: outputs[k].detach() for k in ("pred_logits", "pred_boxes")}
        losses = criterion(outputs, targets, **metas)
        matched = matcher(last, targets, epoch=epoch)["indices"]
        assert all(v.dtype == DTYPE for v in losses.values())
        result["epochs"][str(epoch)] = {
            "metas": metas,
            "losses": {k: v.item() for k, v in losses.items()},
            "total": sum(losses.values()).item(),
            "matcher_indices_last_layer": [[s.tolist(), t.tolist()] for s, t in matched],
        }
    return result, {}


def _run_job(job: str, name: str, out: str) -> None:
    sys.path.insert(0, str(OFFICIAL))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))  # imported, not used
    __import__("engine")  # registers every official module
    float64_patches.install(PACKAGE)
    torch.set_num_threads(1)
    result, arrays = {"counts": job_counts, "chained": job_chained, "eval": job_eval, "train": job_train}[job](name)
    Path(out + ".json").write_text(json.dumps(result))
    if arrays:
        np.savez(out + ".npz", **arrays)


def _leaked(chained: dict, fresh: dict) -> dict:
    return {k: {"chained": chained.get(k), "fresh": fresh.get(k)}
            for k in sorted(set(chained) | set(fresh)) if chained.get(k) != fresh.get(k)}


def _provenance(commit: str) -> dict:
    import torchvision

    return {
        "official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit},
        "dtype": str(DTYPE)[len("torch."):],
        "patches": [float64_patches.PATCHES["rope"]] + [float64_patches.describe(PACKAGE, k)
                                                             for k in float64_patches.PACKAGES[PACKAGE]["patches"]],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "command": COMMAND,
        "weight_seed": WEIGHT_SEED,
        "keep_own_leaves": sorted(KEEP_OWN_LEAVES),
        "constructor_buffers": sorted(CONSTRUCTOR_BUFFERS),
        "runs": RUNS,
        "train_targets": f"synth_targets({TRAIN_NUM_TARGETS}, {NUM_CLASSES}, seed={TRAIN_TARGET_SEED})",
        "train_targets_crc32": fingerprint(synth_targets(TRAIN_NUM_TARGETS, NUM_CLASSES, seed=TRAIN_TARGET_SEED)),
    }


def main(argv) -> None:
    global OFFICIAL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    parser.add_argument("--job", nargs=3, metavar=("JOB", "NAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    OFFICIAL = args.official.resolve()
    if args.job:
        _run_job(*args.job)
        return
    commit = subprocess.run(["git", "-C", str(OFFICIAL), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    results, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for job, name in JOBS:
            out = os.path.join(tmp, f"{job}_{name}")
            print("running", job, name, flush=True)
            subprocess.run([sys.executable, __file__, str(OFFICIAL), "--job", job, name, out], check=True,
                           cwd=REPO_ROOT)
            results[(job, name)] = json.loads(Path(out + ".json").read_text())
            if os.path.exists(out + ".npz"):
                with np.load(out + ".npz") as npz:
                    arrays.update({k: npz[k] for k in npz.files})

    golden = _provenance(commit)
    golden["reference_num_parameters"] = REFERENCE_NUM_PARAMETERS
    golden["counts"] = {name: results[("counts", name)]["result"] for name in ORDER}
    chained = results[("chained", "-")]
    entry = {"order": ORDER}
    explains = True
    for name in ORDER:
        fresh = results[("counts", name)]
        c = chained[name]
        reference = REFERENCE_NUM_PARAMETERS[name]
        entry[name] = {
            "num_parameters": c["num_parameters"],
            "num_parameters_fresh": fresh["result"]["num_parameters"],
            "resolved": {"chained": c["resolved"], "fresh": fresh["result"]["resolved"]},
            "leaked": _leaked(c["sections"], fresh["sections"]),
            "reference": reference,
            "chained_matches_reference": c["num_parameters"] == reference,
            "fresh_matches_reference": fresh["result"]["num_parameters"] == reference,
        }
        explains = explains and c["num_parameters"] == reference
    entry["leak_explains_reference"] = explains
    golden["chained_counts"] = entry
    golden["leak_explains_reference"] = explains
    golden["eval"] = {name: results[("eval", name)] for name in RUNS}
    golden["train"] = {name: results[("train", name)] for name in RUNS}

    (GOLDEN_DIR / "deimv2_model_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print("wrote deimv2_model_golden.json", (GOLDEN_DIR / "deimv2_model_golden.json").stat().st_size, "bytes")
    np.savez_compressed(GOLDEN_DIR / "deimv2_model_golden.npz", **dict(sorted(arrays.items())))
    print("wrote deimv2_model_golden.npz", (GOLDEN_DIR / "deimv2_model_golden.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
