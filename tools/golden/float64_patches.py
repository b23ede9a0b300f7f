"""Run-time patches that let the official RT-DETRv2, D-FINE, DEIM, DEIMv2 and DINO code compute in the
dtype it is run in.

A few official steps compute in float32 whatever the model's dtype. In a float64 golden they would be
float32 roundings, and their float32 sin / cos / exp / reductions differ by an ulp between CPU kernel
ISAs (AVX-512, AVX2, scalar), so a golden written on one machine would not match a test run on
another. Each patch keeps the official formula and changes only the dtype; :data:`PATCHES` describes
them for the golden files' provenance (:func:`describe` fills in the official package). Our own modules
follow the model's dtype in the same places (float32 as the official code for float32 and lower
precisions, float64 for a float64 model).

The official packages (:data:`PACKAGES`): ``src.zoo.rtdetr`` (lyuwenyu/RT-DETR, rtdetrv2_pytorch),
``src.zoo.dfine`` (Peterande/D-FINE) and ``engine.deim`` (Intellindust-AI-Lab/DEIM and DEIMv2). Each
has ``hybrid_encoder.HybridEncoder``; D-FINE and DEIM(v2) also ``dfine_utils.translate_gt`` and a
criterion with ``unimodal_distribution_focal_loss``; DEIMv2 alone ``deim_utils.RMSNorm``. DINO
(IDEA-Research/DINO) is ``models.dino``, with ``position_encoding.PositionEmbeddingSineHW`` and
``deformable_transformer.DeformableTransformer.get_valid_ratio``. DN-DETR's DN-DAB-DETR
(IDEA-Research/DN-DETR) is ``models.DN_DAB_DETR``, with the same ``position_encoding.PositionEmbeddingSineHW``;
its DAB-Deformable-DETR is ``models.dn_dab_deformable_detr``, with ``position_encoding.PositionEmbeddingSine``
and the same ``get_valid_ratio``. Deformable-DETR (fundamentalvision/Deformable-DETR) is the top-level
``models``, with the same ``position_encoding.PositionEmbeddingSine`` and ``get_valid_ratio``.

Usage, inside a golden script, after the official package is importable: :func:`install` (package,
then all or the named class- and module-level patches) before building the models, and
:func:`rope_follow_dtype` on each DEIMv2 model after it has been cast to float64. Before it is put in
place, each replacement is checked against the official function in float32: bit for bit for
``translate_gt`` and the focal loss, to float32 rounding for the sin-cos embedding.
"""
import importlib

import torch

DTYPE = torch.float64
SELF = "tools/golden/float64_patches.py"
PACKAGES = {
    "src.zoo.rtdetr": {"patches": ("sincos",)},
    "src.zoo.dfine": {"patches": ("sincos", "dfl_weight", "translate_gt"),
                      "criterion": "dfine_criterion.DFINECriterion"},
    "engine.deim": {"patches": ("rmsnorm", "sincos", "dfl_weight", "translate_gt"),
                    "criterion": "deim_criterion.DEIMCriterion"},
    "models.dino": {"patches": ("sine_hw", "valid_ratio")},
    "models.DN_DAB_DETR": {"patches": ("sine_hw",)},
    "models.dn_dab_deformable_detr": {"patches": ("sine", "valid_ratio")},
    "models": {"patches": ("sine", "valid_ratio")},
}
PATCHES = {
    "rope": SELF + ":rope_follow_dtype: after the cast to float64, every official RopePositionEmbedding "
            "(dinov3 layers and vit_tiny) gets dtype=float64 and re-runs its own _init_weights, so its "
            "periods, coordinates and rescale draw are float64 (officially float32: DINOv3's "
            "pos_embed_rope_dtype 'fp32', ViT-Tiny's default dtype)",
    "rmsnorm": "{package}.deim_utils.RMSNorm.forward replaced by " + SELF + ":rms_norm_in_input_dtype: its own "
               "_norm on x in float64 for float64 inputs (officially on x.float(), always float32; lower "
               "precisions unchanged)",
    "sincos": "{package}.hybrid_encoder.HybridEncoder.build_2d_sincos_position_embedding replaced by " + SELF
              + ":sincos_position_embedding: the same embedding computed in float64 (officially float32), "
              "wherever the official model builds it (the eval_spatial_size buffer at construction, the "
              "training forward, eval without eval_spatial_size)",
    "dfl_weight": "{package}.{criterion}.unimodal_distribution_focal_loss wrapped by " + SELF
                  + ":dfl_with_weight_in_input_dtype: the official unweighted per-edge loss (reduction='none'), "
                  "then the IoU weights and the reduction in the weights' dtype (officially weight.float(), "
                  "which rounds float64 IoUs to float32; checked equal to the official method in float32)",
    "translate_gt": "{package}.dfine_utils.translate_gt replaced by " + SELF + ":translate_gt_in_input_dtype: "
                    "the same bins and weights, its indices and weights in gt's dtype instead of the official "
                    ".float() (which fails in float64; checked equal to the official function in float32)",
    "sine_hw": "{package}.position_encoding.PositionEmbeddingSineHW.forward replaced by " + SELF
               + ":sine_hw_position_embedding: the same encoding computed in float64 (officially float32 cumsums "
               "and frequencies, which the backbone joiner and the extra levels then cast to the features' dtype; "
               "checked equal to the official one in float32 to float32 rounding)",
    "sine": "{package}.position_encoding.PositionEmbeddingSine.forward replaced by " + SELF
            + ":sine_position_embedding: the same encoding (Deformable-DETR's: pixel centres, offset -0.5) computed "
            "in float64 (officially float32 cumsums and frequencies, which the backbone joiner and the extra "
            "levels then cast to the features' dtype; checked equal to the official one in float32 to float32 "
            "rounding)",
    "valid_ratio": "{package}.deformable_transformer.DeformableTransformer.get_valid_ratio replaced by " + SELF
                   + ":valid_ratio_in_float64: the same ratios in float64 (officially valid counts .float() / size); "
                   "with them the encoder's reference points are float64 too (their official float32 linspace "
                   "grid holds half-integers, exact in float32; checked equal to the official ratios in float32 "
                   "to float32 rounding)",
}


def describe(package: str, name: str) -> str:
    """The provenance text of patch ``name`` applied to the official ``package``."""
    return PATCHES[name].format(package=package, criterion=PACKAGES[package].get("criterion", ""))


def rope_follow_dtype(model: torch.nn.Module) -> int:
    """Every official ``RopePositionEmbedding`` in ``model`` computes in :data:`DTYPE`, periods included."""
    ropes = [m for m in model.modules() if type(m).__name__ == "RopePositionEmbedding"]
    for rope in ropes:
        rope.dtype = DTYPE
        rope._init_weights()
        assert rope.periods.dtype == DTYPE
    return len(ropes)


def rms_norm_in_input_dtype(self, x):
    """Statistics in float32 for float32 and lower precisions (as the official module), in float64 for
    float64 inputs."""
    return self._norm(x.to(torch.promote_types(x.dtype, torch.float32))).type_as(x) * self.scale


def sincos_position_embedding(w, h, embed_dim=256, temperature=10000.0):
    """The official 2-D sin-cos embedding ``[1, w*h, embed_dim]`` (w-major rows: sin / cos of x, then of
    y), in :data:`DTYPE`."""
    xs, ys = torch.meshgrid(torch.arange(int(w), dtype=DTYPE), torch.arange(int(h), dtype=DTYPE), indexing="ij")
    quarter = embed_dim // 4
    inv_freq = 1.0 / temperature ** (torch.arange(quarter, dtype=DTYPE) / quarter)
    angle_x = xs.reshape(-1, 1) * inv_freq[None]
    angle_y = ys.reshape(-1, 1) * inv_freq[None]
    return torch.cat([angle_x.sin(), angle_x.cos(), angle_y.sin(), angle_y.cos()], dim=1)[None]


def sine_hw_position_embedding(self, tensor_list):
    """DINO's ``PositionEmbeddingSineHW.forward`` (attributes ``num_pos_feats``, ``temperatureH``,
    ``temperatureW``, ``normalize``, ``scale``) in :data:`DTYPE`: ``[B, 2 * num_pos_feats, H, W]``, the y
    features first, sines and cosines interleaved, from ``tensor_list.mask`` (True on the padding)."""
    valid = ~tensor_list.mask
    y_pos = valid.cumsum(1, dtype=DTYPE)
    x_pos = valid.cumsum(2, dtype=DTYPE)
    if self.normalize:
        y_pos = y_pos / (y_pos[:, -1:, :] + 1e-6) * self.scale
        x_pos = x_pos / (x_pos[:, :, -1:] + 1e-6) * self.scale

    def encode(positions, temperature):
        index = torch.arange(self.num_pos_feats, dtype=DTYPE, device=positions.device)
        angles = positions[..., None] / temperature ** (2 * (index // 2) / self.num_pos_feats)
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    features = torch.cat((encode(y_pos, self.temperatureH), encode(x_pos, self.temperatureW)), dim=3)
    return features.permute(0, 3, 1, 2)


def sine_position_embedding(self, tensor_list):
    """Deformable-DETR's ``PositionEmbeddingSine.forward`` (attributes ``num_pos_feats``, ``temperature``,
    ``normalize``, ``scale``; DN-DETR's ``models/dn_dab_deformable_detr``) in :data:`DTYPE`: as
    :func:`sine_hw_position_embedding` with one temperature and the positions shifted by -0.5 (pixel
    centres) before they are normalised by the last, unshifted, count."""
    valid = ~tensor_list.mask
    y_pos = valid.cumsum(1, dtype=DTYPE)
    x_pos = valid.cumsum(2, dtype=DTYPE)
    if self.normalize:
        y_pos = (y_pos - 0.5) / (y_pos[:, -1:, :] + 1e-6) * self.scale
        x_pos = (x_pos - 0.5) / (x_pos[:, :, -1:] + 1e-6) * self.scale
    index = torch.arange(self.num_pos_feats, dtype=DTYPE, device=y_pos.device)
    frequencies = self.temperature ** (2 * (index // 2) / self.num_pos_feats)

    def encode(positions):
        angles = positions[..., None] / frequencies
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((encode(y_pos), encode(x_pos)), dim=3).permute(0, 3, 1, 2)


def valid_ratio_in_float64(self, mask):
    """DINO's ``DeformableTransformer.get_valid_ratio`` in :data:`DTYPE`: ``[B, 2]`` (x, y), the valid
    columns of the first row over the width and the valid rows of the first column over the height."""
    _, height, width = mask.shape
    rows = (~mask[:, :, 0]).sum(1).to(DTYPE)
    cols = (~mask[:, 0, :]).sum(1).to(DTYPE)
    return torch.stack([cols / width, rows / height], -1)


def _dino_masks() -> list:
    """Padding masks of assorted shapes and valid sizes (one image unpadded) for the DINO checks."""
    masks = []
    for (h, w), valid in (((8, 10), [(8, 10), (4, 7)]), ((5, 3), [(1, 1), (5, 2)]), ((1, 2), [(1, 1), (1, 2)])):
        mask = torch.ones(len(valid), h, w, dtype=torch.bool)
        for i, (vh, vw) in enumerate(valid):
            mask[i, :vh, :vw] = False
        masks.append(mask)
    return masks


def check_sine_hw(cls) -> None:
    """:func:`sine_hw_position_embedding` is the official float32 encoding (DINO's settings: 128
    features per axis, temperatures 20, normalized) to float32 rounding."""
    from types import SimpleNamespace

    module = cls(128, temperatureH=20, temperatureW=20, normalize=True)
    for mask in _dino_masks():
        tensors = torch.zeros(mask.shape[0], 1, *mask.shape[1:])
        a = module(SimpleNamespace(tensors=tensors, mask=mask))
        b = sine_hw_position_embedding(module, SimpleNamespace(tensors=tensors, mask=mask))
        assert a.dtype == torch.float32 and b.dtype == DTYPE and a.shape == b.shape
        assert (a.double() - b).abs().max().item() < 1e-5, list(mask.shape)


def check_sine(cls) -> None:
    """:func:`sine_position_embedding` is the official float32 encoding (Deformable-DETR's settings: 128
    features per axis, temperature 10000, normalized) to float32 rounding on the image. On the padding
    of a column or row without any valid pixel the position is ``-0.5 / 1e-6 * 2 pi``, whose sines no
    float32 computation resolves (both sides are finite there; the padding's encoding reaches only
    padded tokens, which every attention masks)."""
    from types import SimpleNamespace

    module = cls(128, normalize=True)
    for mask in _dino_masks():
        tensors = torch.zeros(mask.shape[0], 1, *mask.shape[1:])
        a = module(SimpleNamespace(tensors=tensors, mask=mask))
        b = sine_position_embedding(module, SimpleNamespace(tensors=tensors, mask=mask))
        assert a.dtype == torch.float32 and b.dtype == DTYPE and a.shape == b.shape
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        on_image = (~mask)[:, None].expand_as(b)
        assert (a.double() - b)[on_image].abs().max().item() < 1e-5, list(mask.shape)


def check_valid_ratio(official) -> None:
    """:func:`valid_ratio_in_float64`, rounded to float32, is the official float32 ``get_valid_ratio``."""
    for mask in _dino_masks():
        a, b = official(None, mask), valid_ratio_in_float64(None, mask)
        assert a.dtype == torch.float32 and b.dtype == DTYPE and torch.equal(a, b.float())


def translate_gt_in_input_dtype(weighting_function):
    """A stand-in for the official ``dfine_utils.translate_gt`` of the module whose ``weighting_function``
    is given: for each target distance, the index of the last W(n) value at or below it (clamped to
    [0, reg_max - 0.1]) and the weights of the bins left and right of it, all in ``gt``'s dtype."""

    def translate_gt(gt, reg_max, reg_scale, up):
        gt = gt.reshape(-1)
        values = weighting_function(reg_max, up, reg_scale).to(gt.dtype)
        left = (values[None, :] <= gt[:, None]).sum(1) - 1
        inside = (left >= 0) & (left < reg_max)
        index = left.clamp(0, reg_max - 1)
        to_left = (gt - values[index]).abs()
        to_right = (values[index + 1] - gt).abs()
        weight_right = torch.where(inside, to_left / (to_left + to_right), (left >= reg_max).to(gt.dtype))
        indices = torch.where(left >= reg_max, torch.full_like(gt, reg_max - 0.1), left.clamp(min=0).to(gt.dtype))
        return indices, weight_right, 1.0 - weight_right

    return translate_gt


def dfl_with_weight_in_input_dtype(official):
    """The official ``unimodal_distribution_focal_loss`` with its ``weight`` kept in float64 (float32 for
    lower precisions, as officially); the unweighted per-edge loss is the official one."""

    def dfl(self, pred, label, weight_right, weight_left, weight=None, reduction="sum", avg_factor=None):
        loss = official(self, pred, label, weight_right, weight_left, reduction="none")
        if weight is not None:
            loss = loss * weight.to(torch.promote_types(weight.dtype, torch.float32))
        if avg_factor is not None:
            return loss.sum() / avg_factor
        return {"mean": loss.mean, "sum": loss.sum}.get(reduction, lambda: loss)()

    return dfl


def check_sincos(official) -> None:
    """:func:`sincos_position_embedding` is the official float32 embedding to float32 rounding."""
    for w, h, dim in ((20, 20, 256), (7, 5, 128), (40, 30, 256)):
        a, b = official(w, h, dim, 10000.0), sincos_position_embedding(w, h, dim, 10000.0)
        assert a.dtype == torch.float32 and b.dtype == DTYPE and a.shape == b.shape
        assert (a.double() - b).abs().max().item() < 1e-5, (w, h, dim)


def check_translate_gt(official, replacement, weighting_function) -> None:
    """``replacement`` gives the official float32 values bit for bit on values across and beyond the bins."""
    up, reg_scale = torch.tensor([0.5]), torch.tensor([4.0])
    bins = weighting_function(32, up, reg_scale)
    probe = torch.cat([torch.linspace(-20, 20, 4001), bins, bins + 1e-3, bins - 1e-3])
    for a, b in zip(official(probe, 32, reg_scale, up), replacement(probe, 32, reg_scale, up)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def check_dfl(official, replacement) -> None:
    """``replacement`` gives the official float32 values bit for bit for every reduction, with and
    without a weight."""
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(64, 33, generator=generator)
    label = torch.rand(64, generator=generator) * 31.9
    right = torch.rand(64, generator=generator)
    weight = torch.rand(64, generator=generator)
    for kwargs in ({}, {"reduction": "mean"}, {"reduction": "none"}, {"avg_factor": 5.0}):
        for w in (None, weight):
            a = official(None, pred, label, right, 1 - right, w, **kwargs)
            b = replacement(None, pred, label, right, 1 - right, w, **kwargs)
            assert a.dtype == b.dtype and torch.equal(a, b), kwargs


def _attr(package: str, dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(f"{package}.{module}"), name)


def install(package: str, *names: str) -> list:
    """Installs the named class- and module-level patches in the official ``package`` (a key of
    :data:`PACKAGES`; all of its patches when none is named), after checking each replacement
    against the official function in float32; returns their provenance texts (:func:`describe`)."""
    names = names or PACKAGES[package]["patches"]
    unknown = set(names) - set(PACKAGES[package]["patches"])
    assert not unknown, f"no such patch for {package}: {sorted(unknown)}"
    if "rmsnorm" in names:
        _attr(package, "deim_utils.RMSNorm").forward = rms_norm_in_input_dtype
    if "sincos" in names:
        encoder = _attr(package, "hybrid_encoder.HybridEncoder")
        check_sincos(encoder.build_2d_sincos_position_embedding)
        encoder.build_2d_sincos_position_embedding = staticmethod(sincos_position_embedding)
    if "dfl_weight" in names:
        criterion = _attr(package, PACKAGES[package]["criterion"])
        official = criterion.unimodal_distribution_focal_loss
        replacement = dfl_with_weight_in_input_dtype(official)
        check_dfl(official, replacement)
        criterion.unimodal_distribution_focal_loss = replacement
    if "translate_gt" in names:
        utils = importlib.import_module(f"{package}.dfine_utils")
        replacement = translate_gt_in_input_dtype(utils.weighting_function)
        check_translate_gt(utils.translate_gt, replacement, utils.weighting_function)
        utils.translate_gt = replacement
    if "sine_hw" in names:
        encoding = _attr(package, "position_encoding.PositionEmbeddingSineHW")
        check_sine_hw(encoding)
        encoding.forward = sine_hw_position_embedding
    if "sine" in names:
        encoding = _attr(package, "position_encoding.PositionEmbeddingSine")
        check_sine(encoding)
        encoding.forward = sine_position_embedding
    if "valid_ratio" in names:
        transformer = _attr(package, "deformable_transformer.DeformableTransformer")
        check_valid_ratio(transformer.get_valid_ratio)
        transformer.get_valid_ratio = valid_ratio_in_float64
    return [describe(package, k) for k in names]
