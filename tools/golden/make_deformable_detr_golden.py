"""Write ``tests/golden/deformable_detr_golden.json`` / ``.npz``: the official two-stage Deformable-DETR with
iterative box refinement of fundamentalvision/Deformable-DETR
(``configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh``: ``main.py
--with_box_refine --two_stage``, every other argument main.py's default; R50, 4 levels, 91 classes), run
in float64 on synthetic weights and images.

The official code is imported at run time from a clone outside this repository (nothing of it is
copied here); the JSON records the clone's commit. How to rerun, from the repository root, with a venv
that holds torch, torchvision, scipy and pycocotools::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deformable_detr_golden.py PATH/TO/Deformable-DETR

The model is built by the official ``models.build_model`` from ``main.get_args_parser()`` with the
arguments above. What runs:

* ``counts``: parameters and every state-dict key with its shape, and the keys that name the tensor of
  another key (``transformer.decoder.class_embed.{l}`` and ``transformer.decoder.bbox_embed.{l}``, the
  decoder's handles on ``class_embed.{l}`` / ``bbox_embed.{l}``; ``l = 6`` are the encoder's heads);
* ``eval``: the top-300 detections of a padded batch of two images of different sizes (scores, labels,
  boxes in pixels of each image's own size), taken as the official ``PostProcess`` takes its fixed top
  100; the script checks that the first 100 are the official ``PostProcess`` output;
* ``train``: the weighted loss terms of one training forward (every decoder layer and the encoder's
  ``_enc`` terms), with dropout 0 (``--dropout 0``; see below);
* ``trajectory``: 20 optimizer steps of the official loop on the same batch with dropout 0 (AdamW with
  main.py's three parameter groups: lr 2e-4; "backbone.0" at 2e-5; "reference_points" and
  "sampling_offsets" at lr x ``lr_linear_proj_mult`` 0.1 = 2e-5; weight decay 1e-4; gradient clipping
  0.1), the learning rate divided by 10 after step 10 (``StepLR`` with ``lr_drop`` 1 and epochs of 10
  iterations): every weighted loss term and the total at every step, and the L2 norm of every
  parameter after the last step.

Dropout. The official recipe trains with dropout 0.1 in the encoder and decoder layers (and the
decoder's self-attention weights). Random masks cannot be matched draw for draw between two
implementations, so the training runs use dropout 0 on both sides; eval runs the default model
(dropout inactive in eval).

Weights are ``tests/golden/synth.py::synth_state_dict`` over the official keys, one draw per tensor;
alias keys get the values drawn for their owner (``aliases`` in the JSON):
``tests/golden/dino_inputs.py::official_weights``. Images are ``synth_image``, targets
``synth_targets`` (91 classes): ``dino_inputs.synth_batch``.

Runtime stand-ins, none of them numeric:

* the compiled ``MultiScaleDeformableAttention`` op is an empty module, and ``MSDeformAttnFunction`` in
  ``models/ops/modules/ms_deform_attn.py`` is replaced by the official pure-PyTorch
  ``ms_deform_attn_core_pytorch`` (which ignores ``level_start_index`` and ``im2col_step``);
* ``util/misc.py`` is imported with ``torchvision.__version__`` reading ``0.99`` (restored right after):
  its check ``float(torchvision.__version__[:3]) < 0.7`` reads 0.29 as 0.2 and imports helpers that
  torchvision no longer has (they serve only its ``interpolate`` for old versions);
* ``Tensor.cuda()`` and ``.to('cuda')`` keep tensors on the CPU;
* torchvision's ``resnet50`` gets ``weights=None`` instead of ``pretrained=``.

The model runs in float64 (``torch.set_default_dtype(torch.float64)`` before it is built, then
``.double()``). Two official steps compute in float32 whatever the dtype; the shared
``tools/golden/float64_patches.py`` makes them follow the input's dtype, as ours do
(``install("models")``: ``sine``, the image sine encoding; ``valid_ratio``, the valid ratios). The
others stay float32 on both sides, as ours compute them: the proposals' grid and their logits, and the
proposal sine embedding's frequencies.
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

GOLDEN = REPO_ROOT / "tests" / "golden" / "deformable_detr_golden"
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deformable_detr_golden.py <Deformable-DETR clone>"
PACKAGE = "models"
ARGV = ["--with_box_refine", "--two_stage", "--coco_path", "/nonexistent"]
TRAJECTORY_STEPS = 20
LR_DROP_AFTER = 10
TOP_K = 300
OFFICIAL_TOP_K = 100


def _stub_runtime(root: Path):
    """The stand-ins of the module docstring; afterwards ``main`` and ``models`` import on a CPU-only
    torch."""
    sys.path.insert(0, str(root))
    os.chdir(root)
    official_detr.stub_missing_modules(timm=False)
    official_detr.keep_tensors_on_cpu()
    import torchvision

    version = torchvision.__version__
    torchvision.__version__ = "0.99"
    try:
        import util.misc  # noqa: F401
    finally:
        torchvision.__version__ = version
    official_detr.resnets_without_pretrained(("resnet50",))
    official_detr.pure_pytorch_deformable_attention("models.ops")


def _args(dropout=None) -> argparse.Namespace:
    import main

    args = main.get_args_parser().parse_args(ARGV + ([] if dropout is None else ["--dropout", str(dropout)]))
    args.device = "cpu"
    return args


def _build(args):
    from models import build_model

    torch.manual_seed(0)
    model, criterion, postprocessors = build_model(args)
    return model.double(), criterion, postprocessors


def job_eval(args, counts: dict) -> tuple:
    model, _, postprocessors = _build(args)
    crc = official_detr.load_synthetic(model, counts)
    model.eval()
    samples, _ = official_detr.official_batch()
    sizes = torch.tensor([list(s) for s in IMAGE_SIZES])
    with torch.no_grad():
        outputs = model(samples)
        official = postprocessors["bbox"](outputs, sizes)
    scores, labels, boxes = official_detr.topk_detections(outputs, sizes, TOP_K)
    for i, result in enumerate(official):
        assert len(result["scores"]) == OFFICIAL_TOP_K
        assert torch.equal(result["scores"], scores[i, :OFFICIAL_TOP_K])
        assert torch.equal(result["labels"], labels[i, :OFFICIAL_TOP_K])
        assert torch.equal(result["boxes"], boxes[i, :OFFICIAL_TOP_K])
    top = outputs["pred_logits"].sigmoid().flatten(1).topk(TOP_K + 1, dim=1).values
    # How safe the encoder's top-300 selection is: the gap between the 300th and 301st first logits.
    enc_first = outputs["enc_outputs"]["pred_logits"][..., 0].topk(301, dim=1).values
    arrays = {}
    for i in range(len(sizes)):
        arrays.update({f"scores_{i}": scores[i].numpy(), f"labels_{i}": labels[i].numpy(),
                       f"boxes_{i}": boxes[i].numpy()})
    return {"weights_crc32": crc, "top_k": TOP_K, "official_top_k": OFFICIAL_TOP_K,
            "min_score_gap_at_cut": float((top[:, TOP_K - 1] - top[:, TOP_K]).min()),
            "enc_topk_gap_at_cut": float((enc_first[:, 299] - enc_first[:, 300]).min())}, arrays


def _official_step_parts(args, counts: dict):
    model, criterion, _ = _build(args)
    official_detr.load_synthetic(model, counts)
    model.train()
    criterion.train()
    return model, criterion


def _forward(model, criterion, samples, targets):
    outputs = model(samples)
    loss_dict = criterion(outputs, targets)
    weighted = {k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict}
    return weighted, sum(weighted.values())


def job_train(args, counts: dict) -> dict:
    samples, targets = official_detr.official_batch()
    model, criterion = _official_step_parts(args, counts)
    weighted, total = _forward(model, criterion, samples, targets)
    return {"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)}


def param_dicts(model, args):
    """main.py's three parameter groups."""
    def matches(name, keywords):
        return any(keyword in name for keyword in keywords)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not matches(n, args.lr_backbone_names)
                    and not matches(n, args.lr_linear_proj_names)], "lr": args.lr},
        {"params": [p for n, p in named if matches(n, args.lr_backbone_names)], "lr": args.lr_backbone},
        {"params": [p for n, p in named if matches(n, args.lr_linear_proj_names)],
         "lr": args.lr * args.lr_linear_proj_mult},
    ]


def job_trajectory(args, counts: dict) -> dict:
    model, criterion = _official_step_parts(args, counts)
    groups = param_dicts(model, args)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    samples, targets = official_detr.official_batch()
    steps = []
    for step in range(TRAJECTORY_STEPS):
        weighted, total = _forward(model, criterion, samples, targets)
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
            "lr_linear_proj": args.lr * args.lr_linear_proj_mult, "group_sizes": [len(g["params"]) for g in groups],
            "weight_decay": args.weight_decay, "clip_max_norm": args.clip_max_norm}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("deformable_detr", type=Path, help="a clone of fundamentalvision/Deformable-DETR")
    parser.add_argument("--only", nargs="+", choices=["eval", "train", "trajectory"],
                        help="rerun these jobs only, keeping the golden's other entries (same commit and seeds)")
    args = parser.parse_args()
    root = args.deformable_detr.resolve()
    commit = official_detr.clean_commit(root)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _stub_runtime(root)
    patches = float64_patches.install(PACKAGE)
    model_args, train_args = _args(), _args(dropout=0.0)
    golden = {"source": "fundamentalvision/Deformable-DETR", "commit": commit, "command": COMMAND, "argv": ARGV,
              "train_argv": ARGV + ["--dropout", "0.0"], "torch": torch.__version__, "dtype": "float64",
              "patches": patches, "num_classes": NUM_CLASSES, "image_sizes": IMAGE_SIZES, "image_seeds": IMAGE_SEEDS,
              "num_targets": NUM_TARGETS, "target_seed": TARGET_SEED, "weight_seed": WEIGHT_SEED,
              "lr_drop_after": LR_DROP_AFTER, "pixel_mean": official_detr.PIXEL_MEAN,
              "pixel_std": official_detr.PIXEL_STD,
              "dropout": model_args.dropout, "train_dropout": train_args.dropout}
    jobs = set(args.only or ["eval", "train", "trajectory"])
    arrays = {}
    if args.only:
        previous = json.loads(GOLDEN.with_suffix(".json").read_text())
        if previous["commit"] != commit:
            sys.exit(f"--only needs the golden's commit {previous['commit']}, the clone is at {commit}")
        golden = previous
        with np.load(GOLDEN.with_suffix(".npz")) as stored:
            arrays = dict(stored)
    counts = official_detr.model_counts(_build(model_args)[0])
    golden.update(counts)
    print("parameters", counts["num_parameters"], "trainable", counts["num_trainable"], flush=True)
    if "eval" in jobs:
        golden["eval"], arrays = job_eval(model_args, counts)
        print("eval", golden["eval"], flush=True)
    if "train" in jobs:
        golden["train"] = job_train(train_args, counts)
        print("train", golden["train"]["total"], flush=True)
    if "trajectory" in jobs:
        golden["trajectory"] = job_trajectory(train_args, counts)
    os.chdir(REPO_ROOT)
    GOLDEN.with_suffix(".json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
