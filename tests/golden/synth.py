"""Deterministic synthetic weights, images and targets for golden-value tests.

The golden files next to this module were produced by running the official code on exactly these
weights and inputs (see ``tools/golden/make_rtdetrv2_golden.py``). A test rebuilds the same tensors
here, loads them into our model and compares. Nothing in this module depends on the official code or on ``dfine``.

All random draws are uniform doubles from NumPy's PCG64 (``Generator.random``), the most stable part of
NumPy's random API; ``tests/test_golden_synth.py`` pins a few values so that a change in the stream cannot
go unnoticed.
"""

import math
import zlib

import numpy as np
import torch

__all__ = [
    "CONSTRUCTOR_BUFFERS",
    "WEIGHT_GAIN",
    "fingerprint",
    "synth_image",
    "synth_state_dict",
    "synth_targets",
]

# State-dict entries that the model computes in its constructor (anchor grid, MSDA point scales) or
# that count steps; random values would make them meaningless, so the model keeps its own.
CONSTRUCTOR_BUFFERS = frozenset({"num_batches_tracked", "anchors", "valid_mask", "num_points_scale"})

# Conv / linear weights are U(-a, a) with a = sqrt(WEIGHT_GAIN / fan_in), i.e. variance
# WEIGHT_GAIN / (3 * fan_in) = 1 / fan_in: a deep ResNet + transformer stays finite and its logits and
# boxes stay away from sigmoid saturation.
WEIGHT_GAIN = 3.0


def _rng(*parts) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (Python's ``hash`` is salted per process)."""
    return np.random.default_rng(zlib.crc32("/".join(str(p) for p in parts).encode("utf-8")))


def _uniform(rng: np.random.Generator, low: float, high: float, shape) -> np.ndarray:
    return low + (high - low) * rng.random(shape)


def _synth_tensor(key: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    module, _, leaf = key.rpartition(".")
    if leaf == "running_mean":
        return _uniform(rng, -0.1, 0.1, shape)
    if leaf == "running_var":
        return _uniform(rng, 0.5, 1.5, shape)
    if leaf == "scale":  # HGNetv2 learnable affine block
        return _uniform(rng, 0.9, 1.1, shape)
    if leaf.endswith("bias"):  # bias, in_proj_bias
        return _uniform(rng, -0.1, 0.1, shape)
    if leaf.endswith("embed") and len(shape) == 2:  # a bare embedding table (DINO's level_embed): unit variance
        return _uniform(rng, -math.sqrt(3.0), math.sqrt(3.0), shape)
    if leaf.endswith("weight"):  # weight, in_proj_weight
        if len(shape) == 1:  # BatchNorm / FrozenBatchNorm / LayerNorm scale
            return _uniform(rng, 0.9, 1.1, shape)
        if module.rpartition(".")[2].endswith("embed"):  # nn.Embedding rows: unit variance
            return _uniform(rng, -math.sqrt(3.0), math.sqrt(3.0), shape)
        bound = math.sqrt(WEIGHT_GAIN / math.prod(shape[1:]))
        return _uniform(rng, -bound, bound, shape)
    raise ValueError(f"synth_state_dict does not know how to fill {key!r} of shape {list(shape)}")


def synth_state_dict(key_shapes: dict, seed: int = 0) -> dict:
    """Synthetic float32 weights for the given state-dict keys.

    Args:
        key_shapes: state-dict key -> shape (list of ints).
        seed: global seed; each tensor is drawn from a generator seeded by ``crc32(f"{seed}/{key}")``,
            so a tensor depends only on (seed, key, shape), not on the other keys or their order.

    Returns:
        dict key -> float32 tensor, without the keys whose last component is in ``CONSTRUCTOR_BUFFERS``.
        Conv/linear weights ~ U(+-sqrt(WEIGHT_GAIN / fan_in)); biases ~ U(+-0.1); norm scales ~ U(0.9, 1.1);
        running_mean ~ U(+-0.1); running_var ~ U(0.5, 1.5); embeddings (modules named ``*embed``, and 2-d
        parameters named ``*embed`` such as ``level_embed``) ~ U(+-sqrt(3)) (unit variance).
    """
    out = {}
    for key, shape in key_shapes.items():
        if key.rpartition(".")[2] in CONSTRUCTOR_BUFFERS:
            continue
        shape = tuple(int(s) for s in shape)
        out[key] = torch.from_numpy(_synth_tensor(key, shape, _rng(seed, key)).astype(np.float32))
    return out


def synth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic HxWx3 uint8 RGB image that looks roughly natural.

    A smooth background (a few low-frequency cosine waves per channel), then eight filled rectangles and
    ellipses with sharp edges and their own colour gradients, then mild pixel noise.
    """
    rng = _rng("image", seed)
    y = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width

    image = np.empty((height, width, 3), dtype=np.float64)
    for c in range(3):
        field = np.full((height, width), 60.0 + 120.0 * rng.random())
        for _ in range(3):
            fy, fx = _uniform(rng, -3.0, 3.0, 2)
            phase = 2.0 * math.pi * rng.random()
            field = field + 40.0 * rng.random() * np.cos(2.0 * math.pi * (fy * y + fx * x) + phase)
        image[..., c] = field

    for i in range(8):
        h, w = _uniform(rng, 0.08, 0.45, 2)
        cy, cx = _uniform(rng, 0.0, 1.0, 2)
        colour = _uniform(rng, 0.0, 255.0, 3)
        tilt = _uniform(rng, -60.0, 60.0, 3)  # per-channel linear shading across the shape
        if i % 2 == 0:
            inside = (np.abs(y - cy) <= h / 2) & (np.abs(x - cx) <= w / 2)
        else:
            inside = ((y - cy) / (h / 2)) ** 2 + ((x - cx) / (w / 2)) ** 2 <= 1.0
        shade = colour + tilt * ((x - cx) / w + (y - cy) / h)[..., None]
        image = np.where(inside[..., None], shade, image)

    image = image + _uniform(rng, -6.0, 6.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synth_targets(num_per_image: list, num_classes: int, seed: int) -> list:
    """Random ground truth, one dict per image.

    Returns:
        list of {"labels": int64 tensor [n], "boxes": float32 tensor [n, 4]}; boxes are normalized
        (cx, cy, w, h) with w, h in [0.05, 0.5] and the whole box inside the image.
    """
    rng = _rng("targets", seed)
    targets = []
    for n in num_per_image:
        labels = np.minimum(np.floor(rng.random(n) * num_classes), num_classes - 1).astype(np.int64)
        wh = _uniform(rng, 0.05, 0.5, (n, 2))
        centre = wh / 2 + rng.random((n, 2)) * (1.0 - wh)
        boxes = np.concatenate([centre, wh], axis=1).astype(np.float32)
        targets.append({"labels": torch.from_numpy(labels), "boxes": torch.from_numpy(boxes)})
    return targets


def fingerprint(values) -> int:
    """CRC-32 of the raw bytes of arrays or tensors, to pin synthetic data bit for bit.

    Args:
        values: an array/tensor, a list of them, or a dict of them (hashed in sorted key order, keys
            included), nested freely.
    """
    crc = 0

    def visit(v):
        nonlocal crc
        if isinstance(v, dict):
            for k in sorted(v):
                crc = zlib.crc32(str(k).encode("utf-8"), crc)
                visit(v[k])
        elif isinstance(v, (list, tuple)):
            for item in v:
                visit(item)
        else:
            array = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            crc = zlib.crc32(np.ascontiguousarray(array).tobytes(), crc)

    visit(values)
    return crc
