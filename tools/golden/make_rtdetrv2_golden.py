"""Write the RT-DETRv2 golden files of ``tests/golden`` by running the official implementation.

The official code is imported from a clone of lyuwenyu/RT-DETR outside this repository (its
``rtdetrv2_pytorch`` folder); nothing of it is copied here, and the JSON files record the clone's
commit (``git rev-parse HEAD``). The weights and inputs come from ``tests/golden/synth.py``, so a test
rebuilds them without the official code.

How to rerun, from the repository root, with a venv that holds torch, torchvision, scipy, PyYAML and
faster-coco-eval (one official config is loaded per subprocess, because the official YAML loader leaks
keys from one config into the next)::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_rtdetrv2_golden.py PATH/TO/RT-DETR [JOB [MODEL]]

Numbers are float64: the official model runs after ``model.double()`` on float64 images and targets,
and the criterion case draws float64 inputs, so the goldens hold on every CPU whatever its vector
kernels (a float32 run moves by a few 1e-5 between AVX2 and AVX-512 kernels). The JSON files say so in
``dtype``. One official step is float32 whatever the model's dtype: the hybrid encoder's 2-D sin-cos
position embedding (the ``eval_spatial_size`` buffer built at construction, and the one built in the
training forward), whose float32 sin / cos differ by an ulp between CPU kernel ISAs. For the ``eval``
and ``train`` jobs it is computed in float64 (``float64_patches.install("src.zoo.rtdetr", "sincos")``,
tools/golden/float64_patches.py, at run time, before the model is built), and their JSON files list
the patch in ``patches``; the ``keys`` and ``criterion`` jobs run the official code unchanged.

Without arguments every job below runs. Weights are always ``synth_state_dict(keys, seed=0)`` over the
official state-dict keys, loaded strictly (the constructor buffers of ``synth.CONSTRUCTOR_BUFFERS`` keep
the model's own values). Every JSON file records the official commit, the library versions and the
command; the model runs also record ``synth.fingerprint`` (CRC-32) of the weights and inputs they used,
so a test can prove it rebuilt the very same tensors. Files:

* ``keys MODEL`` (MODEL in r18, r34, r50, r101) -> ``rtdetrv2_MODEL_keys.json``: the official config
  file, ``num_parameters`` (sum of ``numel`` over ``model.parameters()``; FrozenBN statistics are
  buffers), ``state_dict`` (key -> shape, in state-dict order, buffers included), ``dtypes`` (the
  entries that are not float32) and ``non_persistent_buffers``.
* ``eval MODEL`` (r18, r50) -> ``rtdetrv2_MODEL_eval.npz`` + ``.json``. Input: ``synth_image(640, 640,
  seed=0)`` as the official val pipeline gives it (RGB, float / 255, 1x3x640x640, here float64);
  ``model.double().eval()`` (not deployed), then the official ``RTDETRPostProcessor`` (80 classes,
  focal, top 300, no COCO id remap) with ``orig_target_sizes = [[640, 640]]`` ([w, h]). npz arrays
  (float64):

  - ``labels`` [300] int64, ``boxes`` [300, 4] absolute xyxy, ``scores`` [300]: post-processor output;
  - for ``backbone_{i}`` and ``encoder_{i}`` (i = 0, 1, 2, strides 8/16/32): ``*_shape``, ``*_sum`` and
    ``*_abs_sum`` (sums of the map) and ``*_slice`` = ``x[0, :16, ::H // 8, ::W // 8]``.

  The JSON adds tie diagnostics: ``scores_min_gap`` / ``scores_num_ties`` over the 300 sorted scores,
  ``score_gap_at_cut`` (300th minus 301st largest sigmoid score over all queries and classes) and the
  same for the encoder top-k (``enc_topk_min_gap``, ``enc_topk_num_ties``, ``enc_topk_gap_at_cut``, in
  logits; the encoder's query selection is the official ``topk`` over the per-anchor max class logit
  of ``decoder.enc_score_head``).
* ``train r18`` -> ``rtdetrv2_r18_train_loss.json``: the R18 config with ``num_denoising: 0``,
  ``model.double().train()`` (BatchNorm uses batch statistics), images ``synth_image(640, 640,
  seed=1)`` and ``seed=2`` batched (float64), targets ``golden.dfine_inputs.train_targets`` (float64:
  ``synth_targets([3, 5], 80, seed=3)`` with the boxes on a 1/256 grid, which a Detectron2 model's
  float32 ``Boxes`` hold exactly); the official ``RTDETRCriterionv2`` built from the config. JSON:
  every weighted loss, their ``total`` (float64 sum in the dict's order) and the matcher indices of
  the last layer.
* ``criterion`` -> ``rtdetrv2_criterion.npz`` + ``.json``: model-free float64 inputs, drawn here with
  NumPy and stored: B=2, Q=20, C=5; ``pred_logits``/``pred_boxes``, ``aux_{i}_*`` (i = 0, 1),
  ``enc_0_*``, ``dn_{i}_*`` (i = 0, 1; 18 denoising queries); targets ``synth_targets([3, 2], 5,
  seed=11)`` stored as ``target_{b}_labels`` / ``target_{b}_boxes`` (boxes as float64); ``dn_meta``
  from the official ``get_contrastive_denoising_training_group`` with ``num_denoising=10``
  (``dn_positive_idx_{b}``, ``dn_num_group``, ``dn_num_split``). The official ``HungarianMatcher``
  (cost class 2 / bbox 5 / giou 2, focal alpha 0.25, gamma 2) gives ``indices_main_{b}``, ``indices_aux_{i}_{b}`` and
  ``indices_enc_0_{b}`` as [2, n] (row 0 query, row 1 target); the official ``RTDETRCriterionv2``
  (vfl + boxes, weights vfl 1 / bbox 5 / giou 2, alpha 0.75, gamma 2, 5 classes) gives the loss dict in
  the JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.synth

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from golden.dfine_inputs import train_targets  # noqa: E402
from golden.synth import (  # noqa: E402
    CONSTRUCTOR_BUFFERS,
    fingerprint,
    synth_image,
    synth_state_dict,
    synth_targets,
)

CONFIGS = {
    "r18": "configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml",
    "r34": "configs/rtdetrv2/rtdetrv2_r34vd_120e_coco.yml",
    "r50": "configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml",
    "r101": "configs/rtdetrv2/rtdetrv2_r101vd_6x_coco.yml",
}
JOBS = [("keys", m) for m in CONFIGS]
JOBS += [("eval", "r18"), ("eval", "r50"), ("train", "r18"), ("criterion", None)]

WEIGHT_SEED = 0
EVAL_IMAGE_SEED = 0
TRAIN_IMAGE_SEEDS = (1, 2)
TRAIN_TARGET_SEED = 3
TRAIN_NUM_TARGETS = [3, 5]
CRITERION_INPUT_SEED = 7
CRITERION_TARGET_SEED = 11
DTYPE = torch.float64
OFFICIAL = {}  # "root": the official clone, given on the command line
PACKAGE = "src.zoo.rtdetr"  # the official package that float64_patches patches
PATCHED_JOBS = ("eval", "train")  # the jobs run with float64_patches.install(PACKAGE, "sincos")
APPLIED = []  # the provenance texts of the patches installed in this process


def official_commit(root) -> str:
    """The commit of the official clone at ``root`` (``git rev-parse HEAD``); a modified work tree is refused."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout

    if git("status", "--porcelain", "--untracked-files=no").strip():
        sys.exit(f"{root} has local changes: the golden files must come from a clean official commit")
    return git("rev-parse", "HEAD").strip()


def _official_root() -> Path:
    return OFFICIAL["root"] / "rtdetrv2_pytorch"


def _provenance(job: str, model: str = None) -> dict:
    import torchvision

    args = " ".join(a for a in (job, model) if a)
    return {
        "official_repo": "lyuwenyu/RT-DETR (rtdetrv2_pytorch)",
        "official_commit": official_commit(OFFICIAL["root"]),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "command": f"PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_rtdetrv2_golden.py <RT-DETR clone> {args}",
        "dtype": "float64" if job != "keys" else "float32 (the layout of the model as built)",
        **({"patches": list(APPLIED)} if APPLIED else {}),
    }


def _build(model: str, **overrides):
    """The official config object with pretrained loading off, plus the given top-level overrides."""
    from src.core import YAMLConfig

    path = _official_root() / CONFIGS[model]
    overrides.setdefault("PResNet", {})["pretrained"] = False
    return YAMLConfig(str(path), **overrides)


def _load_synth_weights(module: torch.nn.Module) -> int:
    """Fill ``module`` with ``synth_state_dict`` over its own keys, strictly; return their fingerprint."""
    own = module.state_dict()
    weights = synth_state_dict({k: list(v.shape) for k, v in own.items()}, seed=WEIGHT_SEED)
    kept = sorted(set(own) - set(weights))
    assert all(k.rpartition(".")[2] in CONSTRUCTOR_BUFFERS for k in kept), kept
    module.load_state_dict({**{k: own[k] for k in kept}, **weights}, strict=True)
    return fingerprint(weights)


def _image_tensor(seed: int, dtype=DTYPE) -> torch.Tensor:
    """[3, 640, 640] in [0, 1], as the official ``ConvertPILImage(float32, scale=True)`` but in ``dtype``."""
    return torch.from_numpy(synth_image(640, 640, seed)).permute(2, 0, 1).to(dtype) / 255.0


def _as_dtype(targets: list, dtype=DTYPE) -> list:
    return [{**t, "boxes": t["boxes"].to(dtype)} for t in targets]


def _write_json(name: str, data: dict) -> None:
    (GOLDEN_DIR / name).write_text(json.dumps(data, indent=1) + "\n")
    print("wrote", name)


def _write_npz(name: str, arrays: dict) -> None:
    np.savez_compressed(GOLDEN_DIR / name, **arrays)
    print("wrote", name, (GOLDEN_DIR / name).stat().st_size, "bytes")


def _top_gaps(values: torch.Tensor, k: int):
    """Among the k largest values: the smallest gap between neighbours, the number of exact ties, and
    the gap between the k-th and (k+1)-th largest (None when there are only k values)."""
    top = values.flatten().double().sort(descending=True).values[: k + 1]
    gaps = top[:-1] - top[1:]
    cut = float(gaps[k - 1]) if len(top) > k else None
    return float(gaps[: k - 1].min()), int((gaps[: k - 1] == 0).sum()), cut


def job_keys(model: str) -> None:
    cfg = _build(model)
    net = cfg.model
    sd = net.state_dict()
    _write_json(
        f"rtdetrv2_{model}_keys.json",
        {
            **_provenance("keys", model),
            "config": CONFIGS[model],
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "state_dict": {k: list(v.shape) for k, v in sd.items()},
            "dtypes": {k: str(v.dtype)[len("torch.") :] for k, v in sd.items() if v.dtype != torch.float32},
            "non_persistent_buffers": [k for k, _ in net.named_buffers() if k not in sd],
        },
    )


def _summaries(prefix: str, maps) -> dict:
    out = {}
    for i, x in enumerate(maps):
        _, _, h, w = x.shape
        out[f"{prefix}_{i}_shape"] = np.array(x.shape, dtype=np.int64)
        out[f"{prefix}_{i}_sum"] = np.float64(x.double().sum())
        out[f"{prefix}_{i}_abs_sum"] = np.float64(x.double().abs().sum())
        out[f"{prefix}_{i}_slice"] = x[0, :16, :: h // 8, :: w // 8].numpy()
    return out


def job_eval(model: str) -> None:
    cfg = _build(model, remap_mscoco_category=False)
    net, postprocessor = cfg.model, cfg.postprocessor
    assert postprocessor.use_focal_loss and postprocessor.num_top_queries == 300
    assert postprocessor.num_classes == 80 and not postprocessor.remap_mscoco_category
    weights_crc32 = _load_synth_weights(net)
    net.to(DTYPE).eval()

    captured = {}
    net.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("backbone", o))
    net.encoder.register_forward_hook(lambda m, i, o: captured.__setitem__("encoder", o))
    net.decoder.enc_score_head.register_forward_hook(lambda m, i, o: captured.__setitem__("enc_logits", o))

    images = _image_tensor(EVAL_IMAGE_SEED)[None]
    with torch.no_grad():
        outputs = net(images)
        result = postprocessor(outputs, torch.tensor([[640, 640]]))[0]

    enc_max_logits = captured["enc_logits"].max(-1).values
    scores_min_gap, scores_num_ties, _ = _top_gaps(result["scores"], 300)
    _, _, score_gap_at_cut = _top_gaps(outputs["pred_logits"].sigmoid(), 300)
    enc_topk_min_gap, enc_topk_num_ties, enc_topk_gap_at_cut = _top_gaps(enc_max_logits, 300)

    _write_npz(
        f"rtdetrv2_{model}_eval.npz",
        {
            "labels": result["labels"].numpy(),
            "boxes": result["boxes"].numpy(),
            "scores": result["scores"].numpy(),
            **_summaries("backbone", captured["backbone"]),
            **_summaries("encoder", captured["encoder"]),
        },
    )
    _write_json(
        f"rtdetrv2_{model}_eval.json",
        {
            **_provenance("eval", model),
            "config": CONFIGS[model],
            "overrides": {"PResNet.pretrained": False, "remap_mscoco_category": False},
            "weight_seed": WEIGHT_SEED,
            "weights_crc32": weights_crc32,
            "image": f"synth_image(640, 640, seed={EVAL_IMAGE_SEED}) -> RGB float64/255, 1x3x640x640",
            "image_crc32": fingerprint(synth_image(640, 640, EVAL_IMAGE_SEED)),
            "orig_target_sizes": [[640, 640]],
            "eval_idx": net.decoder.decoder.eval_idx,
            "scores_min_gap": scores_min_gap,
            "scores_num_ties": scores_num_ties,
            "score_gap_at_cut": score_gap_at_cut,
            "enc_topk_min_gap": enc_topk_min_gap,
            "enc_topk_num_ties": enc_topk_num_ties,
            "enc_topk_gap_at_cut": enc_topk_gap_at_cut,
            "num_distinct_queries_in_top300": len({tuple(b) for b in result["boxes"].tolist()}),
        },
    )


def _indices_lists(indices) -> list:
    return [[src.tolist(), tgt.tolist()] for src, tgt in indices]


def job_train(model: str) -> None:
    cfg = _build(model, RTDETRTransformerv2={"num_denoising": 0})
    net, criterion = cfg.model, cfg.criterion
    assert net.decoder.num_denoising == 0 and criterion.matcher.use_focal_loss
    weights_crc32 = _load_synth_weights(net)
    net.to(DTYPE).train()
    criterion.train()

    images = torch.stack([_image_tensor(s) for s in TRAIN_IMAGE_SEEDS])
    targets_crc32 = fingerprint(synth_targets(TRAIN_NUM_TARGETS, 80, seed=TRAIN_TARGET_SEED))
    targets = train_targets(DTYPE)
    outputs = net(images, targets=targets)
    losses = criterion(outputs, targets)
    assert all(v.dtype == DTYPE for v in losses.values())
    matched = criterion.matcher({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, targets)["indices"]
    _write_json(
        f"rtdetrv2_{model}_train_loss.json",
        {
            **_provenance("train", model),
            "config": CONFIGS[model],
            "overrides": {"PResNet.pretrained": False, "RTDETRTransformerv2.num_denoising": 0},
            "mode": "model.train() (BatchNorm with batch statistics), criterion from the config",
            "weight_seed": WEIGHT_SEED,
            "weights_crc32": weights_crc32,
            "image_seeds": list(TRAIN_IMAGE_SEEDS),
            "image": "synth_image(640, 640, seed) -> RGB float64/255, stacked to 2x3x640x640",
            "images_crc32": fingerprint([synth_image(640, 640, s) for s in TRAIN_IMAGE_SEEDS]),
            "targets": f"golden.dfine_inputs.train_targets(float64): synth_targets({TRAIN_NUM_TARGETS}, 80, "
            f"seed={TRAIN_TARGET_SEED}) (targets_crc32) with the boxes shrunk to a 1/256 grid",
            "targets_crc32": targets_crc32,
            "weight_dict": dict(criterion.weight_dict),
            "losses": {k: v.item() for k, v in losses.items()},
            "total": sum(v.item() for v in losses.values()),
            "matcher_indices_last_layer": _indices_lists(matched),
        },
    )


def _random_outputs(rng: np.random.Generator, batch: int, queries: int, classes: int) -> dict:
    logits = rng.normal(0.0, 1.5, (batch, queries, classes))
    centre = rng.uniform(0.1, 0.9, (batch, queries, 2))
    size = rng.uniform(0.05, 0.5, (batch, queries, 2))
    return {
        "pred_logits": torch.from_numpy(logits),
        "pred_boxes": torch.from_numpy(np.concatenate([centre, size], -1)),
    }


def job_criterion() -> None:
    from src.zoo.rtdetr.denoising import get_contrastive_denoising_training_group
    from src.zoo.rtdetr.matcher import HungarianMatcher
    from src.zoo.rtdetr.rtdetrv2_criterion import RTDETRCriterionv2

    batch, queries, classes, num_denoising = 2, 20, 5, 10
    targets = _as_dtype(synth_targets([3, 2], classes, seed=CRITERION_TARGET_SEED))
    torch.manual_seed(0)  # only the noised queries depend on it, and they are not used
    _, _, _, dn_meta = get_contrastive_denoising_training_group(
        targets,
        classes,
        queries,
        torch.nn.Embedding(classes + 1, 8, padding_idx=classes),
        num_denoising=num_denoising,
    )
    num_dn_queries = dn_meta["dn_num_split"][0]

    rng = np.random.default_rng(CRITERION_INPUT_SEED)
    outputs = _random_outputs(rng, batch, queries, classes)
    outputs["aux_outputs"] = [_random_outputs(rng, batch, queries, classes) for _ in range(2)]
    outputs["enc_aux_outputs"] = [_random_outputs(rng, batch, queries, classes)]
    outputs["enc_meta"] = {"class_agnostic": False}
    outputs["dn_aux_outputs"] = [_random_outputs(rng, batch, num_dn_queries, classes) for _ in range(2)]
    outputs["dn_meta"] = dn_meta

    matcher_args = {
        "weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2},
        "use_focal_loss": True,
        "alpha": 0.25,
        "gamma": 2.0,
    }
    criterion_args = {
        "weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
        "losses": ["vfl", "boxes"],
        "alpha": 0.75,
        "gamma": 2.0,
        "num_classes": classes,
    }
    matcher = HungarianMatcher(**matcher_args)
    criterion = RTDETRCriterionv2(matcher, **criterion_args)
    losses = criterion(outputs, targets)
    assert all(v.dtype == DTYPE for v in losses.values())

    arrays = {}
    named = [("", outputs)] + [(f"aux_{i}_", o) for i, o in enumerate(outputs["aux_outputs"])]
    named += [("enc_0_", outputs["enc_aux_outputs"][0])]
    named += [(f"dn_{i}_", o) for i, o in enumerate(outputs["dn_aux_outputs"])]
    for prefix, out in named:
        arrays[prefix + "pred_logits"] = out["pred_logits"].numpy()
        arrays[prefix + "pred_boxes"] = out["pred_boxes"].numpy()
    for b, t in enumerate(targets):
        arrays[f"target_{b}_labels"] = t["labels"].numpy()
        arrays[f"target_{b}_boxes"] = t["boxes"].numpy()
        arrays[f"dn_positive_idx_{b}"] = dn_meta["dn_positive_idx"][b].numpy()
    arrays["dn_num_group"] = np.int64(dn_meta["dn_num_group"])
    arrays["dn_num_split"] = np.array(dn_meta["dn_num_split"], dtype=np.int64)
    matched = {"main": matcher(outputs, targets)["indices"]}
    matched.update({f"aux_{i}": matcher(o, targets)["indices"] for i, o in enumerate(outputs["aux_outputs"])})
    matched["enc_0"] = matcher(outputs["enc_aux_outputs"][0], targets)["indices"]
    for name, indices in matched.items():
        for b, (src, tgt) in enumerate(indices):
            arrays[f"indices_{name}_{b}"] = torch.stack([src, tgt]).numpy()
    _write_npz("rtdetrv2_criterion.npz", arrays)

    _write_json(
        "rtdetrv2_criterion.json",
        {
            **_provenance("criterion"),
            "batch": batch,
            "num_queries": queries,
            "num_classes": classes,
            "num_denoising": num_denoising,
            "dn_num_group": dn_meta["dn_num_group"],
            "dn_num_split": dn_meta["dn_num_split"],
            "input_seed": CRITERION_INPUT_SEED,
            "targets": f"synth_targets([3, 2], {classes}, seed={CRITERION_TARGET_SEED}), boxes as float64",
            "matcher": matcher_args,
            "criterion": criterion_args,
            "losses": {k: v.item() for k, v in losses.items()},
            "total": sum(v.item() for v in losses.values()),
        },
    )


def main(argv) -> None:
    if not argv:
        sys.exit(__doc__)
    OFFICIAL["root"] = Path(argv[0]).resolve()
    argv = argv[1:]
    if not argv:
        for job, model in JOBS:
            cmd = [sys.executable, __file__, str(OFFICIAL["root"]), job] + ([model] if model else [])
            subprocess.run(cmd, check=True, cwd=REPO_ROOT)
        return
    sys.path.insert(0, str(_official_root()))
    import src  # noqa: F401  (registers every official module)

    torch.set_num_threads(1)  # one reduction order, whatever the machine
    job, model = argv[0], (argv[1] if len(argv) > 1 else None)
    if job in PATCHED_JOBS:
        APPLIED.extend(float64_patches.install(PACKAGE, "sincos"))
    if job == "criterion":
        job_criterion()
    else:
        {"keys": job_keys, "eval": job_eval, "train": job_train}[job](model)


if __name__ == "__main__":
    main(sys.argv[1:])
