"""What the golden scripts of the official DETR-lineage repositories share (``make_dino_golden.py``,
``make_dn_dab_detr_golden.py``, ``make_dab_deformable_detr_golden.py``, ``make_deformable_detr_golden.py``):
the run-time stand-ins that let their code run on a CPU-only torch, the padded synthetic batch, and the
parameter counts and key layout of a built model.

Each stand-in is a non-numeric change (where a tensor lives, which weights a constructor downloads, a
missing optional import, the compiled deformable-attention op replaced by the repository's own
pure-PyTorch reference); each script's docstring lists the ones it uses. The functions that read the
official code (``util.misc``, ``util.box_ops``, the ``ops`` modules) import it when called, after the
script has put the official repository on ``sys.path``.
"""
import sys
import types

import torch

from golden.dino_inputs import synth_batch

# The synthetic batch and weights of every DETR-lineage golden: the official COCO class count (category ids),
# two images of different sizes (the second padded in the batch) with 3 and 5 boxes, the weights' seed.
NUM_CLASSES = 91
IMAGE_SIZES = ((256, 320), (224, 288))  # (height, width)
IMAGE_SEEDS = (0, 1)
NUM_TARGETS = (3, 5)
TARGET_SEED = 2
WEIGHT_SEED = 0
# torchvision's ImageNet statistics, the official Normalize of every DETR-lineage repository.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def keep_tensors_on_cpu():
    """``Tensor.cuda()`` returns the tensor itself and ``.to('cuda')`` (string or device) goes to the CPU."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" or (isinstance(a, torch.device) and a.type == "cuda") else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu


def resnets_without_pretrained(names=("resnet50", "resnet101")):
    """torchvision's ``names`` build with ``weights=None`` whatever ``pretrained=`` the official code passes
    (no download; the goldens load synthetic weights)."""
    import torchvision

    for name in names:
        build = getattr(torchvision.models, name)

        def without_pretrained(*args, _build=build, pretrained=False, weights=None, **kwargs):
            return _build(*args, weights=None, **kwargs)

        setattr(torchvision.models, name, without_pretrained)


def stub_missing_modules(timm: bool = True):
    """An empty ``MultiScaleDeformableAttention`` (the compiled op, imported by the ``ops`` packages) and,
    with ``timm``, a minimal ``timm.models.layers`` where timm is missing (only the Swin and ConvNeXt
    files import it)."""
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    if not timm:
        return
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        package = types.ModuleType("timm")
        models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = torch.nn.Identity
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (list, tuple)) else (x, x)
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        package.models, models.layers = models, layers
        sys.modules.update({"timm": package, "timm.models": models, "timm.models.layers": layers})


def pure_pytorch_deformable_attention(ops_package: str):
    """``MSDeformAttnFunction`` of ``{ops_package}.modules.ms_deform_attn`` replaced by the official
    pure-PyTorch ``ms_deform_attn_core_pytorch`` of ``{ops_package}.functions.ms_deform_attn_func``
    (which ignores ``level_start_index`` and ``im2col_step``)."""
    import importlib

    functions = importlib.import_module(f"{ops_package}.functions.ms_deform_attn_func")
    modules = importlib.import_module(f"{ops_package}.modules.ms_deform_attn")

    class PurePyTorch:
        @staticmethod
        def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
            return functions.ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations, attention_weights)

    modules.MSDeformAttnFunction = PurePyTorch


def alias_groups(model: torch.nn.Module) -> dict:
    """State-dict key -> the first key naming the same tensor (only for the keys that alias another)."""
    first, aliases = {}, {}
    for key, value in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(value.data_ptr(), key)
        if owner != key:
            aliases[key] = owner
    return aliases


def model_counts(model: torch.nn.Module) -> dict:
    """Parameters (shared tensors once), trainable parameters, every state-dict key with its shape, and
    the alias keys (:func:`alias_groups`)."""
    return {"num_parameters": sum(p.numel() for p in model.parameters()),
            "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()}, "aliases": alias_groups(model)}


def official_batch(image_sizes=IMAGE_SIZES, image_seeds=IMAGE_SEEDS, num_targets=NUM_TARGETS,
                   num_classes: int = NUM_CLASSES, target_seed: int = TARGET_SEED):
    """The official inputs: a padded ``NestedTensor`` of the normalised float64 images of
    ``dino_inputs.synth_batch``, and their targets (labels, cxcywh boxes normalised by each image's
    size)."""
    from util.misc import nested_tensor_from_tensor_list

    mean, std = torch.tensor(PIXEL_MEAN)[:, None, None], torch.tensor(PIXEL_STD)[:, None, None]
    images, targets = synth_batch(image_sizes, image_seeds, num_targets, num_classes, target_seed)
    images = [torch.from_numpy(image).permute(2, 0, 1).double() for image in images]
    return nested_tensor_from_tensor_list([(image / 255 - mean) / std for image in images]), targets


def topk_detections(outputs, target_sizes, k):
    """The official ``PostProcess`` of Deformable-DETR and DN-DETR with ``k`` instead of its fixed 100:
    top-k sigmoid scores over the flattened (query, class) pairs, boxes cxcywh -> xyxy scaled by each
    image's ``(h, w)``."""
    from util import box_ops

    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
    query, labels = index // logits.shape[2], index % logits.shape[2]
    boxes = box_ops.box_cxcywh_to_xyxy(boxes).gather(1, query.unsqueeze(-1).repeat(1, 1, 4))
    h, w = target_sizes.unbind(1)
    return scores, labels, boxes * torch.stack([w, h, w, h], 1)[:, None, :]


def load_synthetic(model: torch.nn.Module, counts: dict, seed: int = WEIGHT_SEED, weights=None) -> int:
    """Loads (strictly) the synthetic weights of ``counts``' keys into ``model``: ``weights(state_dict,
    aliases, seed)``, by default ``dino_inputs.official_weights`` (every alias key its owner's values);
    returns the CRC-32 fingerprint of the owners' tensors."""
    from golden.dino_inputs import official_weights
    from golden.synth import fingerprint

    drawn = (weights or official_weights)(counts["state_dict"], counts["aliases"], seed)
    model.load_state_dict(drawn, strict=True)
    return fingerprint({k: v for k, v in drawn.items() if k not in counts["aliases"]})


def clean_commit(root) -> str:
    """The commit of the official clone ``root``; exits if the clone has local changes (a golden must
    come from a clean commit)."""
    import subprocess

    if subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True).stdout:
        sys.exit(f"{root} has local changes; the golden must come from a clean commit")
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
