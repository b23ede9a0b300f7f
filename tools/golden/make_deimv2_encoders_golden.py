"""Write ``deimv2_encoders_golden.json`` / ``.npz`` by running the official DEIMv2 HGNetv2,
HybridEncoder and LiteEncoder with the constructor arguments of the official DEIMv2 COCO configs.

The official tree is imported at run time from the work tree given as the only argument (its
``git rev-parse HEAD`` is recorded as ``official.commit``); nothing of it is copied here. Run from the
repository root, with a Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_encoders_golden.py PATH/TO/DEIMv2

The forward passes run in float64 (``dtype``): modules ``.to(torch.float64)`` after loading the
synthetic weights, float64 image and feature maps. The official HybridEncoder's sin-cos position
embedding is always float32; it is patched to float64 (tools/golden/float64_patches.py, recorded
in ``patches``). ``torch.set_num_threads(1)``.

Fields of the json:

* ``configs``: for each of the 12 configs ``configs/deimv2/deimv2_{hgnetv2_<size>,dinov3_<size>}_coco.yml``
  (keys ``atto`` ... ``x`` and ``dinov3_s`` ... ``dinov3_x``), the file, and the resolved sections
  of the backbone (``HGNetv2`` or ``DINOv3STAs``) and of the encoder (``HybridEncoder`` or
  ``LiteEncoder``, with the global ``eval_spatial_size`` the official workspace shares into it):
  ``{"type": class name, "kwargs": constructor arguments}``. Each config is resolved with
  ``load_config(path, dict())``: a fresh dict per config avoids the official loader's
  mutable-default leak between configs. The HGNetv2 modules are built with ``pretrained=False``.
* ``backbones[size]`` (HGNetv2 sizes only): state-dict key -> shape (in order), ``num_parameters``
  and ``num_trainable`` (with the config's freezing); for ``atto``, ``femto``, ``pico`` also
  ``outputs``: weights ``synth_state_dict(keys, seed=0)`` loaded, ``eval()``, input
  ``synth_image(98, 130, seed=4)`` as RGB float64 / 255 (1x3x98x130); per returned map its shape,
  float64 sum and abs-sum; the npz holds ``backbone_{size}_{i}`` = ``x[0, :8, ::2, ::2]``.
* ``encoders[key]`` (all 12 configs): state-dict key -> shape (in order) and ``num_parameters``,
  and the same after ``convert_to_deploy`` of every submodule that has one, as the official
  ``model.deploy()`` does (``deploy_state_dict``, ``deploy_num_parameters``). For ``atto``
  (LiteEncoder), ``n`` (version dfine, csp2), ``m`` (version deim) and ``dinov3_s`` (identity
  input projections) also ``outputs``: the encoder rebuilt with ``eval_spatial_size=[96, 96]``
  (``forward_kwargs``; the config's size would not fit the small maps), weights
  ``synth_state_dict(keys, seed=1)``, ``eval()``, input
  ``make_dfine_golden.encoder_features(in_channels, feat_strides, size=96)``; per output its shape,
  sum and abs-sum (npz ``encoder_{key}_{i}`` = ``x[0, :8, ::2, ::2]``), and
  ``deploy_max_abs_change``, the largest change of any output after deploy conversion.
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
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.synth / golden.deimv2_synth
from golden.deimv2_synth import BACKBONE_FORWARD, ENCODER_FORWARD, FORWARD_SIZE, encoder_features  # noqa: E402
from golden.synth import synth_image, synth_state_dict  # noqa: E402

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from float64_patches import DTYPE  # noqa: E402

HGNETV2_SIZES = ["atto", "femto", "pico", "n", "s", "m", "l", "x"]
DINOV3_SIZES = ["s", "m", "l", "x"]
CONFIG_FILES = {
    **{size: f"configs/deimv2/deimv2_hgnetv2_{size}_coco.yml" for size in HGNETV2_SIZES},
    **{f"dinov3_{size}": f"configs/deimv2/deimv2_dinov3_{size}_coco.yml" for size in DINOV3_SIZES},
}


def count(model, trainable=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def shapes_of(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def summary(outs):
    return [{"shape": list(o.shape), "sum": o.double().sum().item(), "abs_sum": o.double().abs().sum().item()}
            for o in outs]


def resolve_configs(root: Path) -> dict:
    from engine.core.yaml_utils import load_config

    configs = {}
    for key, rel in CONFIG_FILES.items():
        cfg = load_config(str(root / rel), dict())
        backbone, encoder = cfg["DEIM"]["backbone"], cfg["DEIM"]["encoder"]
        backbone_kwargs = dict(cfg[backbone])
        if backbone == "HGNetv2":
            backbone_kwargs["pretrained"] = False
            backbone_kwargs.pop("local_model_dir", None)
        encoder_kwargs = {**cfg[encoder], "eval_spatial_size": cfg["eval_spatial_size"]}
        configs[key] = {"file": rel, "backbone": {"type": backbone, "kwargs": backbone_kwargs},
                        "encoder": {"type": encoder, "kwargs": encoder_kwargs}}
    return configs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official Intellindust-AI-Lab/DEIMv2")
    root = parser.parse_args().official.resolve()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    sys.path.insert(0, str(root))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    torch.set_num_threads(1)
    patches = float64_patches.install("engine.deim", "sincos")
    from engine.backbone.hgnetv2 import HGNetv2
    from engine.deim.hybrid_encoder import HybridEncoder
    from engine.deim.lite_encoder import LiteEncoder

    encoder_classes = {"HybridEncoder": HybridEncoder, "LiteEncoder": LiteEncoder}
    golden = {
        "official": {"repo": "Intellindust-AI-Lab/DEIMv2", "commit": commit},
        "dtype": str(DTYPE)[len("torch."):],
        "patches": patches,
        "torch": torch.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deimv2_encoders_golden.py <official DEIMv2>",
        "configs": resolve_configs(root),
        "backbones": {},
        "encoders": {},
    }
    arrays = {}

    image = torch.from_numpy(synth_image(98, 130, seed=4)).permute(2, 0, 1)[None].to(DTYPE) / 255
    for size in HGNETV2_SIZES:
        model = HGNetv2(**golden["configs"][size]["backbone"]["kwargs"])
        shapes = shapes_of(model)
        entry = {"state_dict": shapes, "num_parameters": count(model), "num_trainable": count(model, trainable=True)}
        if size in BACKBONE_FORWARD:
            model.load_state_dict(synth_state_dict(shapes, seed=0), strict=False)
            model.to(DTYPE)
            with torch.no_grad():
                outs = model.eval()(image)
            entry["outputs"] = summary(outs)
            for i, o in enumerate(outs):
                arrays[f"backbone_{size}_{i}"] = o[0, :8, ::2, ::2].numpy()
        golden["backbones"][size] = entry

    for key, config in golden["configs"].items():
        cls = encoder_classes[config["encoder"]["type"]]
        kwargs = config["encoder"]["kwargs"]
        model = cls(**kwargs)
        entry = {"state_dict": shapes_of(model), "num_parameters": count(model)}
        if key in ENCODER_FORWARD:
            forward_kwargs = {**kwargs, "eval_spatial_size": [FORWARD_SIZE, FORWARD_SIZE]}
            model = cls(**forward_kwargs)
            model.load_state_dict(synth_state_dict(entry["state_dict"], seed=1), strict=False)
            model.eval().to(DTYPE)
            feats = encoder_features(kwargs["in_channels"], kwargs["feat_strides"])
            with torch.no_grad():
                outs = model(feats)
        for module in list(model.modules())[1:]:
            if hasattr(module, "convert_to_deploy"):
                module.convert_to_deploy()
        entry["deploy_state_dict"] = shapes_of(model)
        entry["deploy_num_parameters"] = count(model)
        if key in ENCODER_FORWARD:
            with torch.no_grad():
                deployed = model(feats)
            entry["forward_kwargs"] = forward_kwargs
            entry["outputs"] = summary(outs)
            entry["deploy_max_abs_change"] = max((a - b).abs().max().item() for a, b in zip(outs, deployed))
            for i, o in enumerate(outs):
                arrays[f"encoder_{key}_{i}"] = o[0, :8, ::2, ::2].numpy()
        golden["encoders"][key] = entry

    (GOLDEN_DIR / "deimv2_encoders_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "deimv2_encoders_golden.npz", **arrays)
    print("wrote deimv2_encoders_golden.json and deimv2_encoders_golden.npz")


if __name__ == "__main__":
    main()
