"""Write ``tests/golden/refactor_golden.{json,npz}``: what our own models compute today, so that a
refactor which must not change them (the composed decoder and criterion, and any later one) can
prove it did not.

No official code is involved: the goldens are made by this repository's code at the commit recorded
in the JSON (``made_by``), in float64, and checked by ``tests/test_refactor_golden.py``.

    bash tools/env.sh python tools/golden/make_refactor_golden.py

Contents:

* ``configs``: for every file of ``configs/`` (quick starts included), the model's parameter count,
  trainable count, ``state_dict_sha256`` (SHA-256 of the ``[key, shape, dtype]`` list of its state
  dict, sorted by key: the order in which modules register their tensors is not part of the layout)
  and ``param_groups`` (per optimizer group, in order: lr, weight decay, number of tensors, number of
  elements) of the config's optimizer.
* ``runs``: one config per family (RT-DETRv2, DEIM-RT-DETRv2, D-FINE, DEIM-D-FINE, DEIMv2 HGNetv2,
  DEIMv2 DINOv3), float64 with the deterministic weights of :func:`fill_state_dict`, on a padded
  batch of two images (320x320 and 256x288, :func:`batch`):

  - ``eval``: the top-300 detections (scores, labels, absolute boxes of the padded input) and the
    decoder's boxes (npz ``<run>_eval_*``); D-FINE-family runs also in the deploy form
    (``<run>_deploy_*``);
  - ``train``: every loss term of the training forward with denoising (torch seed 0 before the
    forward: denoising noise and DINOv3's RoPE rescale are drawn from it) and the norm of the
    gradient of the loss sum per state-dict prefix group (``grad_norms``); DEIMv2 runs once more at
    an epoch past the matcher switch (``train_switched``).
"""
import argparse
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tests"))

from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from dfine.config import load_config  # noqa: E402
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy  # noqa: E402
from golden.synth import synth_image, synth_targets  # noqa: E402

RUNS = {
    "rtdetrv2": "rtdetrv2_r18.py",
    "deim_rtdetrv2": "deim_rtdetrv2_r18.py",
    "dfine": "dfine_hgnetv2_n.py",
    "deim_dfine": "deim_dfine_hgnetv2_n.py",
    "deimv2_hgnetv2": "deimv2_hgnetv2_atto.py",
    "deimv2_dinov3": "deimv2_dinov3_s.py",
}
IMAGE_SIZES = [(320, 320), (256, 288)]  # (height, width): the second image is padded in the batch
# State-dict leaves computed by the constructor from the config (anchor grids, sampling-point
# scales, RoPE periods, W(n)'s hyper-parameters) or counting steps: the model keeps its own.
OWN_LEAVES = frozenset(
    {"anchors", "valid_mask", "num_points_scale", "periods", "up", "reg_scale", "num_batches_tracked"}
)


def config_files():
    return sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.py")
                  if "common" not in p.parts)


def load(config, *overrides):
    return load_config(str(ROOT / "configs" / config), list(overrides))


def state_dict_sha256(model) -> str:
    layout = sorted([k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items())
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def param_groups(cfg, model):
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    return [[g["lr"], g["weight_decay"], len(g["params"]), sum(p.numel() for p in g["params"])]
            for g in optimizer.param_groups]


def recipe(cfg):
    """The resolved recipe sections of the config, without the optimizer's parameter rules, as plain
    JSON values."""
    from omegaconf import OmegaConf

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items() if not (k == "params" and isinstance(v, dict))}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"

    sections = ["dataloader", "train", "optimizer", "lr_multiplier"]
    return plain(OmegaConf.to_container(OmegaConf.masked_copy(cfg, sections), resolve=True))


def config_entry(config):
    cfg = load(config)
    model = instantiate(cfg.model)
    return {
        "recipe": recipe(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "state_dict_sha256": state_dict_sha256(model),
        "param_groups": param_groups(cfg, model),
    }


def _fill(key, shape):
    """Deterministic values for one state-dict entry, from a generator seeded by its key."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rpartition(".")[2]

    def uniform(low, high):
        return low + (high - low) * rng.random(shape)

    if leaf == "running_var":
        return uniform(0.5, 1.5)
    if leaf == "running_mean" or leaf.endswith("bias"):
        return uniform(-0.1, 0.1)
    if len(shape) <= 1:  # norm scales, LayerScale gammas, learnable affine scales
        return uniform(0.9, 1.1)
    # Unit-variance inputs stay unit variance: U(+-sqrt(3 / fan_in)).
    bound = float(np.sqrt(3.0 / np.prod(shape[1:])))
    return uniform(-bound, bound)


def fill_state_dict(model):
    """Load deterministic float64 weights that depend only on each entry's key and shape (not on the
    order in which modules are created), keeping the constructor-computed entries (``OWN_LEAVES``)."""
    state = model.state_dict()
    filled = {k: (v if k.rpartition(".")[2] in OWN_LEAVES or not v.is_floating_point()
                  else torch.from_numpy(_fill(k, tuple(v.shape))).to(v.dtype))
              for k, v in state.items()}
    model.load_state_dict(filled)
    return model


def build(config, *overrides):
    model = instantiate(load(config, *overrides).model).double()
    return fill_state_dict(model)


def batch(num_classes, with_targets):
    inputs = []
    targets = synth_targets([3, 5], num_classes, seed=3)
    for seed, ((h, w), target) in enumerate(zip(IMAGE_SIZES, targets)):
        image = torch.from_numpy(synth_image(h, w, seed)).permute(2, 0, 1).contiguous()
        x = {"image": image, "height": h, "width": w}
        if with_targets:
            instances = Instances((h, w))
            scale = torch.tensor([w, h, w, h], dtype=torch.float64)
            instances.gt_boxes = Boxes(box_cxcywh_to_xyxy(target["boxes"].double()) * scale)
            instances.gt_classes = target["labels"]
            x["instances"] = instances
        inputs.append(x)
    return inputs


def eval_outputs(model, num_classes):
    """``{scores, labels, boxes, pred_boxes}``: the top detections of the padded batch and the
    decoder's boxes, float64."""
    model.eval()
    inputs = batch(num_classes, with_targets=False)
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        outputs = model.decoder(model.encoder(model.backbone(images.tensor)), padding_mask=model.padding_mask(images))
        scores, labels, boxes = model.detections(outputs.final, *images.tensor.shape[-2:])
    return {"scores": scores, "labels": labels, "boxes": boxes, "pred_boxes": outputs.final.boxes}


def grad_group(key):
    """The state-dict prefix whose gradient norm is recorded: backbone, encoder, and each direct
    child of the decoder (e.g. ``decoder.dec_bbox_head``, ``decoder.decoder.layers``)."""
    parts = key.split(".")
    if parts[0] != "decoder":
        return parts[0]
    return ".".join(parts[:3] if parts[1] == "decoder" else parts[:2])


def train_outputs(model, num_classes, epoch=0):
    model.train()
    inputs = batch(num_classes, with_targets=True)
    for x in inputs:
        x["epoch"] = epoch
    torch.manual_seed(0)
    with EventStorage():
        losses = model(inputs)
    total = sum(losses.values())
    model.zero_grad()
    total.backward()
    names = {id(p): k for k, p in model.state_dict(keep_vars=True).items()}
    squares = {}
    for p in model.parameters():
        if p.grad is not None:
            group = grad_group(names[id(p)])
            squares[group] = squares.get(group, 0.0) + float(p.grad.double().pow(2).sum())
    return {"losses": {k: float(v.detach()) for k, v in losses.items()}, "total": float(total.detach()),
            "grad_norms": {k: v ** 0.5 for k, v in sorted(squares.items())}}


def run_entry(name, config):
    cfg = load(config)
    num_classes = cfg.model.decoder.num_classes
    arrays = {}
    model = build(config)
    entry = {"config": config, "train": train_outputs(model, num_classes)}
    if getattr(cfg.model.criterion.matcher, "change_matcher", False):
        epoch = cfg.model.criterion.matcher.matcher_change_epoch
        entry["train_switched"] = {"epoch": epoch, **train_outputs(build(config), num_classes, epoch)}
    for key, value in eval_outputs(build(config), num_classes).items():
        arrays[f"{name}_eval_{key}"] = value.numpy()
    if cfg.model.decoder.box_head.get("reg_max") is not None:
        for key, value in eval_outputs(build(config).deploy(), num_classes).items():
            arrays[f"{name}_deploy_{key}"] = value.numpy()
    return entry, arrays


def make():
    golden = {"made_by": {"script": "tools/golden/make_refactor_golden.py", "commit": _commit(),
                          "torch": torch.__version__, "dtype": "float64"},
              "configs": {c: config_entry(c) for c in config_files()}, "runs": {}}
    arrays = {}
    for name, config in RUNS.items():
        golden["runs"][name], run_arrays = run_entry(name, config)
        arrays.update(run_arrays)
    return golden, arrays


def _differences(old, new, path=""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}")
    elif old != new:
        yield f"{path[1:]}: {old!r} -> {new!r}"


def update_recipes(path):
    golden = json.loads(path.read_text())
    for config, entry in golden["configs"].items():
        new = recipe(load(config))
        for line in _differences(entry["recipe"], new):
            print(f"{config}: {line}")
        entry["recipe"] = new
    golden["made_by"]["recipes_commit"] = _commit()
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


def _commit():
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(GOLDEN), help="folder of refactor_golden.{json,npz}")
    parser.add_argument("--recipes-only", action="store_true",
                        help="rewrite only the configs' recipes of the existing golden (after an intended change of "
                             "recipe; prints what changed) and record the commit in made_by.recipes_commit")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same reductions whatever the machine's core count
    out = Path(args.out)
    if args.recipes_only:
        update_recipes(out / "refactor_golden.json")
        return
    golden, arrays = make()
    (out / "refactor_golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(out / "refactor_golden.npz", **arrays)


if __name__ == "__main__":
    main()
