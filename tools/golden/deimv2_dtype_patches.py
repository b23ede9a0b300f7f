"""Run-time patches that let the official DEIMv2 code compute in the dtype it is run in.

A few official steps compute in float32 whatever the model's dtype. In a float64 golden they would be
float32 roundings, and their float32 sin / cos / exp / reductions differ by an ulp between CPU kernel
ISAs (AVX-512, AVX2, scalar), so a golden written on one machine would not match a test run on
another. Each patch keeps the official formula and changes only the dtype; :data:`PATCHES` describes
them for the golden files' provenance. Our own modules follow the model's dtype in the same places
(float32 as the official code for float32 and lower precisions, float64 for a float64 model).

Usage, inside a golden script, after the official ``engine`` package is importable:
:func:`install` before building the models (class- and module-level patches, all or the named
ones), :func:`rope_follow_dtype` on each model after it has been cast to float64.
"""
import torch

PATCHES = {
    "rope": "tools/golden/deimv2_dtype_patches.py:rope_follow_dtype: after the cast to float64, every "
            "official RopePositionEmbedding (dinov3 layers and vit_tiny) gets dtype=float64 and re-runs its "
            "own _init_weights, so its periods, coordinates and rescale draw are float64 (officially float32: "
            "DINOv3's pos_embed_rope_dtype 'fp32', ViT-Tiny's default dtype)",
    "rmsnorm": "engine.deim.deim_utils.RMSNorm.forward replaced by "
               "tools/golden/deimv2_dtype_patches.py:rms_norm_in_input_dtype: its own _norm on x in float64 "
               "for float64 inputs (officially on x.float(), always float32; lower precisions unchanged)",
    "sincos": "engine.deim.hybrid_encoder.HybridEncoder.build_2d_sincos_position_embedding replaced by "
              "tools/golden/deimv2_dtype_patches.py:sincos_position_embedding: the same embedding computed in "
              "float64 (officially float32)",
    "dfl_weight": "engine.deim.deim_criterion.DEIMCriterion.unimodal_distribution_focal_loss wrapped by "
                  "tools/golden/deimv2_dtype_patches.py:dfl_with_weight_in_input_dtype: the official unweighted "
                  "per-edge loss (reduction='none'), then the IoU weights and the reduction in the weights' dtype "
                  "(officially weight.float(), which rounds float64 IoUs to float32)",
    "translate_gt": "engine.deim.dfine_utils.translate_gt replaced by "
                    "tools/golden/deimv2_dtype_patches.py:translate_gt_in_input_dtype: the same bins and weights, "
                    "its indices and weights in gt's dtype instead of the official .float() (which fails in "
                    "float64)",
}
DTYPE = torch.float64


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


def translate_gt_in_input_dtype(gt, reg_max, reg_scale, up):
    """Stands in for the official ``dfine_utils.translate_gt``: for each target distance, the index
    of the last W(n) value at or below it (clamped to [0, reg_max - 0.1]) and the weights of the
    bins left and right of it, all in ``gt``'s dtype."""
    from engine.deim.dfine_utils import weighting_function

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


def install(*names: str) -> list:
    """Installs the named class- and module-level patches (all of them when none is named: ``rmsnorm``,
    ``sincos``, ``dfl_weight``, ``translate_gt``); returns their :data:`PATCHES` entries."""
    import engine.deim.dfine_utils as dfine_utils
    from engine.deim.deim_criterion import DEIMCriterion
    from engine.deim.deim_utils import RMSNorm
    from engine.deim.hybrid_encoder import HybridEncoder

    names = names or ("rmsnorm", "sincos", "dfl_weight", "translate_gt")
    if "rmsnorm" in names:
        RMSNorm.forward = rms_norm_in_input_dtype
    if "sincos" in names:
        HybridEncoder.build_2d_sincos_position_embedding = staticmethod(sincos_position_embedding)
    if "dfl_weight" in names:
        DEIMCriterion.unimodal_distribution_focal_loss = dfl_with_weight_in_input_dtype(
            DEIMCriterion.unimodal_distribution_focal_loss)
    if "translate_gt" in names:
        dfine_utils.translate_gt = translate_gt_in_input_dtype
    return [PATCHES[k] for k in names]
