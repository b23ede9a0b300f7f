"""Write ``deimv2_vit_golden.json`` / ``.npz`` by running the official DEIMv2 ViT trunks and
``DINOv3STAs`` (engine/backbone/dinov3_adapter.py, vit_tiny.py, dinov3/) on synthetic weights.

The official tree is imported at run time from the work tree given as the only argument (its
``git rev-parse HEAD`` is recorded); nothing of it is copied here. Run from the repository root, with a
Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_vit_golden.py PATH/TO/DEIMv2

Everything runs in float64 (modules ``.to(torch.float64)``, float64 inputs). The official RoPE modules
compute in float32 whatever the model's dtype; after the cast each is set to float64 and re-initialised
(tools/golden/float64_patches.py:rope_follow_dtype, recorded in the JSON's ``patches``), so the
periods, coordinates, rescale draws and sin / cos are float64 too.

Weights are :func:`synth_vit_state_dict` (``synth_state_dict`` plus the ViT-only tensors), loaded with
``strict=False`` (only the RoPE ``periods`` and BatchNorm ``num_batches_tracked`` stay the model's own).
Images are :func:`sta_input`: ``synth_image(128, 160, seed=10 + i)`` for i = 0, 1, RGB / 255, normalised
with the ImageNet mean/std of the DINOv3 configs (2x3x128x160: non-square to catch H/W mix-ups).

JSON fields:

* ``presets``: for "s", "m", "l", "x" (the ``DINOv3STAs`` block of
  ``configs/deimv2/deimv2_dinov3_{s,m,l,x}_coco.yml``, without ``weights_path``): ``config`` (the official
  arguments), ``state_dict`` (key -> shape, in order, buffers included), ``num_parameters`` and
  ``layer_norm_eps`` (the distinct eps of its LayerNorms; too small an effect for the value checks).
* ``rope``: ``grid`` [h, w] = [4, 6]; npz ``rope_dinov3_{sin,cos}`` (``dinov3_vits16``'s ``rope_embed``,
  eval, [24, 64]), ``rope_tiny_{sin,cos}`` (``vit_tiny``'s, eval, squeezed to [24, 64]) and
  ``rope_train_{sin,cos}``: ``dinov3_vits16``'s ``rope_embed`` in train mode right after
  ``torch.manual_seed(ROPE_TRAIN_SEED)``.
* ``block``: block 0 of ``dinov3_vits16plus`` (SwiGLU, LayerScale, masked k-bias) with the preset's synthetic
  weights (seed 0), eval, on npz ``block_input`` (``default_rng(5).standard_normal((2, 5 + 24, 384))``,
  5 prefix tokens and a 4x6 grid) with the eval ``rope_dinov3`` tables; npz ``block_output``.
* ``sta``: for "s" (vit_tiny, taps [3, 7, 11]), "s_single" (vit_tiny, taps [11], the repeated-layer
  case) and "l" (dinov3_vits16, taps [5, 8, 11]), ``eval()`` outputs on ``sta_input()``, weights
  ``synth_vit_state_dict(keys, seed=0)``: per level ``shape``, float64 ``sum`` and ``abs_sum``;
  npz ``sta_{case}_{i}`` = ``out[:, ::16, ::2, ::2]``.
* ``trunk_train``: the ``dinov3_vits16`` trunk of case "l" in train mode: ``get_intermediate_layers(
  sta_input(), n=[5, 8, 11], return_class_token=True)`` right after ``torch.manual_seed(TRUNK_TRAIN_SEED)``
  (every block draws its own RoPE rescale factor); per tap ``sum`` / ``abs_sum`` of the patch tokens
  [2, 80, 384] and npz ``trunk_train_{i}`` = ``tokens[:, ::7, ::16]``.
"""
import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.deimv2_synth

from golden.deimv2_synth import (PRESETS, ROPE_GRID, ROPE_TRAIN_SEED, STA_CASES, TRUNK_TRAIN_SEED,  # noqa: E402
                                 block_input, sta_input, synth_vit_state_dict)
from golden.synth import fingerprint  # noqa: E402

from float64_patches import DTYPE, PATCHES, rope_follow_dtype  # noqa: E402  (tools/golden)


def _stats(t):
    return {"shape": list(t.shape), "sum": t.double().sum().item(), "abs_sum": t.double().abs().sum().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    official = parser.parse_args().official.resolve()
    commit = subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    sys.path.insert(0, str(official))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    from engine.backbone.dinov3_adapter import DINOv3STAs

    torch.set_num_threads(1)

    def build(config, seed=0):
        model = DINOv3STAs(**config)
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        missing, unexpected = model.load_state_dict(synth_vit_state_dict(keys, seed=seed), strict=False)
        assert not unexpected and all(k.endswith(("periods", "num_batches_tracked")) for k in missing), missing
        model.eval().to(DTYPE)
        assert rope_follow_dtype(model) == 1
        return model, keys

    golden = {
        "official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit},
        "dtype": str(DTYPE)[len("torch."):],
        "patches": [PATCHES["rope"]],
        "torch": torch.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_vit_golden.py <official DEIMv2>",
        "presets": {}, "rope": {"grid": list(ROPE_GRID)}, "block": {}, "sta": {}, "trunk_train": {},
    }
    arrays = {}
    for size, config in PRESETS.items():
        model = DINOv3STAs(**config)
        golden["presets"][size] = {
            "config": config,
            "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "layer_norm_eps": sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}),
        }

    h, w = ROPE_GRID
    l_model, _ = build(PRESETS["l"])
    s_model, _ = build(PRESETS["s"])
    with torch.no_grad():
        arrays["rope_dinov3_sin"], arrays["rope_dinov3_cos"] = (t.numpy() for t in l_model.dinov3.rope_embed(H=h, W=w))
        sin, cos = s_model.dinov3._model.rope_embed(H=h, W=w)
        arrays["rope_tiny_sin"], arrays["rope_tiny_cos"] = sin[0, 0].numpy(), cos[0, 0].numpy()
        rope = l_model.dinov3.rope_embed.train()
        torch.manual_seed(ROPE_TRAIN_SEED)
        arrays["rope_train_sin"], arrays["rope_train_cos"] = (t.numpy() for t in rope(H=h, W=w))
        rope.eval()

        x_model, _ = build(PRESETS["x"])
        block = x_model.dinov3.blocks[0]
        tokens = block_input()
        arrays["block_output"] = block(tokens, x_model.dinov3.rope_embed(H=h, W=w)).numpy()
        golden["block"] = {"preset": "x", "block": 0, "input_crc32": fingerprint(tokens),
                           "output": _stats(torch.from_numpy(arrays["block_output"]))}

        x = sta_input()
        for case, config in STA_CASES.items():
            model, _ = build(config)
            outs = model(x)
            golden["sta"][case] = {"config": config, "outputs": [_stats(o) for o in outs]}
            for i, o in enumerate(outs):
                arrays[f"sta_{case}_{i}"] = o[:, ::16, ::2, ::2].numpy()

        trunk = l_model.dinov3.train()
        torch.manual_seed(TRUNK_TRAIN_SEED)
        taps = trunk.get_intermediate_layers(x, n=PRESETS["l"]["interaction_indexes"], return_class_token=True)
        golden["trunk_train"] = {"taps": [_stats(tokens) for tokens, _ in taps]}
        for i, (tokens, _) in enumerate(taps):
            arrays[f"trunk_train_{i}"] = tokens[:, ::7, ::16].numpy()

    (GOLDEN_DIR / "deimv2_vit_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "deimv2_vit_golden.npz", **arrays)
    print("wrote deimv2_vit_golden.json and deimv2_vit_golden.npz")


if __name__ == "__main__":
    main()
