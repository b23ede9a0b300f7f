"""Write ``deimv2_recipes.json``: the training recipe of every official DEIMv2 config, as the official
YAML loader resolves it (Intellindust-AI-Lab/DEIMv2, ``configs/deimv2/deimv2_*_coco.yml`` with their
``__include__`` files). ``tests/test_configs.py`` checks our ``configs/deimv2_*.py`` against it.

The official tree is imported from the work tree given as the only argument; nothing of it is
copied. Each config is resolved in its own subprocess, because the official ``load_config`` keeps a
mutable default dict that leaks keys from one config into the next. Run from the repository root,
with a Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_recipes_golden.py PATH/TO/DEIMv2

Top-level fields: ``official`` (``repo``, ``commit``: ``git rev-parse HEAD`` of the given tree),
``dtype`` (null: no tensor is computed, only YAML values are read) and ``recipes``.

Fields of ``recipes[name]`` (e.g. ``hgnetv2_atto``): ``epochs`` (``epoches``), ``policy`` (the
augmentation policy epochs), ``mosaic_prob``, ``mosaic_size`` (Mosaic ``output_size``), ``min_box``
(``SanitizeBoundingBoxes.min_size``), ``size`` (``eval_spatial_size``), ``batch``
(``total_batch_size``), ``mixup`` / ``copyblend`` (``[prob, epochs]`` of the collate),
``stop_epoch``, ``repeat`` (``base_size_repeat``), ``restart`` (``ema_restart_decay``), ``flat``,
``no_aug``, ``lr_gamma``, ``warmup`` (``warmup_iter``), ``lr``, ``wd``, ``rules`` (the optimizer's
``[pattern, lr, weight_decay]`` groups, null where unset), ``losses``, ``uni`` (``use_uni_set``,
default true), ``matcher_epoch`` (``matcher_change_epoch``), ``normalize`` (whether the train
transforms have ImageNet ``Normalize``).
"""
import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

NAMES = ["hgnetv2_atto", "hgnetv2_femto", "hgnetv2_pico", "hgnetv2_n", "hgnetv2_s", "hgnetv2_m", "hgnetv2_l",
         "hgnetv2_x", "dinov3_s", "dinov3_m", "dinov3_l", "dinov3_x"]
OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "deimv2_recipes.json"


def recipe(root: str, name: str) -> dict:
    sys.path.insert(0, root)
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))  # imported, not used
    from engine.core.yaml_utils import load_config

    cfg = load_config(os.path.join(root, f"configs/deimv2/deimv2_{name}_coco.yml"), dict())
    loader, collate = cfg["train_dataloader"], cfg["train_dataloader"]["collate_fn"]
    transforms = loader["dataset"]["transforms"]
    ops = transforms["ops"]
    mosaic = next(op for op in ops if op["type"] == "Mosaic")
    criterion, optimizer = cfg["DEIMCriterion"], cfg["optimizer"]
    return dict(
        epochs=cfg["epoches"], policy=transforms["policy"]["epoch"], mosaic_prob=transforms["mosaic_prob"],
        mosaic_size=mosaic["output_size"],
        min_box=next(op["min_size"] for op in ops if op["type"] == "SanitizeBoundingBoxes"),
        size=cfg["eval_spatial_size"][0], batch=loader["total_batch_size"],
        mixup=[collate["mixup_prob"], collate["mixup_epochs"]],
        copyblend=[collate["copyblend_prob"], collate["copyblend_epochs"]],
        stop_epoch=collate["stop_epoch"], repeat=collate["base_size_repeat"], restart=collate["ema_restart_decay"],
        flat=cfg["flat_epoch"], no_aug=cfg["no_aug_epoch"], lr_gamma=cfg["lr_gamma"], warmup=cfg["warmup_iter"],
        lr=optimizer["lr"], wd=optimizer["weight_decay"],
        rules=[[g["params"], g.get("lr"), g.get("weight_decay")] for g in optimizer["params"]],
        losses=criterion["losses"], uni=criterion.get("use_uni_set", True),
        matcher_epoch=criterion["matcher"]["matcher_change_epoch"],
        normalize=any(op["type"] == "Normalize" for op in ops),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    parser.add_argument("--name", help=argparse.SUPPRESS)  # child: print one config's recipe
    args = parser.parse_args()
    root = str(args.official.resolve())
    if args.name:
        print(json.dumps(recipe(root, args.name)))
        return
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    rows = {}
    for name in NAMES:
        out = subprocess.run([sys.executable, __file__, root, "--name", name], check=True, capture_output=True,
                             text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    golden = {"official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit}, "dtype": None, "recipes": rows}
    OUT.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
