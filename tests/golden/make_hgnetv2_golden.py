"""Write ``hgnetv2_golden.json`` / ``.npz`` by running the official D-FINE HGNetv2.

Nothing of the official code is copied here. How to rerun, from the repository root, with the
official venv described in ``make_rtdetrv2_golden.py``::

    mkdir -p /tmp/dfine_official
    git -C /work/.mirror/Peterande+D-FINE/repo archive HEAD | tar -x -C /tmp/dfine_official
    OFFICIAL_DFINE=/tmp/dfine_official \\
    OFFICIAL_DFINE_COMMIT=$(git -C /work/.mirror/Peterande+D-FINE/repo log -1 --format=%H) \\
    PYTHONDONTWRITEBYTECODE=1 /root/.cache/dfine/official-venv/bin/python tests/golden/make_hgnetv2_golden.py

Contents:

* ``archs``: for every name B0-B6, with and without LAB, the parameter count of the official
  ``HGNetv2(name, use_lab, pretrained=False, freeze_norm=False)``.
* ``models``: the backbones of the D-FINE COCO configs (N: B0 + LAB, returns [2, 3]; S: B0 + LAB;
  M: B2 + LAB; L: B4 with FrozenBN; X: B5 with FrozenBN): the state-dict key -> shape map, the
  parameter count and the trainable parameter count with the config's freezing.
* forward values for ``s`` and ``l``: weights ``synth_state_dict(keys, seed=0)`` loaded strictly,
  ``eval()``, input ``synth_image(98, 130, seed=4)`` as RGB float / 255 (1x3x98x130, odd sizes to
  exercise the stem padding and ceil pooling); per returned level: shape, float64 sum and abs-sum,
  and ``x[0, :8, ::4, ::4]`` in the npz as ``{model}_{i}``.
"""
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, os.environ["OFFICIAL_DFINE"])
sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))

from synth import synth_image, synth_state_dict  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parent
MODELS = {  # D-FINE configs/dfine/dfine_hgnetv2_*_coco.yml
    "n": dict(name="B0", use_lab=True, return_idx=[2, 3], freeze_at=-1, freeze_norm=False),
    "s": dict(name="B0", use_lab=True, return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False),
    "m": dict(name="B2", use_lab=True, return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False),
    "l": dict(name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True, freeze_norm=True),
    "x": dict(name="B5", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True, freeze_norm=True),
}


def main():
    from src.nn.backbone.hgnetv2 import HGNetv2

    def count(model, trainable=False):
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)

    golden = {
        "official_repo": "Peterande/D-FINE",
        "official_commit": os.environ["OFFICIAL_DFINE_COMMIT"],
        "torch": torch.__version__,
        "command": "OFFICIAL_DFINE=<official D-FINE> PYTHONDONTWRITEBYTECODE=1 python tests/golden/make_hgnetv2_golden.py",
        "archs": {},
        "models": {},
    }
    for name in HGNetv2.arch_configs:
        for use_lab in (False, True):
            model = HGNetv2(name, use_lab=use_lab, pretrained=False, freeze_norm=False)
            golden["archs"][f"{name}{'_lab' if use_lab else ''}"] = count(model)
    arrays = {}
    image = torch.from_numpy(synth_image(98, 130, seed=4)).permute(2, 0, 1)[None].float() / 255
    for key, kwargs in MODELS.items():
        model = HGNetv2(**kwargs, pretrained=False)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        entry = {"config": kwargs, "state_dict": shapes, "num_parameters": count(model),
                 "num_trainable": count(model, trainable=True)}
        if key in ("s", "l"):
            model.load_state_dict(synth_state_dict(shapes, seed=0), strict=False)
            model.eval()
            with torch.no_grad():
                outs = model(image)
            entry["outputs"] = [{"shape": list(o.shape), "sum": o.double().sum().item(),
                                 "abs_sum": o.double().abs().sum().item()} for o in outs]
            for i, o in enumerate(outs):
                arrays[f"{key}_{i}"] = o[0, :8, ::4, ::4].numpy()
        golden["models"][key] = entry
    (GOLDEN_DIR / "hgnetv2_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "hgnetv2_golden.npz", **arrays)
    print("wrote hgnetv2_golden.json and hgnetv2_golden.npz")


if __name__ == "__main__":
    main()
