"""Write the D-FINE golden files ``tests/golden/hgnetv2_golden.json`` / ``.npz`` and
``tests/golden/dfine_encoder_golden.json`` / ``.npz`` by running the official D-FINE backbone and
hybrid encoder.

The official code is imported from a clone outside this repository; nothing of it is copied here,
and the JSON records the clone's commit. How to rerun, from the repository root::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_golden.py PATH/TO/D-FINE

Layouts and counts are of the modules as built (float32). Every forward value is float64: the
module runs after ``.double()`` on float64 inputs, so the values hold on every CPU whatever its
vector kernels (``dtype`` in the JSON). One official step is float32 whatever the dtype: the hybrid
encoder's 2-D sin-cos position embedding (built at construction for ``eval_spatial_size``), whose
float32 sin / cos differ by an ulp between CPU kernel ISAs. For ``dfine_encoder_golden`` it is computed
in float64 (``float64_patches.install("src.zoo.dfine", "sincos")``, tools/golden/float64_patches.py, at
run time, before the encoders are built), recorded in that JSON's ``patches``; the backbone runs
unchanged.

``hgnetv2_golden``:

* ``archs``: for every name B0-B6, with and without LAB, the parameter count of the official
  ``HGNetv2(name, use_lab, pretrained=False, freeze_norm=False)``.
* ``models``: the backbones of the D-FINE COCO configs (N: B0 + LAB, returns [2, 3]; S: B0 + LAB;
  M: B2 + LAB; L: B4 with FrozenBN; X: B5 with FrozenBN): the state-dict key -> shape map, the
  parameter count and the trainable parameter count with the config's freezing.
* forward values for ``s`` and ``l``: weights ``synth_state_dict(keys, seed=0)`` loaded strictly,
  ``double().eval()``, input ``synth_image(98, 130, seed=4)`` as RGB float64 / 255 (1x3x98x130, odd sizes to
  exercise the stem padding and ceil pooling); per returned level: shape, float64 sum and abs-sum,
  and ``x[0, :8, ::4, ::4]`` in the npz as ``{model}_{i}``.

``dfine_encoder_golden``: the official ``HybridEncoder`` of the N (two levels) and S configs
(``ENCODERS``), with ``eval_spatial_size`` 64x64: state-dict key -> shape, parameter count before and
after ``convert_to_deploy`` of every submodule that has one (as ``model.deploy()``), and, for
weights ``synth_state_dict(keys, seed=1)`` in ``double().eval()`` on the feature maps of
``golden.dfine_inputs.encoder_features`` (``np.random.default_rng(7).standard_normal``, drawn as
float32 and handed over as float64; strides 8/16/32 of a 64x64 image, only the levels the config
uses), the outputs' shape, sum and abs-sum and ``x[0, :8, ::2, ::2]`` (npz
``{size}_{i}``) before deploy, and the largest absolute change after deploy.
"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.synth and golden.dfine_inputs
from golden.dfine_inputs import encoder_features  # noqa: E402
from golden.synth import synth_image, synth_state_dict  # noqa: E402
import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from make_rtdetrv2_golden import official_commit  # noqa: E402

DTYPE = torch.float64
MODELS = {  # D-FINE configs/dfine/dfine_hgnetv2_*_coco.yml
    "n": dict(name="B0", use_lab=True, return_idx=[2, 3], freeze_at=-1, freeze_norm=False),
    "s": dict(name="B0", use_lab=True, return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False),
    "m": dict(name="B2", use_lab=True, return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False),
    "l": dict(name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True, freeze_norm=True),
    "x": dict(name="B5", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True, freeze_norm=True),
}


ENCODERS = {  # D-FINE configs/dfine/dfine_hgnetv2_{n,s}_coco.yml + include/dfine_hgnetv2.yml
    "n": dict(in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128, use_encoder_idx=[1],
              dim_feedforward=512, expansion=0.34, depth_mult=0.5),
    "s": dict(in_channels=[256, 512, 1024], feat_strides=[8, 16, 32], hidden_dim=256, use_encoder_idx=[2],
              dim_feedforward=1024, expansion=0.5, depth_mult=0.34),
}


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    official = Path(argv[0]).resolve()
    sys.path.insert(0, str(official))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    from src.nn.backbone.hgnetv2 import HGNetv2

    def count(model, trainable=False):
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)

    golden = {
        "official_repo": "Peterande/D-FINE",
        "official_commit": official_commit(official),
        "torch": torch.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_golden.py <D-FINE clone>",
        "dtype": "float64 (forward values; layouts and counts of the modules as built)",
        "archs": {},
        "models": {},
    }
    for name in HGNetv2.arch_configs:
        for use_lab in (False, True):
            model = HGNetv2(name, use_lab=use_lab, pretrained=False, freeze_norm=False)
            golden["archs"][f"{name}{'_lab' if use_lab else ''}"] = count(model)
    arrays = {}
    image = torch.from_numpy(synth_image(98, 130, seed=4)).permute(2, 0, 1)[None].to(DTYPE) / 255
    for key, kwargs in MODELS.items():
        model = HGNetv2(**kwargs, pretrained=False)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        entry = {"config": kwargs, "state_dict": shapes, "num_parameters": count(model),
                 "num_trainable": count(model, trainable=True)}
        if key in ("s", "l"):
            model.load_state_dict(synth_state_dict(shapes, seed=0), strict=False)
            model.to(DTYPE).eval()
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
    encoders(golden)


def encoders(provenance):
    from src.zoo.dfine.hybrid_encoder import HybridEncoder

    golden = {k: provenance[k] for k in ("official_repo", "official_commit", "torch", "command", "dtype")}
    golden["patches"] = float64_patches.install("src.zoo.dfine", "sincos")
    golden["encoders"] = {}
    arrays = {}
    for key, kwargs in ENCODERS.items():
        model = HybridEncoder(**kwargs, eval_spatial_size=[64, 64])
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        num_parameters = sum(p.numel() for p in model.parameters())
        model.load_state_dict(synth_state_dict(shapes, seed=1), strict=False)
        model.to(DTYPE).eval()
        feats = encoder_features(kwargs["in_channels"], kwargs["feat_strides"], dtype=DTYPE)
        with torch.no_grad():
            outs = model(feats)
            for module in list(model.modules())[1:]:
                if hasattr(module, "convert_to_deploy"):
                    module.convert_to_deploy()
            deployed = model(feats)
        golden["encoders"][key] = {
            "config": kwargs,
            "state_dict": shapes,
            "num_parameters": num_parameters,
            "deploy_num_parameters": sum(p.numel() for p in model.parameters()),
            "outputs": [{"shape": list(o.shape), "sum": o.sum().item(), "abs_sum": o.abs().sum().item()}
                        for o in outs],
            "deploy_max_abs_change": max((a - b).abs().max().item() for a, b in zip(outs, deployed)),
        }
        for i, o in enumerate(outs):
            arrays[f"{key}_{i}"] = o[0, :8, ::2, ::2].numpy()
    (GOLDEN_DIR / "dfine_encoder_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "dfine_encoder_golden.npz", **arrays)
    print("wrote dfine_encoder_golden.json and dfine_encoder_golden.npz")


if __name__ == "__main__":
    main(sys.argv[1:])
