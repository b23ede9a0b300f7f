"""Write ``tests/golden/dino_golden.json`` / ``.npz``: the official DINO (IDEA-Research/DINO), R50
4-scale and 5-scale, run in float64 on synthetic weights and images.

The official code is imported at run time from a clone outside this repository (nothing of it is
copied here); the JSON records the clone's commit. How to rerun, from the repository root, with a venv
that holds torch, torchvision and scipy::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_golden.py PATH/TO/DINO

What runs, for ``config/DINO/DINO_4scale.py`` and ``DINO_5scale.py`` (both with their base
``coco_transformer.py``), each built by the official ``build_dino`` with ``num_classes`` 91:

* ``counts``: parameters (shared heads counted once) and every state-dict key with its shape, and
  the groups of keys that name one tensor (the shared class and box heads);
* ``eval``: the top-300 post-processed detections (scores, labels, boxes in pixels of each image's own
  size) of a padded batch of two images of different sizes;
* ``train`` (4-scale): the weighted loss terms of one training forward with contrastive denoising
  (noise drawn after ``torch.manual_seed(TRAIN_NOISE_SEED)``) and without it (``dn_number`` 0 and no
  targets given to the model, as the official ``use_dn=False``);
* ``trajectory`` (4-scale): 20 optimizer steps of the official loop on the same batch (AdamW with the
  official parameter groups, lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient clipping 0.1), the
  noise of step ``s`` drawn after ``torch.manual_seed(TRAIN_NOISE_SEED + s)``, and the learning rate
  divided by 10 after step 10 (the official ``StepLR`` with ``lr_drop`` 1 and epochs of 10
  iterations): every weighted loss term and the total at every step, and the L2 norm of every
  parameter after the last step.

Weights are ``tests/golden/synth.py::synth_state_dict`` over the official keys, one draw per tensor:
keys that alias one tensor (``bbox_embed.{l}``, ``class_embed.{l}``, ``transformer.decoder.bbox_embed.{l}``,
``transformer.decoder.class_embed.{l}``) all get the values drawn for the first of them
(``aliases`` in the JSON): ``tests/golden/dino_inputs.py::official_weights``. Images are
``synth_image``, targets ``synth_targets`` (91 classes): ``dino_inputs.synth_batch``.

Runtime stand-ins, none of them numeric: the compiled deformable-attention op is replaced by the
official pure-PyTorch ``ms_deform_attn_core_pytorch``; ``Tensor.cuda()`` and ``.to('cuda')`` keep
tensors on the CPU; torchvision's ``resnet50`` gets ``weights=None`` instead of ``pretrained=``; a
missing ``timm`` is stubbed (only the Swin / ConvNeXt files import it). The model runs in float64
(``torch.set_default_dtype(torch.float64)`` before it is built, so that the official denoising buffers
made with ``torch.zeros`` are float64 too). Two official steps compute in float32 whatever the
dtype; the shared ``tools/golden/float64_patches.py`` makes them follow the input's dtype, as ours
do (``install("models.dino")``: ``sine_hw``, the image sine encoding; ``valid_ratio``, the valid
ratios). The others stay float32 on both sides, as ours compute them: the proposals' anchors and the
query sine embedding's frequencies (both exact grids up to one float32 rounding), and the label-flip
draws.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
import official_detr  # noqa: E402
from official_detr import IMAGE_SEEDS, IMAGE_SIZES, NUM_CLASSES, NUM_TARGETS, TARGET_SEED, WEIGHT_SEED  # noqa: E402

GOLDEN = REPO_ROOT / "tests" / "golden" / "dino_golden"
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_golden.py <DINO clone>"
CONFIGS = {"4scale": "config/DINO/DINO_4scale.py", "5scale": "config/DINO/DINO_5scale.py"}
TRAIN_NOISE_SEED = 7
TRAJECTORY_STEPS = 20
LR_DROP_AFTER = 10


def _stub_runtime(root: Path):
    """The stand-ins of the module docstring; afterwards ``models.dino`` imports on a CPU-only torch."""
    sys.path.insert(0, str(root))
    os.chdir(root)
    official_detr.stub_missing_modules()
    official_detr.keep_tensors_on_cpu()
    official_detr.resnets_without_pretrained()
    official_detr.pure_pytorch_deformable_attention("models.dino.ops")


def _config(config: str, **overrides) -> argparse.Namespace:
    values = {}
    for path in ("config/DINO/coco_transformer.py", config):
        exec(Path(path).read_text(), {}, values)
    values.pop("_base_", None)
    values.update(device="cpu", num_classes=NUM_CLASSES, dn_labelbook_size=NUM_CLASSES, **overrides)
    return argparse.Namespace(**values)


def _build(config: str):
    from models.dino.dino import build_dino

    torch.manual_seed(0)
    model, criterion, postprocessors = build_dino(_config(config))
    # The deformable attention's offset bias is made from a float32 grid whatever the default dtype.
    return model.double(), criterion, postprocessors


def _weighted(loss_dict: dict, weight_dict: dict) -> dict:
    return {k: float(v * weight_dict[k]) for k, v in loss_dict.items() if k in weight_dict}


def job_eval(config: str, counts: dict) -> tuple:
    model, _, postprocessors = _build(config)
    crc = official_detr.load_synthetic(model, counts)
    model.eval()
    samples, _ = official_detr.official_batch()
    sizes = torch.tensor([list(s) for s in IMAGE_SIZES])
    with torch.no_grad():
        outputs = model(samples)
        results = postprocessors["bbox"](outputs, sizes)
    logits = outputs["pred_logits"].sigmoid().flatten(1)
    top = logits.topk(301, dim=1).values
    arrays = {f"{key}_{i}": r[key].numpy() for i, r in enumerate(results) for key in ("scores", "labels", "boxes")}
    return {"weights_crc32": crc, "min_score_gap_at_cut": float((top[:, 299] - top[:, 300]).min())}, arrays


def _official_step_parts(config: str, counts: dict, dn: bool):
    model, criterion, _ = _build(config)
    if not dn:
        model.dn_number = 0
    official_detr.load_synthetic(model, counts)
    model.train()
    return model, criterion


def _forward(model, criterion, samples, targets, dn: bool):
    outputs = model(samples, targets) if dn else model(samples)
    loss_dict = criterion(outputs, targets)
    weighted = {k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict}
    return weighted, sum(weighted.values())


def job_train(config: str, counts: dict) -> dict:
    out = {}
    samples, targets = official_detr.official_batch()
    for dn in (True, False):
        model, criterion = _official_step_parts(config, counts, dn)
        torch.manual_seed(TRAIN_NOISE_SEED)
        weighted, total = _forward(model, criterion, samples, targets, dn)
        out["dn" if dn else "no_dn"] = {"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)}
    return out


def job_trajectory(config: str, counts: dict) -> dict:
    from util.get_param_dicts import get_param_dict

    args = _config(config)
    model, criterion = _official_step_parts(config, counts, True)
    optimizer = torch.optim.AdamW(get_param_dict(args, model), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    samples, targets = official_detr.official_batch()
    steps = []
    for step in range(TRAJECTORY_STEPS):
        torch.manual_seed(TRAIN_NOISE_SEED + step)
        weighted, total = _forward(model, criterion, samples, targets, True)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
        if step + 1 == LR_DROP_AFTER:
            scheduler.step()
        steps.append({"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)})
    norms = {n: float(p.detach().norm()) for n, p in model.named_parameters()}
    return {"steps": steps, "parameter_norms": norms, "lr": args.lr, "lr_backbone": args.lr_backbone,
            "weight_decay": args.weight_decay, "clip_max_norm": args.clip_max_norm}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dino", type=Path, help="a clone of IDEA-Research/DINO")
    args = parser.parse_args()
    root = args.dino.resolve()
    commit = official_detr.clean_commit(root)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _stub_runtime(root)
    patches = float64_patches.install("models.dino")
    golden = {"source": "IDEA-Research/DINO", "commit": commit, "command": COMMAND, "torch": torch.__version__,
              "dtype": "float64", "patches": patches,
              "num_classes": NUM_CLASSES, "image_sizes": IMAGE_SIZES, "image_seeds": IMAGE_SEEDS,
              "num_targets": NUM_TARGETS, "target_seed": TARGET_SEED, "weight_seed": WEIGHT_SEED,
              "train_noise_seed": TRAIN_NOISE_SEED, "lr_drop_after": LR_DROP_AFTER,
              "pixel_mean": official_detr.PIXEL_MEAN, "pixel_std": official_detr.PIXEL_STD, "models": {}}
    arrays = {}
    for name, config in CONFIGS.items():
        counts = official_detr.model_counts(_build(config)[0])
        entry = {"config": config, **counts}
        entry["eval"], eval_arrays = job_eval(config, counts)
        arrays.update({f"{name}/{k}": v for k, v in eval_arrays.items()})
        if name == "4scale":
            entry["train"] = job_train(config, counts)
            entry["trajectory"] = job_trajectory(config, counts)
        golden["models"][name] = entry
        print(name, entry["num_parameters"], entry["eval"], flush=True)
    os.chdir(REPO_ROOT)
    GOLDEN.with_suffix(".json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
