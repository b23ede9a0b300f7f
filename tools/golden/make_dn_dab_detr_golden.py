"""Write ``tests/golden/dn_dab_detr_golden.json`` / ``.npz``: the official DN-DETR DN-DAB-DETR
(IDEA-Research/DN-DETR, ``main.py -m dn_dab_detr --use_dn``), run in float64 on synthetic weights and
images.

The official code is imported at run time from a clone outside this repository (nothing of it is
copied here); the JSON records the clone's commit. How to rerun, from the repository root, with a venv
that holds torch, torchvision and scipy::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dn_dab_detr_golden.py PATH/TO/DN-DETR

Models, each built by the official ``main.build_model_main`` from ``main.get_args_parser()`` with
``-m dn_dab_detr --use_dn`` and the flags below (COCO: 91 classes):

* ``r50``: the defaults (R50, 300 anchors, PReLU);
* ``r50_dc5_3pat``: ``--dilation --num_patterns 3``.

What runs:

* ``counts``: parameters and every state-dict key with its shape, and the keys that name one tensor
  (``transformer.decoder.bbox_embed`` is ``bbox_embed``);
* ``eval``: the top-300 post-processed detections (scores, labels, boxes in pixels of each image's own
  size) of a padded batch of two images of different sizes;
* ``train``: the weighted loss terms of one training forward with denoising (noise drawn after
  ``torch.manual_seed(TRAIN_NOISE_SEED)``) and, for ``r50``, without it (see below);
* ``trajectory`` (``r50``): 20 optimizer steps of the official loop on the same batch (AdamW with the
  official parameter groups of main.py, lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient clipping
  0.1), the noise of step ``s`` drawn after ``torch.manual_seed(TRAIN_NOISE_SEED + s)``, and the
  learning rate divided by 10 after step 10 (the official ``StepLR`` with ``lr_drop`` 1 and epochs of
  10 iterations): every weighted loss term and the total at every step, and the L2 norm of every
  parameter after the last step.

Training without denoising. The official code cannot: without ``--use_dn`` its forward unpacks the
missing denoising arguments. The golden's ``no_dn`` run replaces, in the official DAB-DETR module,
``prepare_for_dn`` by a wrapper that calls it as in evaluation (``training=False``: the matching queries
only, no attention mask) and hands the criterion an empty ``mask_dict`` (its denoising terms are then
the official zeros).

Weights are ``tests/golden/synth.py::synth_state_dict`` over the official keys, one draw per tensor
(the alias key gets its owner's values: ``tests/golden/dino_inputs.py::official_weights``), the class
head's weight scaled to the fan-in variance (``tests/golden/dn_dab_detr_inputs.py``: drawn as an
embedding table, it would saturate every score). Images are
``synth_image``, targets ``synth_targets`` (91 classes): ``dino_inputs.synth_batch``.

Runtime stand-ins, none of them numeric: ``Tensor.cuda()`` and ``.to('cuda')`` keep tensors on the CPU;
torchvision's ``resnet50``/``resnet101`` get ``weights=None`` instead of ``pretrained=``; ``addict`` and
``yapf`` (imported by ``util/slconfig.py``), the compiled deformable-attention op and a missing ``timm``
(imported by the other models' files that ``main.py`` imports), all unused here, are stubbed. The model runs in float64
(``torch.set_default_dtype(torch.float64)`` before it is built, so that the official denoising tensors
made with ``torch.zeros`` are float64 too). The image sine encoding computes in float32 whatever the
dtype; the shared ``tools/golden/float64_patches.py`` makes it follow the input's dtype, as ours does
(``install("models.DN_DAB_DETR")``: ``sine_hw``). The query sine embedding's frequencies and the
label-flip draws stay float32 on both sides, as ours compute them.
"""
import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from golden.dn_dab_detr_inputs import dn_dab_detr_weights  # noqa: E402

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
import official_detr  # noqa: E402
from official_detr import IMAGE_SEEDS, IMAGE_SIZES, NUM_CLASSES, NUM_TARGETS, TARGET_SEED, WEIGHT_SEED  # noqa: E402

GOLDEN = REPO_ROOT / "tests" / "golden" / "dn_dab_detr_golden"
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dn_dab_detr_golden.py <DN-DETR clone>"
MODELS = {"r50": [], "r50_dc5_3pat": ["--dilation", "--num_patterns", "3"]}
TRAIN_NOISE_SEED = 7
TRAJECTORY_STEPS = 20
LR_DROP_AFTER = 10


def _stub_runtime(root: Path):
    """The stand-ins of the module docstring; afterwards ``main`` imports on a CPU-only torch."""
    sys.path.insert(0, str(root))
    os.chdir(root)
    addict = types.ModuleType("addict")
    addict.Dict = dict
    yapf = types.ModuleType("yapf")
    yapflib = types.ModuleType("yapf.yapflib")
    api = types.ModuleType("yapf.yapflib.yapf_api")
    api.FormatCode = lambda code, **kwargs: (code, False)
    yapf.yapflib, yapflib.yapf_api = yapflib, api
    for name, module in {"addict": addict, "yapf": yapf, "yapf.yapflib": yapflib, "yapf.yapflib.yapf_api": api}.items():
        sys.modules.setdefault(name, module)
    # The deformable models that main.py imports too need the compiled op, the Swin files timm.
    official_detr.stub_missing_modules()
    official_detr.keep_tensors_on_cpu()
    official_detr.resnets_without_pretrained()


def _args(flags):
    import main

    parser = argparse.ArgumentParser(parents=[main.get_args_parser()])
    args = parser.parse_args(["-m", "dn_dab_detr", "--use_dn", "--coco_path", "/nonexistent",
                              "--output_dir", tempfile.gettempdir(), *flags])
    args.device = "cpu"
    return args


def _build(flags):
    import main

    torch.manual_seed(0)
    model, criterion, postprocessors = main.build_model_main(_args(flags))
    return model.double(), criterion, postprocessors


def job_eval(flags, counts: dict) -> tuple:
    model, _, postprocessors = _build(flags)
    crc = official_detr.load_synthetic(model, counts, weights=dn_dab_detr_weights)
    model.eval()
    samples, _ = official_detr.official_batch()
    sizes = torch.tensor([list(s) for s in IMAGE_SIZES])
    with torch.no_grad():
        outputs, _ = model(samples, dn_args=_args(flags).num_patterns)
        results = postprocessors["bbox"](outputs, sizes)
    top = outputs["pred_logits"].sigmoid().flatten(1).topk(301, dim=1).values
    arrays = {f"{key}_{i}": r[key].numpy() for i, r in enumerate(results) for key in ("scores", "labels", "boxes")}
    return {"weights_crc32": crc, "min_score_gap_at_cut": float((top[:, 299] - top[:, 300]).min())}, arrays


class _WithoutDenoising:
    """Inside the block, the official DAB-DETR builds its queries as in evaluation (no denoising) in
    training too, and returns an empty ``mask_dict`` for the criterion (module docstring)."""

    def __enter__(self):
        from models.DN_DAB_DETR import DABDETR as module

        self.module, self.official = module, module.prepare_for_dn

        def eval_queries(dn_args, embedweight, batch_size, training, *args):
            label, bbox, attn_mask, _ = self.official(dn_args[-1], embedweight, batch_size, False, *args)
            return label, bbox, attn_mask, {}

        module.prepare_for_dn = eval_queries

    def __exit__(self, *exc):
        self.module.prepare_for_dn = self.official


def _forward(model, criterion, args, samples, targets):
    dn_args = (targets, args.scalar, args.label_noise_scale, args.box_noise_scale, args.num_patterns)
    outputs, mask_dict = model(samples, dn_args=dn_args)
    loss_dict = criterion(outputs, targets, mask_dict)
    weighted = {k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict}
    return weighted, sum(weighted.values())


def _training_parts(flags, counts):
    model, criterion, _ = _build(flags)
    official_detr.load_synthetic(model, counts, weights=dn_dab_detr_weights)
    model.train()
    criterion.train()
    return model, criterion


def job_train(flags, counts: dict, without_dn: bool) -> dict:
    out = {}
    samples, targets = official_detr.official_batch()
    args = _args(flags)
    for dn in (True, False) if without_dn else (True,):
        model, criterion = _training_parts(flags, counts)
        torch.manual_seed(TRAIN_NOISE_SEED)
        if dn:
            weighted, total = _forward(model, criterion, args, samples, targets)
        else:
            with _WithoutDenoising():
                weighted, total = _forward(model, criterion, args, samples, targets)
        out["dn" if dn else "no_dn"] = {"losses": {k: float(v) for k, v in weighted.items()}, "total": float(total)}
    return out


def job_trajectory(flags, counts: dict) -> dict:
    args = _args(flags)
    model, criterion = _training_parts(flags, counts)
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
        weighted, total = _forward(model, criterion, args, samples, targets)
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
    parser.add_argument("dn_detr", type=Path, help="a clone of IDEA-Research/DN-DETR")
    args = parser.parse_args()
    root = args.dn_detr.resolve()
    commit = official_detr.clean_commit(root)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _stub_runtime(root)
    patches = float64_patches.install("models.DN_DAB_DETR")
    golden = {"source": "IDEA-Research/DN-DETR", "commit": commit, "command": COMMAND, "torch": torch.__version__,
              "dtype": "float64", "patches": patches,
              "num_classes": NUM_CLASSES, "image_sizes": IMAGE_SIZES, "image_seeds": IMAGE_SEEDS,
              "num_targets": NUM_TARGETS, "target_seed": TARGET_SEED, "weight_seed": WEIGHT_SEED,
              "train_noise_seed": TRAIN_NOISE_SEED, "lr_drop_after": LR_DROP_AFTER,
              "pixel_mean": official_detr.PIXEL_MEAN, "pixel_std": official_detr.PIXEL_STD, "models": {}}
    arrays = {}
    for name, flags in MODELS.items():
        counts = official_detr.model_counts(_build(flags)[0])
        entry = {"flags": ["-m", "dn_dab_detr", "--use_dn", *flags], **counts}
        entry["eval"], eval_arrays = job_eval(flags, counts)
        arrays.update({f"{name}/{k}": v for k, v in eval_arrays.items()})
        entry["train"] = job_train(flags, counts, without_dn=name == "r50")
        if name == "r50":
            entry["trajectory"] = job_trajectory(flags, counts)
        golden["models"][name] = entry
        print(name, entry["num_parameters"], entry["eval"], flush=True)
    os.chdir(REPO_ROOT)
    GOLDEN.with_suffix(".json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
