"""D-FINE's FDR + GO-LSD and DEIM's Dense O2O + MAL as plug-ins on the DETR-lineage models
(configs/ablations/, configs/common/dfine.py, configs/common/deim.py): what each ablation config adds
to its base, that switching the plug-in off gives the base back exactly, the GO-LSD distillation
against a value computed by hand, and FDR's decoding from edges to distributions and back. Training
end to end: tests/test_train_net.py."""
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from dfine.config import load_config
from dfine.modeling.criterion.losses import fgl_and_ddf_losses
from dfine.modeling.decoder.fdr import bbox2distance, distance2bbox, integral, weighting_function
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from test_dab_deformable_detr import SMALL as SMALL_DAB_DEFORMABLE

ROOT = Path(__file__).resolve().parents[1]

# What configs/common/dfine.py::use_fdr_golsd adds to a decoder of width 256 with 6 layers whose box
# head is shared by all layers (DINO, DN-DETR, DAB-DETR), reg_max 32:
#   the shared head's last layer widens from 4 to 4 * 33 outputs:  257 * (132 - 4)           =  32,896
#   pre_bbox_head, MLP(256, 256, 4, 3):  2 * 257 * 256 + 257 * 4                          = 132,612
#   one LQE per layer, MLP(4 * (4 + 1), 64, 1, 2):  6 * (21 * 64 + 65 * 1)                 =   8,454
#   W(n)'s frozen up and reg_scale:                                                          =       2
SHARED_HEAD_FDR_PARAMETERS = 32_896 + 132_612 + 8_454 + 2
assert SHARED_HEAD_FDR_PARAMETERS == 173_964
# The same with one box head per layer (Deformable-DETR): six heads widen.
PER_LAYER_HEAD_FDR_PARAMETERS = 6 * 32_896 + 132_612 + 8_454 + 2
assert PER_LAYER_HEAD_FDR_PARAMETERS == 338_444

FDR_ABLATIONS = {
    # ablation config: (base config, parameters the plug-in adds)
    "ablations/dino_r50_fdr_golsd.py": ("dino_r50_4scale_12ep.py", SHARED_HEAD_FDR_PARAMETERS),
    "ablations/dn_detr_r50_fdr_golsd.py": ("dn_dab_detr_r50_50ep.py", SHARED_HEAD_FDR_PARAMETERS),
    "ablations/dab_detr_r50_fdr_golsd.py": ("dab_detr_r50_50ep.py", SHARED_HEAD_FDR_PARAMETERS),
    "ablations/deformable_detr_r50_fdr_golsd.py": ("deformable_detr_r50_50ep.py", PER_LAYER_HEAD_FDR_PARAMETERS),
}
DEIM_ABLATIONS = {"ablations/dino_r50_deim.py": "dino_r50_4scale_12ep.py",
                  "ablations/deformable_detr_r50_deim.py": "deformable_detr_r50_50ep.py"}
ABLATIONS = {**{name: base for name, (base, _) in FDR_ABLATIONS.items()}, **DEIM_ABLATIONS}
# The ablations whose base trains with denoising queries.
DENOISING = {"ablations/dino_r50_fdr_golsd.py", "ablations/dn_detr_r50_fdr_golsd.py", "ablations/dino_r50_deim.py"}

# Narrow models of the bases' families (ResNet-18, width 64, 2 decoder layers, 6 classes).
SMALL = {
    "dino": ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
             "model.encoder.num_layers=1", "model.encoder.dim_feedforward=64", "model.decoder.hidden_dim=64",
             "model.decoder.num_layers=2", "model.decoder.num_queries=20", "model.decoder.num_classes=6",
             "model.decoder.input_proj.in_channels=[64,64,64,64]", "model.decoder.layer.dim_feedforward=64",
             "model.decoder.denoising.num_denoising=10", "model.num_top_queries=20"],
    "deformable": ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
                   "model.encoder.num_layers=1", "model.encoder.dim_feedforward=64", "model.decoder.hidden_dim=64",
                   "model.decoder.num_layers=2", "model.decoder.num_queries=20", "model.decoder.num_classes=6",
                   "model.decoder.input_proj.in_channels=[64,64,64,64]", "model.decoder.layer.dim_feedforward=64",
                   "model.num_top_queries=20"],
    "dab": ["model.backbone.depth=18", "model.encoder.in_channels=[512]", "model.encoder.hidden_dim=64",
            "model.encoder.num_layers=1", "model.decoder.hidden_dim=64", "model.decoder.num_layers=2",
            "model.decoder.num_queries=20", "model.decoder.input_proj.in_channels=[64]", "model.decoder.num_classes=6"],
}

# The DETR augmentation at the 64x64 images of tests/conftest.py::tiny_coco.
TINY_DETR_DATA = [
    "dataloader.train.mapper.image_size=null", "dataloader.test.mapper.image_size=null",
    "dataloader.train.mapper.augmentations.scales=[48,64]", "dataloader.train.mapper.augmentations.max_size=96",
    "dataloader.train.mapper.augmentations.crop_resize_scales=[48,64]",
    "dataloader.train.mapper.augmentations.crop_size=[32,48]",
    "dataloader.test.mapper.augmentations.size=64", "dataloader.test.mapper.augmentations.max_size=96",
]


def small_model(config):
    """The narrow model overrides of ``config``'s family."""
    return SMALL[next((family for family in ("dino", "deformable") if family in config), "dab")]


def _count(config, overrides=()):
    with torch.device("meta"):
        model = instantiate(load_config(str(ROOT / "configs" / config), list(overrides)).model)
    return {name: p.numel() for name, p in model.named_parameters()}


def _batch():
    """Two images of different sizes (a padded batch) with 2 and 3 boxes."""
    batch = []
    for (h, w), n in zip([(64, 80), (72, 64)], (2, 3)):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [10.0, 10.0, 50.0, 60.0],
                                                 [20.0, 5.0, 40.0, 30.0]][:n]))
        instances.gt_classes = torch.arange(n, dtype=torch.int64)
        g = torch.Generator().manual_seed(h)
        batch.append({"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g),
                      "instances": instances, "height": h, "width": w})
    return batch


@pytest.mark.parametrize("config", sorted(ABLATIONS))
def test_ablation_config_imports_its_base_and_only_switches_parts(config):
    text = (ROOT / "configs" / config).read_text()
    assert f"from ..{ABLATIONS[config][:-3]} import" in text and len(text.splitlines()) <= 16
    load_config(str(ROOT / "configs" / config))


@pytest.mark.parametrize("config", sorted(FDR_ABLATIONS))
def test_fdr_ablation_adds_only_the_distribution_head(config):
    """The full-size ablation model has its base's parameters, the box head's last layer widened to
    4 * 33 outputs, plus D-FINE's pre_bbox_head, LQE layers and W(n)'s two frozen values: the stated
    count (README, "FDR + GO-LSD and DEIM on the DETR lineage")."""
    base_config, added = FDR_ABLATIONS[config]
    base, ablation = _count(base_config), _count(config)
    assert sum(ablation.values()) - sum(base.values()) == added
    new = {name.split(".")[2] for name in set(ablation) - set(base)}
    assert new == {"pre_bbox_head", "lqe_layers", "up", "reg_scale"}
    changed = {name for name in base if ablation[name] != base[name]}
    # The last layer of the box head, shared by the layers (one) or one per layer.
    assert changed and all(re.fullmatch(r"decoder\.box_head\.dec_bbox_head\.\d+\.layers\.2\.(weight|bias)", name)
                           for name in changed)


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(FDR_ABLATIONS))
def test_fdr_plug_in_switched_off_is_the_base_model_exactly(config):
    """``reg_max=null go_lsd=False`` on the ablation config: the base's parameters (same seed, same
    values) and the base's training losses, key for key and bit for bit, on a padded batch (the
    denoising noise drawn under the same seed)."""
    small = small_model(config)
    off = ["model.decoder.box_head.reg_max=null", "model.criterion.go_lsd=False"]
    models, losses = [], []
    for name, overrides in ((FDR_ABLATIONS[config][0], small), (config, small + off)):
        torch.manual_seed(0)
        model = instantiate(load_config(str(ROOT / "configs" / name), overrides).model).train()
        torch.manual_seed(1)
        losses.append({k: v.item() for k, v in model(_batch()).items()})
        models.append(model)
    base, ablation = (m.state_dict() for m in models)
    assert list(base) == list(ablation) and all(torch.equal(base[k], ablation[k]) for k in base)
    assert losses[0] == losses[1]


def test_fdr_golsd_plugs_into_dab_deformable_detr():
    """The same plug-in on DN-DAB-Deformable-DETR (per-layer heads, detached refinement, the first
    box's size bias, which goes to the initial box that the distributions refine)."""
    spec = importlib.util.spec_from_file_location("dfine_plugin", ROOT / "configs" / "common" / "dfine.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    cfg = load_config(str(ROOT / "configs" / "dn_dab_deformable_detr_r50_50ep.py"), SMALL_DAB_DEFORMABLE)
    plugin.use_fdr_golsd(cfg.model)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    assert model.decoder.box_head.pre_bbox_head.layers[-1].bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    losses = model(_batch())
    assert {"loss_fgl_aux_0", "loss_ddf_aux_0", "loss_fgl_dn_0", "loss_ddf_dn_0", "loss_bbox_pre"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_deim_ablation_switches_mal_and_dense_o2o():
    """No parameter added; MAL (gamma 1.5, weight 1) in place of the focal loss, which stays one override
    away; Mosaic and MixUp at 0.5 in epochs [1, 6); DINO's step LR unless
    ``lr_multiplier=${deim_lr_multiplier}``."""
    assert all(_count(config) == _count(base) for config, base in DEIM_ABLATIONS.items())
    config = str(ROOT / "configs" / "ablations" / "dino_r50_deim.py")
    cfg = load_config(config)
    assert cfg.model.criterion.losses == ["mal", "boxes"] and cfg.model.criterion.weight_dict.loss_mal == 1
    assert cfg.model.criterion.terms[-1].gamma == 1.5
    train = cfg.dataloader.train
    assert train.mapper.mosaic_prob == 0.5 and train.mixup_prob == 0.5 and train.mixup_epochs == [1, 6]
    assert train.mapper.policy_epoch == [1, 6, 12] and cfg.train.stage_switch.epoch is None
    assert cfg.lr_multiplier._target_.__name__ == "StepDecay"
    switched = load_config(config, ["lr_multiplier=${deim_lr_multiplier}", "model.criterion.losses=[focal,boxes]",
                                    "dataloader.train.mapper.mosaic_prob=0"])
    assert switched.lr_multiplier._target_.__name__ == "FlatCosine" and switched.lr_multiplier.flat_epochs == 6
    assert switched.dataloader.train.mixup_prob == 0
    torch.manual_seed(0)
    model = instantiate(load_config(config, SMALL["dino"]).model).train()
    losses = model(_batch())
    assert "loss_mal" in losses and "loss_mal_dn_0" in losses and not any("focal" in k for k in losses)


def test_go_lsd_distillation_hand_computed():
    """FGL and DDF of one output against its teacher, on 5 bins where every number is written by hand.

    reg_max 4, up 0.5, reg_scale 4: a = 2, step = (a + 1) ** (2 / (4 - 2)) = 3, W = [-4, -2, 0, 2, 4].
    One image, three queries; query 0 is matched. The student's logits are 0 (uniform, 1/5 per
    bin); the teacher's are T * log(p) (so softmax(teacher / T) = p) with, on every edge,
    p = [.5, .2, .1, .1, .1] for query 0 and p' = [.1, .1, .6, .1, .1] for queries 1 and 2:

        KL(p || u)  = .5 ln(.5/.2) + .2 ln(.2/.2) + 3 * .1 ln(.1/.2) = .5 ln 2.5 - .3 ln 2 = 0.2502012
        KL(p' || u) = .6 ln(.6/.2) + 4 * .1 ln(.1/.2)               = .6 ln 3 - .4 ln 2   = 0.3819085

    Edge weights: the matched query's IoU with its ground truth (box (0.1, 0.3, 0.4, 0.7) inside
    the ground truth (0.1, 0.3, 0.7, 0.7): 0.12 / 0.24 = 0.5), the unmatched queries' teacher
    confidence max(sigmoid(ln 3), sigmoid(-2)) = 0.75. Per edge, weight * T^2 * KL with T = 5:
    matched 0.5 * 25 * 0.2502012 = 3.127515, unmatched 0.75 * 25 * 0.3819085 = 7.160784.
    Decoupled: matched and unmatched means weighted by sqrt(edges * 8 / B): num_pos = sqrt(4 * 8),
    num_neg = sqrt(8 * 8) = 8:

        loss_ddf = (3.127515 * sqrt(32) + 7.160784 * 8) / (sqrt(32) + 8) = 5.490150

    FGL of the matched query: every edge's two-bin cross-entropy of uniform logits is ln 5 (the
    two weights sum to 1), times the IoU 0.5, over 4 edges, divided by num_boxes 1:
    loss_fgl = 4 * 0.5 * ln 5 = 3.218876.
    """
    temperature = 5.0
    p_matched = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    p_unmatched = torch.tensor([0.1, 0.1, 0.6, 0.1, 0.1], dtype=torch.float64)
    teacher = torch.stack([p_matched, p_unmatched, p_unmatched]).log().mul(temperature).repeat(1, 4)[None]
    student = torch.zeros_like(teacher, requires_grad=True)
    reference = torch.tensor([[[0.5, 0.5, 0.4, 0.4]] * 3], dtype=torch.float64)
    boxes = box_xyxy_to_cxcywh(torch.tensor([[[0.1, 0.3, 0.4, 0.7], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]]],
                                            dtype=torch.float64))
    target = box_xyxy_to_cxcywh(torch.tensor([[0.1, 0.3, 0.7, 0.7]], dtype=torch.float64))
    teacher_logits = torch.tensor([[[0.0, 0.0], [math.log(3), -2.0], [math.log(3), -2.0]]], dtype=torch.float64)
    losses = fgl_and_ddf_losses(student, boxes, reference, torch.tensor([0]), torch.tensor([0]), target,
                                num_boxes=1.0, reg_scale=4.0, up=0.5, teacher_corners=teacher,
                                teacher_logits=teacher_logits, temperature=temperature)

    assert weighting_function(4, 0.5, 4.0).tolist() == [-4.0, -2.0, 0.0, 2.0, 4.0]
    kl_matched = 0.5 * math.log(2.5) - 0.3 * math.log(2)
    kl_unmatched = 0.6 * math.log(3) - 0.4 * math.log(2)
    assert kl_matched == pytest.approx(0.2502012, abs=1e-7) and kl_unmatched == pytest.approx(0.3819085, abs=1e-7)
    matched, unmatched = 0.5 * 25 * kl_matched, 0.75 * 25 * kl_unmatched
    expected_ddf = (matched * math.sqrt(32) + unmatched * 8) / (math.sqrt(32) + 8)
    assert expected_ddf == pytest.approx(5.490150, abs=1e-6)
    # num_pos and num_neg are computed from counts in the default float32, as officially: 1e-7.
    assert losses["loss_ddf"].item() == pytest.approx(expected_ddf, rel=1e-7)
    assert losses["loss_fgl"].item() == pytest.approx(2 * math.log(5), rel=1e-12)


def test_fdr_round_trip_from_edges_to_distributions_and_back():
    """Edges -> distributions -> edges: the ground truth's edge offsets from a reference box
    (``bbox2distance``) as two-bin distributions (the interpolation weights on the neighbouring bins,
    as logits), decoded by the expectation over W(n) (``integral``) and ``distance2bbox``, give the
    ground truth back, for offsets anywhere inside [W(0), W(R)]. The same boxes scaled per axis (one
    image's frame inside a padded batch, DINO's and DAB-DETR's image-relative boxes) give the same
    distributions: FDR's offsets are in units of the reference box's width and height."""
    reg_max, up, reg_scale = 32, torch.tensor([0.5], dtype=torch.float64), 4.0  # W(n) in float64
    g = torch.Generator().manual_seed(0)
    reference = torch.cat([0.3 + 0.4 * torch.rand(64, 2, generator=g), 0.1 + 0.3 * torch.rand(64, 2, generator=g)],
                          -1).double()
    # Offsets strictly inside the outer bins [-2a, 2a] = [-4, 4], in units of w / reg_scale.
    offsets = (torch.rand(64, 4, generator=g).double() * 7.8 - 3.9)
    gt = distance2bbox(reference, offsets, reg_scale)
    project = weighting_function(reg_max, up, reg_scale)

    def distributions(points, boxes):
        target, weight_right, weight_left = bbox2distance(points, box_cxcywh_to_xyxy(boxes), reg_max, reg_scale, up)
        probs = torch.zeros(len(target), reg_max + 1, dtype=torch.float64)
        left = target.long()
        probs[torch.arange(len(target)), left] = weight_left
        probs[torch.arange(len(target)), left + 1] += weight_right
        return probs.log().reshape(len(points), 4 * (reg_max + 1))

    corners = distributions(reference, gt)
    decoded = distance2bbox(reference, integral(corners, project), reg_scale)
    torch.testing.assert_close(decoded, gt, rtol=0, atol=1e-12)
    torch.testing.assert_close(integral(corners, project), offsets, rtol=0, atol=1e-12)

    scale = torch.tensor([0.6, 0.8, 0.6, 0.8], dtype=torch.float64)  # cx, w by 0.6; cy, h by 0.8
    scaled = distributions(reference * scale, gt * scale)
    torch.testing.assert_close(scaled.exp(), corners.exp(), rtol=0, atol=1e-9)
