"""Synthetic weights and inputs of the DEIMv2 golden values, shared by the scripts that write them
(``tools/golden/make_deimv2_*_golden.py``, ``tools/golden/make_copyblend_golden.py``) and the tests
that compare against them. Nothing here depends on the official code or on ``dfine``.

The numeric goldens are made in float64 (the official modules ``.double()``), so the inputs below are
float64 arrays; weights come from ``synth.synth_state_dict`` (float32 values, widened exactly by
``.double()``). Each function documents what it draws.
"""
import numpy as np
import torch

from .synth import _rng, _uniform, synth_image, synth_state_dict, synth_targets

# State-dict leaves every DEIMv2 model keeps its own values for instead of synthetic ones: the frozen
# W(n) hyper-parameters ``up`` / ``reg_scale`` of the decoder and the RoPE ``periods`` of the ViTs.
KEEP_OWN_LEAVES = frozenset({"up", "reg_scale", "periods"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- weights ---------------------------------------------------------------------------------------

def synth_vit_state_dict(key_shapes: dict, seed: int = 0) -> dict:
    """``synth_state_dict`` extended to the ViT tensors it does not know (drawn the same way, from a
    generator seeded by (seed, key)): class / storage / mask tokens ~ U(+-sqrt(3)) (unit variance),
    LayerScale ``gamma`` ~ U(0.5, 1) (so every block visibly contributes), the qkv ``bias_mask`` =
    ones with a zero key third (the DINOv3 checkpoints' value), and no ``periods`` (the model keeps
    its own, as for ``num_batches_tracked``). Float32 tensors."""
    standard, extra = {}, {}
    for key, shape in key_shapes.items():
        leaf = key.rpartition(".")[2]
        shape = tuple(int(s) for s in shape)
        if leaf in ("cls_token", "storage_tokens", "mask_token"):
            extra[key] = _uniform(_rng(seed, key), -3 ** 0.5, 3 ** 0.5, shape)
        elif leaf == "gamma":
            extra[key] = _uniform(_rng(seed, key), 0.5, 1.0, shape)
        elif leaf == "bias_mask":
            mask = np.ones(shape)
            mask[shape[0] // 3: 2 * shape[0] // 3] = 0
            extra[key] = mask
        elif leaf != "periods":
            standard[key] = shape
    out = synth_state_dict(standard, seed=seed)
    out.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in extra.items()})
    return out


def aliases(state: dict) -> list:
    """Groups (in state-dict order) of two or more keys whose tensors share storage."""
    groups = {}
    for key, value in state.items():
        groups.setdefault((value.data_ptr(), value.dtype, tuple(value.shape)), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def synth_weights(shapes: dict, alias_groups: list, seed: int = 0) -> dict:
    """``synth_vit_state_dict`` over ``shapes`` (key -> shape) without the ``KEEP_OWN_LEAVES``; the keys
    of one alias group all get the tensor of the group's first key."""
    weights = synth_vit_state_dict(
        {k: v for k, v in shapes.items() if k.rpartition(".")[2] not in KEEP_OWN_LEAVES}, seed=seed)
    for group in alias_groups:
        if group[0] in weights:
            for key in group[1:]:
                weights[key] = weights[group[0]]
    return weights


def load_synth(model: torch.nn.Module, seed: int = 0) -> dict:
    """Loads ``synth_weights`` of the model's own keys (strict; the model keeps its own values for
    the leaves that get none) and returns the synthetic tensors."""
    state = model.state_dict()
    weights = synth_weights({k: list(v.shape) for k, v in state.items()}, aliases(state), seed)
    model.load_state_dict({k: weights.get(k, v) for k, v in state.items()}, strict=True)
    return weights


def count_calls(module) -> list:
    """Attaches a forward-call counter; returns a one-element list holding the count."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


# --- images ----------------------------------------------------------------------------------------

def image_tensor(height: int, width: int, seed: int, imagenet: bool = False) -> torch.Tensor:
    """[3, H, W] float64: ``synth_image`` as RGB / 255, ImageNet-normalised if ``imagenet``."""
    x = torch.from_numpy(synth_image(height, width, seed)).permute(2, 0, 1).double() / 255.0
    if imagenet:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None]
        x = (x - mean) / std
    return x


# --- ViT trunks and STA (make_deimv2_vit_golden.py) -----------------------------------------------

PRESETS = {  # DEIMv2 configs/deimv2/deimv2_dinov3_{s,m,l,x}_coco.yml, DINOv3STAs section
    "s": dict(name="vit_tiny", embed_dim=192, num_heads=3, interaction_indexes=[3, 7, 11]),
    "m": dict(name="vit_tinyplus", embed_dim=256, num_heads=4, interaction_indexes=[3, 7, 11]),
    "l": dict(name="dinov3_vits16", interaction_indexes=[5, 8, 11], finetune=True, conv_inplane=32, hidden_dim=224),
    "x": dict(name="dinov3_vits16plus", interaction_indexes=[5, 8, 11], finetune=True, conv_inplane=64,
              hidden_dim=256),
}
STA_CASES = {"s": PRESETS["s"], "s_single": dict(PRESETS["s"], interaction_indexes=[11]), "l": PRESETS["l"]}
ROPE_GRID = (4, 6)
ROPE_TRAIN_SEED = 11
TRUNK_TRAIN_SEED = 12


def sta_input() -> torch.Tensor:
    """2x3x128x160 float64: ``image_tensor(128, 160, 10 + i, imagenet=True)`` for i = 0, 1."""
    return torch.stack([image_tensor(128, 160, 10 + i, imagenet=True) for i in range(2)])


def block_input() -> torch.Tensor:
    """2x29x384 float64 standard normal tokens (5 prefix tokens + the 4x6 ``ROPE_GRID``), rng(5)."""
    return torch.from_numpy(np.random.default_rng(5).standard_normal((2, 5 + ROPE_GRID[0] * ROPE_GRID[1], 384)))


# --- HGNetv2 / encoders (make_deimv2_encoders_golden.py) ------------------------------------------

BACKBONE_FORWARD = ["atto", "femto", "pico"]
ENCODER_FORWARD = ["atto", "n", "m", "dinov3_s"]
FORWARD_SIZE = 96


def backbone_image() -> torch.Tensor:
    """1x3x98x130 float64 (non-square, odd sizes): ``image_tensor(98, 130, 4)``."""
    return image_tensor(98, 130, 4)[None]


def encoder_features(in_channels, feat_strides, size=FORWARD_SIZE) -> list:
    """Float64 standard normal maps [1, C, size / s, size / s] per level, all from rng(7) in order."""
    rng = np.random.default_rng(7)
    shapes = [(1, c, size // s, size // s) for c, s in zip(in_channels, feat_strides)]
    return [torch.from_numpy(rng.standard_normal(shape)) for shape in shapes]


# --- decoder, RMSNorm, SwiGLU, matcher (make_deimv2_decoder_golden.py) ----------------------------

DECODER_INPUT_SIZE = 320
DECODER_BATCH = 2
MATCHER_ARGS = dict(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True, alpha=0.25,
                    gamma=2.0, change_matcher=True, iou_order_alpha=4.0, matcher_change_epoch=450)
MATCHER_EPOCHS = (0, 449, 450, 500)


def decoder_inputs(name: str, feat_channels, feat_strides) -> list:
    """One float64 map ``[2, C_l, 320 / s, 320 / s]`` per level, U(-2, 2)."""
    rng = np.random.default_rng([7, len(name), sum(map(ord, name))])
    size = DECODER_INPUT_SIZE
    return [torch.from_numpy(_uniform(rng, -2, 2, (DECODER_BATCH, c, size // s, size // s)))
            for c, s in zip(feat_channels, feat_strides)]


def stored_part(key: str, t):
    """The part of a decoder output the golden file keeps (to keep it small): every 8th class logit and
    every 4th corner-distribution bin; the rest whole."""
    if key.endswith("logits"):
        return t[..., ::8]
    return t[..., ::4] if key.endswith("corners") else t


def module_inputs() -> dict:
    """Float64 arrays: ``rmsnorm_x`` [3, 5, 64] U(-3, 3), ``rmsnorm_scale`` [64] U(0.5, 1.5),
    ``swiglu_x`` [3, 5, 64] U(-2, 2)."""
    rng = np.random.default_rng(11)
    return {
        "rmsnorm_x": _uniform(rng, -3, 3, (3, 5, 64)),
        "rmsnorm_scale": _uniform(rng, 0.5, 1.5, (64,)),
        "swiglu_x": _uniform(rng, -2, 2, (3, 5, 64)),
    }


def matcher_inputs() -> dict:
    """Two images of 20 queries over 10 classes (float64 logits, cxcywh boxes); 3 and 5 ground truths."""
    rng = np.random.default_rng(13)
    logits = _uniform(rng, -4, 2, (2, 20, 10))
    centres, sizes = _uniform(rng, 0.25, 0.75, (2, 20, 2)), _uniform(rng, 0.1, 0.4, (2, 20, 2))
    targets = []
    for n in (3, 5):
        gt = np.concatenate([_uniform(rng, 0.3, 0.7, (n, 2)), _uniform(rng, 0.1, 0.4, (n, 2))], 1)
        targets.append({"labels": rng.integers(0, 10, n).astype(np.int64), "boxes": gt})
    return {"logits": logits, "boxes": np.concatenate([centres, sizes], -1), "targets": targets}


# --- Copy-Blend (make_copyblend_golden.py) ---------------------------------------------------------

COPYBLEND_HEIGHT, COPYBLEND_WIDTH = 48, 64


def copyblend_inputs():
    """Three (3, 48, 64) uint8 images, their (N, 4) float32 absolute XYXY boxes (corners between whole
    pixels, so truncating them does not depend on round-off) and (N,) int64 labels."""
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(3, 3, COPYBLEND_HEIGHT, COPYBLEND_WIDTH), dtype=np.uint8)
    boxes = [
        [[3.4, 5.6, 30.7, 28.3], [40.2, 30.5, 44.6, 36.3], [50.3, 2.7, 63.4, 20.6]],
        np.zeros((0, 4)),
        [[1.3, 1.6, 40.7, 35.4], [20.4, 10.3, 31.6, 19.8], [5.5, 30.2, 12.1, 36.9]],
    ]
    boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
    labels = [np.array([2, 0, 4]), np.zeros(0), np.array([1, 3, 2])]
    return images, boxes, [classes.astype(np.int64) for classes in labels]


# --- whole models (make_deimv2_model_golden.py) ----------------------------------------------------

def train_targets(size: int) -> list:
    """``synth_targets([3, 5], 80, seed=3)`` on a ``size`` x ``size`` image as Detectron2 holds them:
    ``labels`` and ``boxes`` in absolute XYXY pixels rounded to float32 (``Boxes`` stores float32),
    so that the official code can be given exactly the boxes our model sees."""
    out = []
    for target in synth_targets([3, 5], 80, seed=3):
        cxcywh = target["boxes"].double()
        xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1) * size
        out.append({"labels": target["labels"], "boxes": xyxy.float()})
    return out
