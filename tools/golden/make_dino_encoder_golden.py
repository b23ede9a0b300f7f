"""Write ``tests/golden/dino_encoder_4scale.pt`` and ``dino_encoder_5scale.pt`` by running the official
DINO (IDEA-Research/DINO) input projection, position encoding, level embedding and deformable encoder.

The official code is imported from a clone outside this repository; nothing of it is copied here, and
each file records the clone's commit. How to rerun, from the repository root, with an environment that
has torch, torchvision and scipy (timm is stubbed when missing: only the Swin backbone uses it)::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_encoder_golden.py PATH/TO/DINO

The script works from the clone (it becomes the working directory and ``sys.path[0]``). The official
deformable attention is a compiled op; an empty ``MultiScaleDeformableAttention`` module stands in for
the extension and ``MSDeformAttnFunction.apply`` is replaced, in ``models.dino.ops.modules.ms_deform_attn``
only, by the official pure-PyTorch ``ms_deform_attn_core_pytorch`` (the reference the CUDA kernel is
tested against). ``torchvision.models.resnet50`` is called without ``pretrained`` (random weights; the
backbone does not run anyway).

Models: ``build_dino`` on ``config/DINO/DINO_{4,5}scale.py`` (with its ``_base_``
``coco_transformer.py``), ``device='cpu'``. Weights: the official state dict's ``input_proj.*``,
``transformer.level_embed`` and ``transformer.encoder.*`` entries are replaced by
``golden.synth.synth_state_dict(keys, seed=SEED)`` (recorded as ``weights.fingerprint``), then the
model runs in ``eval()`` after ``.double()``. Inputs: the backbone body is replaced by a module that
returns given feature maps (``standard_normal`` float32 draws of ``np.random.default_rng(INPUT_SEED)``,
stored as float32 and handed over as float64) at the sizes a ResNet-50 gives for the image size, so the
official DINO ``forward`` runs from its backbone joiner (masks and position encodings per level) through
the input projection and the transformer up to the encoder's output, where a hook stops it. The batch
has two images of one padded size, the second valid only in its top-left ``valid_size`` (its padding
mask True elsewhere): ``padded``; and the same maps with no padding (an all-False mask): ``unpadded``.

dtype: float64. Two official steps compute in float32 whatever the model's dtype: the sine position
encoding (``PositionEmbeddingSineHW``) and the valid ratios (``get_valid_ratio``); both are replaced at
run time by float64 versions (``float64_patches.install("models.dino")``, listed in
``provenance.patches``). The encoder's reference-point grid is an official float32 ``linspace`` of
half-integers, exact in float32, divided by the (then float64) valid ratios, so it needs no patch.

Contents of each file (``torch.load(..., weights_only=True)``):

* ``provenance``: official repository and commit, torch / torchvision / numpy versions, command, dtype,
  patches.
* ``config``: the official settings the encoder uses (levels, channels, strides, widths, temperatures).
* ``layout``: official state-dict key -> shape of the three modules; ``counts``: parameter counts of
  ``input_proj`` (per level), ``level_embed`` and ``encoder``, of the model as built.
* ``weights``: ``seed`` and ``fingerprint`` (``golden.synth.fingerprint`` of the float32 synthetic
  state dict).
* ``inputs``: ``features`` (list of float32 ``[2, C_l, H_l, W_l]``), ``padding_mask`` (``[2, H, W]``
  bool, True on the padding), ``valid_size``.
* ``padded`` / ``unpadded``: ``memory`` (float64 ``[2, sum(H_l*W_l), 256]``, the official encoder's
  output), ``spatial_shapes``; ``padded`` also ``pos64`` (the patched float64 encodings the official
  model used) and ``pos32`` (the unpatched official float32 encodings of the same level masks), both
  flattened to ``[2, sum(H_l*W_l), 256]`` and cut to channels ``POS_CHANNELS`` to keep the file small.
"""
import importlib
import importlib.util
import math
import os
import sys
import types
from argparse import Namespace
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.synth
from golden.synth import fingerprint, synth_state_dict  # noqa: E402
import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from make_rtdetrv2_golden import official_commit  # noqa: E402

DTYPE = torch.float64
SEED = 0
INPUT_SEED = 11
POS_CHANNELS = slice(None, None, 5)  # 52 of 256 channels: sines and cosines of y and x
CASES = {
    # name: (config file, padded image size (H, W), valid size of the second image)
    "4scale": ("DINO_4scale.py", (64, 80), (28, 50)),
    "5scale": ("DINO_5scale.py", (32, 48), (14, 30)),
}
RESNET_CHANNELS = {1: 256, 2: 512, 3: 1024, 4: 2048}  # ResNet-50 layer -> channels; layer l has stride 2^(l+1)
MODULE_PREFIXES = ("input_proj.", "transformer.level_embed", "transformer.encoder.")


class _StopAfterEncoder(Exception):
    pass


class _GivenFeatures(torch.nn.Module):
    """Stands in for the ResNet body: returns ``self.features`` whatever the image."""

    def __init__(self):
        super().__init__()
        self.features = []

    def forward(self, tensors):
        return OrderedDict((str(i), f) for i, f in enumerate(self.features))


def _stub_official_imports(root: Path):
    """The compiled deformable-attention op and timm, absent here, as empty stand-ins."""
    sys.modules["MultiScaleDeformableAttention"] = types.ModuleType("MultiScaleDeformableAttention")
    if importlib.util.find_spec("timm") is None:
        timm = types.ModuleType("timm")
        timm.models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        layers.DropPath = torch.nn.Identity
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
        timm.models.layers = layers
        sys.modules.update({"timm": timm, "timm.models": timm.models, "timm.models.layers": layers})
    msda = importlib.import_module("models.dino.ops.modules.ms_deform_attn")
    core = importlib.import_module("models.dino.ops.functions.ms_deform_attn_func").ms_deform_attn_core_pytorch

    class PurePyTorch:
        @staticmethod
        def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
            return core(value, spatial_shapes, sampling_locations, attention_weights)

    msda.MSDeformAttnFunction = PurePyTorch

    import torchvision

    resnet50 = torchvision.models.resnet50

    def resnet50_random(*args, pretrained=None, **kwargs):
        return resnet50(*args, weights=None, **kwargs)

    torchvision.models.resnet50 = resnet50_random


def _load_config(root: Path, name: str) -> dict:
    """The official Python config ``config/DINO/name`` over its ``_base_`` files, as a dict."""
    def run(path):
        values = {}
        exec(compile(path.read_text(), str(path), "exec"), {}, values)
        return values

    path = root / "config" / "DINO" / name
    top = run(path)
    config = {}
    for base in top.pop("_base_", []):
        config.update(run(path.parent / base))
    config.update(top)
    return {k: v for k, v in config.items() if not k.startswith("__")}


def _features(config: dict, image_size, rng):
    """float32 maps at the ResNet-50 sizes of ``image_size`` for the config's returned layers."""
    layers = [5 - len(config["return_interm_indices"]) + i for i in range(len(config["return_interm_indices"]))]
    h, w = image_size
    out = []
    for layer in layers:
        stride = 2 ** (layer + 1)
        size = (math.ceil(h / stride), math.ceil(w / stride))
        draw = rng.standard_normal((2, RESNET_CHANNELS[layer], *size), dtype=np.float32)
        out.append(torch.from_numpy(draw))
    return out, [2 ** (layer + 1) for layer in layers], [RESNET_CHANNELS[layer] for layer in layers]


def _run(model, features, mask, position_encoding_fp32):
    """The official forward up to the encoder's output on the given maps and padding mask."""
    from util.misc import NestedTensor

    captured = {}

    def before_transformer(module, args):
        srcs, masks, _, pos_embeds = args[:4]
        captured["masks"] = [m.clone() for m in masks]
        captured["pos"] = [p.clone() for p in pos_embeds]

    def after_encoder(module, args, output):
        captured["memory"] = output[0].clone()
        raise _StopAfterEncoder

    model.backbone[0].body.features = [f.to(DTYPE) for f in features]
    images = torch.zeros(mask.shape[0], 3, *mask.shape[1:], dtype=DTYPE)
    hooks = [model.transformer.register_forward_pre_hook(before_transformer),
             model.transformer.encoder.register_forward_hook(after_encoder)]
    try:
        with torch.no_grad():
            model(NestedTensor(images, mask))
    except _StopAfterEncoder:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    shapes = [list(m.shape[1:]) for m in captured["masks"]]

    def flat(maps):
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)[..., POS_CHANNELS].contiguous()

    with torch.no_grad():
        pos32 = [position_encoding_fp32(types.SimpleNamespace(tensors=m[:, None].float(), mask=m))
                 for m in captured["masks"]]
    return {"memory": captured["memory"], "spatial_shapes": shapes, "pos64": flat(captured["pos"]),
            "pos32": flat(pos32)}


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    root = Path(argv[0]).resolve()
    commit = official_commit(root)
    os.chdir(root)
    sys.path.insert(0, str(root))
    _stub_official_imports(root)
    from models.dino.dino import build_dino
    from models.dino.position_encoding import PositionEmbeddingSineHW

    official_sine_forward = PositionEmbeddingSineHW.forward
    patches = float64_patches.install("models.dino")
    import torchvision

    for name, (config_file, image_size, valid_size) in CASES.items():
        config = _load_config(root, config_file)
        torch.manual_seed(0)
        model, _, _ = build_dino(Namespace(**config, device="cpu"))
        state = model.state_dict()
        keys = {k: list(v.shape) for k, v in state.items() if k.startswith(MODULE_PREFIXES)}
        counts = {
            "input_proj": [sum(p.numel() for p in proj.parameters()) for proj in model.input_proj],
            "level_embed": model.transformer.level_embed.numel(),
            "encoder": sum(p.numel() for p in model.transformer.encoder.parameters()),
        }
        weights = synth_state_dict(keys, seed=SEED)
        assert set(weights) == set(keys), "every encoder entry is a parameter"
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and not set(keys) & set(missing)
        model.backbone[0].body = _GivenFeatures()
        model.double().eval()

        features, strides, channels = _features(config, image_size, np.random.default_rng(INPUT_SEED))
        mask = torch.ones(2, *image_size, dtype=torch.bool)
        mask[0] = False
        mask[1, :valid_size[0], :valid_size[1]] = False
        position_encoding = PositionEmbeddingSineHW(
            config["hidden_dim"] // 2, temperatureH=config["pe_temperatureH"],
            temperatureW=config["pe_temperatureW"], normalize=True)

        def position_encoding_fp32(tensor_list):
            return official_sine_forward(position_encoding, tensor_list)

        padded = _run(model, features, mask, position_encoding_fp32)
        unpadded = _run(model, features, torch.zeros_like(mask), position_encoding_fp32)
        del unpadded["pos64"], unpadded["pos32"]
        golden = {
            "provenance": {
                "official_repo": "IDEA-Research/DINO",
                "official_commit": commit,
                "official_config": f"config/DINO/{config_file}",
                "torch": str(torch.__version__),
                "torchvision": str(torchvision.__version__),
                "numpy": str(np.__version__),
                "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dino_encoder_golden.py <DINO clone>",
                "dtype": "float64",
                "patches": patches,
            },
            "config": {
                "num_feature_levels": config["num_feature_levels"], "in_channels": channels,
                "feat_strides": strides, "hidden_dim": config["hidden_dim"], "nheads": config["nheads"],
                "enc_layers": config["enc_layers"], "enc_n_points": config["enc_n_points"],
                "dim_feedforward": config["dim_feedforward"], "dropout": config["dropout"],
                "pe_temperatureH": config["pe_temperatureH"], "pe_temperatureW": config["pe_temperatureW"],
                "image_size": list(image_size),
            },
            "layout": keys,
            "counts": counts,
            "weights": {"seed": SEED, "fingerprint": fingerprint(weights)},
            "inputs": {"features": features, "padding_mask": mask, "valid_size": list(valid_size)},
            "padded": padded,
            "unpadded": unpadded,
        }
        path = GOLDEN_DIR / f"dino_encoder_{name}.pt"
        torch.save(golden, path)
        size = path.stat().st_size
        assert size < 2 * 2 ** 20, f"{path} is {size} bytes"
        print(f"{path.relative_to(REPO_ROOT)}: {size} bytes, shapes {padded['spatial_shapes']}, counts {counts}")


if __name__ == "__main__":
    main(sys.argv[1:])
