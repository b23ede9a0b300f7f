"""Write ``copyblend_golden.{json,npz}`` by running DEIMv2's official batch collate
(``BatchImageCollateFunction`` in ``engine/data/dataloader.py``: MixUp, Copy-Blend, multi-scale).

The official code is imported, only in :func:`main`, from the work tree given as the only argument
(its ``git rev-parse HEAD`` is recorded); nothing of it is copied here. Run from the repository root,
with a Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_copyblend_golden.py PATH/TO/DEIMv2

Dtype: float32, the dtype of the official data pipeline (its images are ``uint8 / 255`` float32 and
its boxes float32); the collate only adds, multiplies, resizes with nearest interpolation and
truncates, so its results do not depend on the CPU kernel ISA.

Importing this module needs neither the official code nor ``dfine``: the test rebuilds the batch
with :func:`copyblend_inputs` and reads the collate settings from the JSON.

Input: three 3x48x64 uint8 images (``rng(11)``) with absolute XYXY boxes whose corners lie
between whole pixels (so truncating them does not depend on float round-off): image 0 has a
large object, a tiny one (area < 100) and one near the right edge; image 1 has none; image 2 has
a large one near the top-left corner, one just above the area threshold (106 px²) and a tiny
one. The official collate gets them as its data pipeline makes them: images ``uint8 / 255`` float32,
boxes normalized cxcywh (``box_convert`` then divided by ``(W, H, W, H)``), labels, and ``area``
set to the box area in pixels (so the official pool is the pool our code builds from the boxes).

``copyblend_golden.json``:

* ``official`` (``repo``, ``commit``), ``dtype``, ``torch``, ``torchvision``, ``command``: provenance.
* ``image_size``: ``[H, W]`` of the inputs.
* ``cases``: one entry per case name, with ``collate`` (the keyword arguments of the official
  ``BatchImageCollateFunction``), ``epoch`` (given to ``set_epoch``) and ``runs``: one per seed,
  with ``seed`` (``random.seed`` right before the call), ``kind`` (``"mixup"``, ``"copy_blend"``,
  ``"copy_blend_empty_pool"`` or ``"none"``: which branch the seed's draws take, replayed here
  with ``random.Random(seed)``), ``size`` (``[h, w]`` of the output images), ``boxes`` and
  ``labels`` (the output targets per image, boxes normalized cxcywh) and ``next_random`` (the
  first ``random.random()`` after the call, which tells that the call made the same number of
  draws). The cases: ``deimv2_s`` (the DEIMv2-S collate with base size 64: MixUp 0.5 in
  [4, 64), Copy-Blend 0.5 in [4, 120) with expansion, multi-scale until 120, at epoch 10),
  ``no_expand`` (only Copy-Blend, prob 1, without expansion, at the last epoch of its window),
  ``paste_random_num`` (``copyblend_type='paste'``, ``random_num_objects``, ``num_objects`` 5,
  more than the pool holds), ``empty_pool`` (area threshold above every box; MixUp's window
  just closed) and ``closed_windows`` (the Atto/Femto/Pico settings: both off, empty windows).

``copyblend_golden.npz``: ``{case}_{seed}``: the output images minus the input images (resized
to the output size with nearest interpolation, as the official multi-scale does), in the
official [0, 1] scale, float32 ``(3, 3, h, w)``.
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.deimv2_synth
from golden.deimv2_synth import COPYBLEND_HEIGHT as HEIGHT, COPYBLEND_WIDTH as WIDTH, copyblend_inputs  # noqa: E402

COPY_BLEND = dict(area_threshold=100, num_objects=3, with_expand=True, expand_ratios=[0.1, 0.25])
CASES = {
    "deimv2_s": dict(
        collate=dict(mixup_prob=0.5, mixup_epochs=[4, 64], copyblend_prob=0.5, copyblend_epochs=[4, 120],
                     stop_epoch=120, base_size=64, base_size_repeat=1, **COPY_BLEND),
        epoch=10, seeds=list(range(6))),
    "no_expand": dict(
        collate=dict(mixup_prob=0.0, mixup_epochs=[0, 0], copyblend_prob=1.0, copyblend_epochs=[0, 5],
                     **dict(COPY_BLEND, with_expand=False)),
        epoch=4, seeds=[0, 1]),
    "paste_random_num": dict(
        collate=dict(mixup_prob=0.0, mixup_epochs=[0, 0], copyblend_prob=1.0, copyblend_epochs=[0, 5],
                     copyblend_type="paste", random_num_objects=True, **dict(COPY_BLEND, num_objects=5)),
        epoch=0, seeds=[0, 1]),
    "empty_pool": dict(
        collate=dict(mixup_prob=0.5, mixup_epochs=[0, 1], copyblend_prob=1.0, copyblend_epochs=[0, 5],
                     **dict(COPY_BLEND, area_threshold=10 ** 6)),
        epoch=1, seeds=[0]),
    "closed_windows": dict(
        collate=dict(mixup_prob=0.0, mixup_epochs=[40000, 15000], copyblend_prob=0.0,
                     copyblend_epochs=[40000, 15000], **COPY_BLEND),
        epoch=10, seeds=[0]),
}


def replay_kind(collate, epoch, seed, pool_size):
    """Which branch of the official collate the draws of ``seed`` take."""
    rng = random.Random(seed)
    rng.uniform(0.45, 0.55)  # the blend weight, drawn first
    mixup_window, copyblend_window = collate["mixup_epochs"], collate["copyblend_epochs"]
    if rng.random() < collate["mixup_prob"] and mixup_window[0] <= epoch < mixup_window[1]:
        return "mixup"
    if copyblend_window[0] <= epoch < copyblend_window[1] and rng.random() < collate["copyblend_prob"]:
        return "copy_blend" if pool_size else "copy_blend_empty_pool"
    return "none"


def official_items():
    from torchvision.ops import box_convert

    images, boxes, labels = copyblend_inputs()
    scale = torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT], dtype=torch.float32)
    items = []
    for image, xyxy, classes in zip(images, boxes, labels):
        xyxy = torch.from_numpy(xyxy)
        target = {
            "boxes": box_convert(xyxy, "xyxy", "cxcywh") / scale,
            "labels": torch.from_numpy(classes),
            "area": (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]),
        }
        items.append((torch.from_numpy(image).float() / 255, target))
    return items


def run_case(collate_class, name, case):
    import torch.nn.functional as F

    collate = collate_class(**case["collate"], vis_save=tempfile.mkdtemp() + "/")
    collate.set_epoch(case["epoch"])
    inputs = torch.stack([image for image, _ in official_items()])
    areas = torch.cat([target["area"] for _, target in official_items()])
    pool_size = int((areas >= case["collate"]["area_threshold"]).sum())
    runs, arrays = [], {}
    for seed in case["seeds"]:
        random.seed(seed)
        images, targets = collate(official_items())
        next_random = random.random()
        reference = inputs if images.shape == inputs.shape else F.interpolate(inputs, size=images.shape[-2:])
        arrays[f"{name}_{seed}"] = (images - reference).numpy().astype(np.float32)
        runs.append({
            "seed": seed,
            "kind": replay_kind(case["collate"], case["epoch"], seed, pool_size),
            "size": list(images.shape[-2:]),
            "boxes": [t["boxes"].tolist() for t in targets],
            "labels": [t["labels"].tolist() for t in targets],
            "next_random": next_random,
        })
    return {"collate": case["collate"], "epoch": case["epoch"], "runs": runs}, arrays


def main():
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    root = parser.parse_args().official.resolve()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    # The official code is only needed here: the test imports the inputs above.
    sys.path.insert(0, str(root))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))  # imported, not used
    from engine.data.dataloader import BatchImageCollateFunction

    golden = {
        "official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit},
        "dtype": "float32",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_copyblend_golden.py <official DEIMv2>",
        "image_size": [HEIGHT, WIDTH],
        "cases": {},
    }
    arrays = {}
    for name, case in CASES.items():
        golden["cases"][name], more = run_case(BatchImageCollateFunction, name, case)
        arrays.update(more)
    (GOLDEN_DIR / "copyblend_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "copyblend_golden.npz", **arrays)
    print("wrote copyblend_golden.json and copyblend_golden.npz")


if __name__ == "__main__":
    main()
