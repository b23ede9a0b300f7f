"""Write ``tests/golden/dino_swin_l.pt`` from the official DINO Swin Transformer
(IDEA-Research/DINO ``models/dino/swin_transformer.py``) and the official DINO builder.

The official tree is imported at run time from the work tree given as the only argument (its
``git rev-parse HEAD`` is recorded, a modified tree is refused); nothing of it is copied here. Run from the
repository root, with a Python environment that has torch and torchvision::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_swin_golden.py PATH/TO/DINO

Run-time stand-ins (listed in ``provenance["patches"]``), none of which touches a number compared:

* ``timm`` (imported by the official Swin file for ``DropPath``, ``to_2tuple``, ``trunc_normal_``): when it is
  not installed, small stand-ins written here are put in ``sys.modules`` (``trunc_normal_`` is torch's,
  ``DropPath`` is only active in training, the goldens are eval).
* ``MultiScaleDeformableAttention`` (the compiled CUDA extension that the official deformable attention
  imports): an empty module, so that the full DINO model can be built for its parameter count.
* The official ``build_backbone`` loads pretrained Swin weights only when ``backbone_dir`` is in ``args``;
  the namespace built here (the two config files only) has none, so nothing is loaded.

Golden contents (a dict, ``torch.load(..., weights_only=True)``):

* ``provenance``: official repo and commit, torch version, dtype of the numeric values, command, patches.
* ``swin_L_384_22k``: the official ``build_swin_transformer("swin_L_384_22k", 384, out_indices=(1, 2, 3))``
  (DINO 4-scale): ``state_dict`` (list of [key, shape], in order, buffers included), ``num_parameters``;
  ``state_dict_5scale`` / ``num_parameters_5scale`` for ``out_indices=(0, 1, 2, 3)``.
* ``dino``: the full official DINO model of ``config/DINO/DINO_4scale_swin.py`` (num_classes 91) as built
  by ``build_dino``: ``num_parameters_4scale``; ``num_parameters_5scale`` with ``return_interm_indices
  [0, 1, 2, 3]`` and ``num_feature_levels 5``; and what its builder gave the Swin backbone
  (``backbone_out_indices``, ``backbone_frozen_stages``, ``backbone_use_checkpoint``,
  ``backbone_drop_path``: the per-block stochastic depth rates, 0.0 for the blocks built without DropPath).
* ``cases``: for each of ``SWIN_CASES`` (tests/golden/dino_swin_synth.py), the official
  ``SwinTransformer(**kwargs)`` in float64 (``.double()``), eval mode, weights ``synth_swin_state_dict``
  (seed 0) loaded strictly next to its own ``relative_position_index``: ``kwargs``, ``weights_fingerprint``
  (``fingerprint`` of the synthetic weights), ``input`` (float64, ``swin_input``) and ``outputs`` (the
  float64 maps of ``forward_raw``, checked equal to the tensors of ``forward(NestedTensor)``).
"""
import argparse
import importlib.util
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = REPO_ROOT / "tests" / "golden" / "dino_swin_l.pt"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.dino_swin_synth

from golden.dino_swin_synth import SWIN_CASES, swin_input, synth_swin_state_dict  # noqa: E402
from golden.synth import fingerprint  # noqa: E402

DTYPE = torch.float64


def stub_timm(patches):
    """Put a minimal ``timm.models.layers`` in ``sys.modules`` when timm is not installed."""
    if importlib.util.find_spec("timm") is not None:
        return

    class StubDropPath(nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.training or not self.drop_prob:
                return x
            keep = 1.0 - self.drop_prob
            return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = StubDropPath, pair, nn.init.trunc_normal_
    models = types.ModuleType("timm.models")
    models.layers = layers
    timm = types.ModuleType("timm")
    timm.models = models
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    patches.append("timm not installed: timm.models.layers stubbed (DropPath as timm's, to_2tuple, "
                   "torch.nn.init.trunc_normal_)")


def layout(module):
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def count(module):
    return sum(p.numel() for p in module.parameters())


def dino_args(official, **overrides):
    """The official config namespace of DINO-4scale Swin-L (coco_transformer.py + DINO_4scale_swin.py)."""
    cfg = {}
    for name in ("coco_transformer.py", "DINO_4scale_swin.py"):
        exec(compile((official / "config" / "DINO" / name).read_text(), name, "exec"), {}, cfg)
    cfg.pop("_base_", None)
    cfg.update(device="cpu", **overrides)
    assert "backbone_dir" not in cfg  # so build_backbone loads no pretrained weights
    return argparse.Namespace(**cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official IDEA-Research/DINO")
    official = parser.parse_args().official.resolve()
    git = ["git", "-C", str(official)]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], check=True,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        raise SystemExit(f"the official work tree is modified:\n{dirty}")

    patches = []
    stub_timm(patches)
    sys.modules["MultiScaleDeformableAttention"] = types.ModuleType("MultiScaleDeformableAttention")
    patches.append("MultiScaleDeformableAttention: empty module (parameter counts only; no forward of DINO)")
    patches.append("build_backbone: no backbone_dir in args, so no pretrained Swin weights are loaded")
    sys.path.insert(0, str(official))
    from models.dino.dino import build_dino
    from models.dino.swin_transformer import SwinTransformer, build_swin_transformer
    from util.misc import NestedTensor

    torch.set_num_threads(2)
    torch.manual_seed(0)
    golden = {"provenance": {
        "official": "IDEA-Research/DINO", "commit": commit, "torch": str(torch.__version__), "dtype": "float64",
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_swin_golden.py PATH/TO/DINO",
        "patches": patches,
    }}

    swin_l = {}
    for suffix, out_indices in (("", (1, 2, 3)), ("_5scale", (0, 1, 2, 3))):
        model = build_swin_transformer("swin_L_384_22k", 384, out_indices=out_indices)
        swin_l["state_dict" + suffix] = layout(model)
        swin_l["num_parameters" + suffix] = count(model)
        del model
    golden["swin_L_384_22k"] = swin_l
    print("Swin-L backbone parameters:", swin_l["num_parameters"], swin_l["num_parameters_5scale"])

    cwd = Path.cwd()
    import os
    os.chdir(official)  # the official builders expect the repository root as the working directory
    try:
        dino = {}
        for scale, overrides in ((4, {}), (5, dict(return_interm_indices=[0, 1, 2, 3], num_feature_levels=5))):
            model, _, _ = build_dino(dino_args(official, **overrides))
            dino[f"num_parameters_{scale}scale"] = count(model)
            if scale == 4:
                swin = model.backbone[0]
                blocks = [b for layer in swin.layers for b in layer.blocks]
                dino.update(backbone_out_indices=list(swin.out_indices), backbone_frozen_stages=swin.frozen_stages,
                            backbone_use_checkpoint=[layer.use_checkpoint for layer in swin.layers],
                            backbone_drop_path=[getattr(b.drop_path, "drop_prob", 0.0) for b in blocks])
                assert layout(swin) == swin_l["state_dict"]
            del model
    finally:
        os.chdir(cwd)
    golden["dino"] = dino
    print("DINO Swin-L parameters:", dino["num_parameters_4scale"], dino["num_parameters_5scale"])

    cases = {}
    for name, case in SWIN_CASES.items():
        model = SwinTransformer(**case["kwargs"]).to(DTYPE)
        model.eval()  # not chained: the official train() override returns None
        state = model.state_dict()
        synth = synth_swin_state_dict({k: list(v.shape) for k, v in state.items()}, seed=0)
        model.load_state_dict({**state, **synth}, strict=True)
        x = swin_input(case["input_shape"], case["input_seed"])
        with torch.no_grad():
            outputs = [o.clone() for o in model.forward_raw(x)]
            nested = model(NestedTensor(x, torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)))
        assert all(torch.equal(nested[i].tensors, o) for i, o in enumerate(outputs))
        assert all(o.dtype == DTYPE and torch.isfinite(o).all() for o in outputs)
        cases[name] = {"kwargs": case["kwargs"], "weights_fingerprint": fingerprint(synth), "input": x,
                       "outputs": outputs}
        print(name, [tuple(o.shape) for o in outputs], [f"{o.abs().mean().item():.3g}" for o in outputs])
    golden["cases"] = cases

    torch.save(golden, GOLDEN)
    size = GOLDEN.stat().st_size
    assert size < 2 * 1024 ** 2, size
    print(f"wrote {GOLDEN} ({math.ceil(size / 1024)} KiB)")


if __name__ == "__main__":
    main()
