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
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from golden.dino_inputs import official_weights, synth_batch  # noqa: E402
from golden.synth import fingerprint  # noqa: E402

import float64_patches  # noqa: E402  (tools/golden, this script's directory)

GOLDEN = REPO_ROOT / "tests" / "golden" / "dino_golden"
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_golden.py <DINO clone>"
CONFIGS = {"4scale": "config/DINO/DINO_4scale.py", "5scale": "config/DINO/DINO_5scale.py"}
NUM_CLASSES = 91
WEIGHT_SEED = 0
IMAGE_SIZES = ((256, 320), (224, 288))  # (height, width): the second image is padded in the batch
IMAGE_SEEDS = (0, 1)
NUM_TARGETS = (3, 5)
TARGET_SEED = 2
TRAIN_NOISE_SEED = 7
TRAJECTORY_STEPS = 20
LR_DROP_AFTER = 10
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def _stub_runtime(root: Path):
    """The stand-ins of the module docstring; afterwards ``models.dino`` imports on a CPU-only torch."""
    sys.path.insert(0, str(root))
    os.chdir(root)
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        timm = types.ModuleType("timm")
        models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = torch.nn.Identity
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (list, tuple)) else (x, x)
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        timm.models, models.layers = models, layers
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" or (isinstance(a, torch.device) and a.type == "cuda") else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    import torchvision

    for name in ("resnet50", "resnet101"):
        build = getattr(torchvision.models, name)

        def without_pretrained(*args, _build=build, pretrained=False, **kwargs):
            return _build(*args, weights=None, **kwargs)

        setattr(torchvision.models, name, without_pretrained)
    from models.dino.ops.functions import ms_deform_attn_func
    from models.dino.ops.modules import ms_deform_attn

    class PurePyTorch:
        @staticmethod
        def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
            return ms_deform_attn_func.ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations,
                                                                   attention_weights)

    ms_deform_attn.MSDeformAttnFunction = PurePyTorch


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


def alias_groups(model: torch.nn.Module) -> dict:
    """State-dict key -> the first key naming the same tensor (only for the keys that alias another)."""
    first, aliases = {}, {}
    for key, value in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(value.data_ptr(), key)
        if owner != key:
            aliases[key] = owner
    return aliases


def batch():
    """The official inputs: a padded NestedTensor of the two normalised float64 images, and targets
    (labels, cxcywh boxes normalised by each image's size)."""
    from util.misc import nested_tensor_from_tensor_list

    mean, std = torch.tensor(PIXEL_MEAN)[:, None, None], torch.tensor(PIXEL_STD)[:, None, None]
    images, targets = synth_batch(IMAGE_SIZES, IMAGE_SEEDS, NUM_TARGETS, NUM_CLASSES, TARGET_SEED)
    images = [torch.from_numpy(image).permute(2, 0, 1).double() for image in images]
    samples = nested_tensor_from_tensor_list([(image / 255 - mean) / std for image in images])
    return samples, targets


def _weighted(loss_dict: dict, weight_dict: dict) -> dict:
    return {k: float(v * weight_dict[k]) for k, v in loss_dict.items() if k in weight_dict}


def job_counts(config: str) -> dict:
    model, _, _ = _build(config)
    sd = model.state_dict()
    return {"num_parameters": sum(p.numel() for p in model.parameters()),
            "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "state_dict": {k: list(v.shape) for k, v in sd.items()}, "aliases": alias_groups(model)}


def _load(model, counts):
    weights = official_weights(counts["state_dict"], counts["aliases"], WEIGHT_SEED)
    model.load_state_dict(weights, strict=True)
    return fingerprint({k: v for k, v in weights.items() if k not in counts["aliases"]})


def job_eval(config: str, counts: dict) -> tuple:
    model, _, postprocessors = _build(config)
    crc = _load(model, counts)
    model.eval()
    samples, _ = batch()
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
    _load(model, counts)
    model.train()
    return model, criterion


def _forward(model, criterion, samples, targets, dn: bool):
    outputs = model(samples, targets) if dn else model(samples)
    loss_dict = criterion(outputs, targets)
    weighted = {k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict}
    return weighted, sum(weighted.values())


def job_train(config: str, counts: dict) -> dict:
    out = {}
    samples, targets = batch()
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
    samples, targets = batch()
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
    if subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True).stdout:
        sys.exit(f"{root} has local changes; the golden must come from a clean commit")
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _stub_runtime(root)
    patches = float64_patches.install("models.dino")
    golden = {"source": "IDEA-Research/DINO", "commit": commit, "command": COMMAND, "torch": torch.__version__,
              "dtype": "float64", "patches": patches,
              "num_classes": NUM_CLASSES, "image_sizes": IMAGE_SIZES, "image_seeds": IMAGE_SEEDS,
              "num_targets": NUM_TARGETS, "target_seed": TARGET_SEED, "weight_seed": WEIGHT_SEED,
              "train_noise_seed": TRAIN_NOISE_SEED, "lr_drop_after": LR_DROP_AFTER,
              "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "models": {}}
    arrays = {}
    for name, config in CONFIGS.items():
        counts = job_counts(config)
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
