"""Write ``tests/golden/dab_deformable_detr_golden.json`` / ``.npz``: the official (DN-)DAB-Deformable-DETR
of IDEA-Research/DN-DETR (``main.py -m dn_dab_deformable_detr --transformer_activation relu``, R50, 4
levels, 91 classes), run in float64 on synthetic weights and images.

The official code is imported at run time from a clone outside this repository (nothing of it is
copied here); the JSON records the clone's commit. How to rerun, from the repository root, with a venv
that holds torch, torchvision and scipy::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dab_deformable_detr_golden.py PATH/TO/DN-DETR

The model is built by the official ``main.build_model_main`` from ``main.get_args_parser()`` with the
arguments above (``--use_dn`` for the runs with denoising; ``--use_dn`` changes only the criterion's
weights, not the model). What runs:

* ``counts``: parameters and every state-dict key with its shape, and the keys that name the tensor of
  another key (``transformer.decoder.bbox_embed.{l}``, the decoder's handle on ``bbox_embed.{l}``);
* ``eval``: the top-300 detections of a padded batch of two images of different sizes (scores, labels,
  boxes in pixels of each image's own size), taken as the official ``PostProcess`` takes its top 100
  (the official evaluation keeps 100: it ignores ``--num_select``); the script checks that the first
  100 are the official ``PostProcess`` output;
* ``train``: the weighted loss terms of one training forward with DN-DETR's denoising (``--use_dn``,
  noise drawn after ``torch.manual_seed(TRAIN_NOISE_SEED)``) and without it;
* ``trajectory`` (``no_dn`` and ``dn``): 20 optimizer steps of the official loop on the same batch
  (AdamW with main.py's two parameter groups: lr 1e-4, "backbone" 1e-5, weight decay 1e-4; gradient
  clipping 0.1), the noise of step ``s`` drawn after ``torch.manual_seed(TRAIN_NOISE_SEED + s)``, the
  learning rate divided by 10 after step 10 (``StepLR`` with ``lr_drop`` 1 and epochs of 10
  iterations): every weighted loss term and the total at every step, and the L2 norm of every
  parameter after the last step.

Denoising off. The official training without ``--use_dn`` does not run: ``engine.train_one_epoch``
then calls ``model(samples)``, whose ``prepare_for_dn`` unpacks ``dn_args=None`` in training (and
the model returns ``(outputs, mask_dict)``, which the criterion does not take). Its intent is plain:
no denoising queries. The golden runs it as ``model(samples, dn_args=num_patterns)`` with
``prepare_for_dn`` answering as in eval (its own inference branch: the learned queries alone, no
attention mask), and the criterion with an empty ``mask_dict`` (its denoising terms are then zeros,
which the weight dict without ``--use_dn`` leaves out).

Weights are ``tests/golden/synth.py::synth_state_dict`` over the official keys, one draw per tensor;
alias keys get the values drawn for their owner (``aliases`` in the JSON):
``tests/golden/dino_inputs.py::official_weights``. Images are ``synth_image``, targets
``synth_targets`` (91 classes): ``dino_inputs.synth_batch``.

Runtime stand-ins, none of them numeric: ``addict`` and ``yapf`` (imported by ``util/slconfig.py``,
unused here) and a missing ``timm`` (the Swin file of another model) are stubbed; the compiled
deformable-attention op is replaced by the official pure-PyTorch ``ms_deform_attn_core_pytorch``;
``Tensor.cuda()`` and ``.to('cuda')`` keep tensors on the CPU; torchvision's ``resnet50`` gets
``weights=None`` instead of ``pretrained=``. The model runs in float64
(``torch.set_default_dtype(torch.float64)`` before it is built, so that the denoising's ``torch.zeros``
are float64 too). Two official steps compute in float32 whatever the dtype; the shared
``tools/golden/float64_patches.py`` makes them follow the input's dtype, as ours do
(``install("models.dn_dab_deformable_detr")``: ``sine``, the image sine encoding; ``valid_ratio``,
the valid ratios). The query sine embedding's frequencies stay float32 on both sides, as ours compute
them.
"""
import argparse
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
import official_detr  # noqa: E402
from official_detr import IMAGE_SEEDS, IMAGE_SIZES, NUM_CLASSES, NUM_TARGETS, TARGET_SEED, WEIGHT_SEED  # noqa: E402

GOLDEN = REPO_ROOT / "tests" / "golden" / "dab_deformable_detr_golden"
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dab_deformable_detr_golden.py <DN-DETR clone>"
PACKAGE = "models.dn_dab_deformable_detr"
ARGV = ["-m", "dn_dab_deformable_detr", "--transformer_activation", "relu", "--coco_path", "/nonexistent"]
TRAIN_NOISE_SEED = 7
TRAJECTORY_STEPS = 20
LR_DROP_AFTER = 10
TOP_K = 300
OFFICIAL_TOP_K = 100


def _stub_runtime(root: Path):
    """The stand-ins of the module docstring; afterwards ``main`` and ``models.dn_dab_deformable_detr``
    import on a CPU-only torch."""
    sys.path.insert(0, str(root))
    os.chdir(root)
    addict = types.ModuleType("addict")
    addict.Dict = dict
    yapf_api = types.ModuleType("yapf.yapflib.yapf_api")
    yapf_api.FormatCode = lambda source, **kwargs: (source, False)
    for name, module in (("addict", addict), ("yapf", types.ModuleType("yapf")),
                         ("yapf.yapflib", types.ModuleType("yapf.yapflib")), ("yapf.yapflib.yapf_api", yapf_api)):
        sys.modules.setdefault(name, module)
    official_detr.stub_missing_modules()
    official_detr.keep_tensors_on_cpu()
    official_detr.resnets_without_pretrained(("resnet50",))
    official_detr.pure_pytorch_deformable_attention("models.dn_dab_deformable_detr.ops")


def _denoising_off():
    """``prepare_for_dn`` answering a training forward given ``dn_args=num_patterns`` (an int) with its
    inference branch: no denoising queries (the module docstring's "Denoising off")."""
    from models.dn_dab_deformable_detr import dab_deformable_detr

    official = dab_deformable_detr.prepare_for_dn

    def prepare_for_dn(dn_args, tgt_weight, embedweight, batch_size, training, *args):
        if isinstance(dn_args, int):
            training = False
        return official(dn_args, tgt_weight, embedweight, batch_size, training, *args)

    dab_deformable_detr.prepare_for_dn = prepare_for_dn


def _args(dn: bool, output_dir: str) -> argparse.Namespace:
    import main

    args = main.get_args_parser().parse_args(ARGV + ["--output_dir", output_dir] + (["--use_dn"] if dn else []))
    args.device = "cpu"
    return args


def _build(args):
    import main

    torch.manual_seed(0)
    model, criterion, postprocessors = main.build_model_main(args)
    return model.double(), criterion, postprocessors


def job_eval(args, counts: dict) -> tuple:
    model, _, postprocessors = _build(args)
    crc = official_detr.load_synthetic(model, counts)
    model.eval()
    samples, _ = official_detr.official_batch()
    sizes = torch.tensor([list(s) for s in IMAGE_SIZES])
    with torch.no_grad():
        outputs, mask_dict = model(samples, dn_args=args.num_patterns)
        official = postprocessors["bbox"](outputs, sizes)
    assert mask_dict is None
    scores, labels, boxes = official_detr.topk_detections(outputs, sizes, TOP_K)
    for i, result in enumerate(official):
        assert len(result["scores"]) == OFFICIAL_TOP_K
        assert torch.equal(result["scores"], scores[i, :OFFICIAL_TOP_K])
        assert torch.equal(result["labels"], labels[i, :OFFICIAL_TOP_K])
        assert torch.equal(result["boxes"], boxes[i, :OFFICIAL_TOP_K])
    top = outputs["pred_logits"].sigmoid().flatten(1).topk(TOP_K + 1, dim=1).values
    arrays = {}
    for i in range(len(sizes)):
        arrays.update({f"scores_{i}": scores[i].numpy(), f"labels_{i}": labels[i].numpy(),
                       f"boxes_{i}": boxes[i].numpy()})
    return {"weights_crc32": crc, "top_k": TOP_K, "official_top_k": OFFICIAL_TOP_K,
            "min_score_gap_at_cut": float((top[:, TOP_K - 1] - top[:, TOP_K]).min())}, arrays


def _official_step_parts(args, counts: dict):
    model, criterion, _ = _build(args)
    official_detr.load_synthetic(model, counts)
    model.train()
    criterion.train()
    return model, criterion


def _forward(model, criterion, samples, targets, args):
    if args.use_dn:
        dn_args = (targets, args.scalar, args.label_noise_scale, args.box_noise_scale, args.num_patterns)
        outputs, mask_dict = model(samples, dn_args=dn_args)
    else:
        outputs, mask_dict = model(samples, dn_args=args.num_patterns)
        assert mask_dict is None
        mask_dict = {}
    loss_dict = criterion(outputs, targets, mask_dict)
    weighted = {k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict}
    return weighted, sum(weighted.values())


def job_train(args_by_dn: dict, counts: dict) -> dict:
    out = {}
    samples, targets = official_detr.official_batch()
    for name, args in args_by_dn.items():
        model, criterion = _official_step_parts(args, counts)
        torch.manual_seed(TRAIN_NOISE_SEED)
        weighted, total = _forward(model, criterion, samples, targets, args)
        out[name] = {"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)}
    return out


def job_trajectory(args, counts: dict) -> dict:
    model, criterion = _official_step_parts(args, counts)
    # main.py's parameter groups.
    param_dicts = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad],
         "lr": args.lr_backbone},
    ]
    optimizer = torch.optim.AdamW(param_dicts, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    samples, targets = official_detr.official_batch()
    steps = []
    for step in range(TRAJECTORY_STEPS):
        torch.manual_seed(TRAIN_NOISE_SEED + step)
        weighted, total = _forward(model, criterion, samples, targets, args)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
        if step + 1 == LR_DROP_AFTER:
            scheduler.step()
        steps.append({"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)})
        print(f"  step {step}: {float(total):.6f}", flush=True)
    norms = {n: float(p.detach().norm()) for n, p in model.named_parameters()}
    return {"steps": steps, "parameter_norms": norms, "lr": args.lr, "lr_backbone": args.lr_backbone,
            "weight_decay": args.weight_decay, "clip_max_norm": args.clip_max_norm}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dn_detr", type=Path, help="a clone of IDEA-Research/DN-DETR")
    parser.add_argument("--only", nargs="+", choices=["eval", "train", "trajectory_no_dn", "trajectory_dn"],
                        help="rerun these jobs only, keeping the golden's other entries (same commit and seeds)")
    args = parser.parse_args()
    root = args.dn_detr.resolve()
    commit = official_detr.clean_commit(root)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _stub_runtime(root)
    patches = float64_patches.install(PACKAGE)
    _denoising_off()
    scratch = str(REPO_ROOT / "output" / "dab_deformable_detr_golden")
    args_by_dn = {"dn": _args(True, scratch), "no_dn": _args(False, scratch)}
    golden = {"source": "IDEA-Research/DN-DETR", "commit": commit, "command": COMMAND, "argv": ARGV,
              "torch": torch.__version__, "dtype": "float64", "patches": patches,
              "num_classes": NUM_CLASSES, "image_sizes": IMAGE_SIZES, "image_seeds": IMAGE_SEEDS,
              "num_targets": NUM_TARGETS, "target_seed": TARGET_SEED, "weight_seed": WEIGHT_SEED,
              "train_noise_seed": TRAIN_NOISE_SEED, "lr_drop_after": LR_DROP_AFTER,
              "pixel_mean": official_detr.PIXEL_MEAN, "pixel_std": official_detr.PIXEL_STD,
              "denoising": {k: getattr(args_by_dn["dn"], k) for k in ("scalar", "label_noise_scale",
                                                                       "box_noise_scale")}}
    jobs = set(args.only or ["eval", "train", "trajectory_no_dn", "trajectory_dn"])
    arrays = {}
    if args.only:
        previous = json.loads(GOLDEN.with_suffix(".json").read_text())
        if previous["commit"] != commit:
            sys.exit(f"--only needs the golden's commit {previous['commit']}, the clone is at {commit}")
        golden = previous
        with np.load(GOLDEN.with_suffix(".npz")) as stored:
            arrays = dict(stored)
    counts = official_detr.model_counts(_build(args_by_dn["no_dn"])[0])
    golden.update(counts)
    print("parameters", counts["num_parameters"], flush=True)
    if "eval" in jobs:
        golden["eval"], arrays = job_eval(args_by_dn["no_dn"], counts)
        print("eval", golden["eval"], flush=True)
    if "train" in jobs:
        golden["train"] = job_train(args_by_dn, counts)
        print("train", {k: v["total"] for k, v in golden["train"].items()}, flush=True)
    for name in ("no_dn", "dn"):
        if f"trajectory_{name}" in jobs:
            print(f"trajectory {name}", flush=True)
            golden.setdefault("trajectory", {})[name] = job_trajectory(args_by_dn[name], counts)
    os.chdir(REPO_ROOT)
    GOLDEN.with_suffix(".json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
