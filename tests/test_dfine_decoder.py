"""The D-FINE decoder and the GO-LSD criterion on small inputs: outputs, switches and deploy form.

Numerical parity with the official model is in tests/test_parity_dfine.py; these tests pin the
structure that the ablations and the trainer rely on.
"""
import pytest
import torch

from dfine.modeling.criterion import HungarianMatcher, RTDETRCriterion
from dfine.modeling.decoder import LQE, DFINEDecoder

WEIGHTS = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5}


def _decoder(**kwargs):
    torch.manual_seed(0)
    args = dict(num_classes=5, hidden_dim=32, num_queries=12, feat_channels=[32, 32], feat_strides=[16, 32],
                num_levels=2, num_points=[3, 2], nhead=4, num_layers=3, dim_feedforward=64, num_denoising=6)
    args.update(kwargs)
    return DFINEDecoder(**args)


def _feats():
    torch.manual_seed(1)
    return [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]


def _targets():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def _criterion(go_lsd=True, losses=("vfl", "boxes", "local")):
    matcher = HungarianMatcher(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0)
    return RTDETRCriterion(matcher, WEIGHTS, losses, num_classes=5, go_lsd=go_lsd)


def test_training_outputs_carry_distributions_and_teachers():
    decoder = _decoder().train()
    out = decoder(_feats(), _targets())
    corners = 4 * (decoder.reg_max + 1)
    assert out["pred_corners"].shape == (2, 12, corners) and out["ref_points"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 2 and len(out["dn_aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        # Every layer refines the same first-layer box; the teacher is the last layer.
        assert aux["ref_points"] is out["ref_points"]
        assert torch.equal(aux["teacher_corners"], out["pred_corners"])
        assert torch.equal(aux["teacher_logits"], out["pred_logits"])
    assert torch.equal(out["ref_points"], out["pre_outputs"]["pred_boxes"].detach())
    assert out["dn_pre_outputs"]["pred_boxes"].shape[1] == out["dn_aux_outputs"][0]["pred_boxes"].shape[1]
    assert float(out["up"]) == 0.5 and float(out["reg_scale"]) == 4.0
    # The frozen W(n) parameters are in the state dict twice, as in the official model.
    state = decoder.state_dict()
    assert {"up", "reg_scale", "decoder.up", "decoder.reg_scale"} <= set(state)
    assert not decoder.up.requires_grad


def test_at_initialisation_every_layer_returns_the_first_layer_box():
    # Zero-initialised corner heads give W-expectations of 0 (symmetric W), i.e. the reference box.
    decoder = _decoder(num_denoising=0).train()
    out = decoder(_feats())
    for aux in out["aux_outputs"]:
        torch.testing.assert_close(aux["pred_boxes"], out["ref_points"], atol=1e-6, rtol=0)


def test_go_lsd_criterion_keys_and_ablation_switches():
    targets = _targets()
    decoder = _decoder().train()
    losses = _criterion()(decoder(_feats(), targets), targets)
    assert {"loss_fgl", "loss_fgl_aux_0", "loss_ddf_aux_0", "loss_ddf_dn_0", "loss_bbox_pre", "loss_vfl_dn_pre",
            "loss_giou_enc_0"} <= set(losses)
    assert "loss_ddf" not in losses and "loss_fgl_pre" not in losses  # no teacher / no corners there
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert decoder.dec_bbox_head[0].layers[0].weight.grad is not None

    # GO-LSD off: own matches, FGL without distillation.
    off = _criterion(go_lsd=False)(decoder(_feats(), targets), targets)
    assert not any("ddf" in k for k in off) and "loss_fgl_aux_1" in off

    # FDR off: box deltas, no corners, so the "local" term supervises nothing.
    no_fdr = _decoder(fdr=False).train()
    out = no_fdr(_feats(), targets)
    assert "pred_corners" not in out and "pre_outputs" not in out and not hasattr(no_fdr, "up")
    plain = _criterion(go_lsd=False)(out, targets)
    assert not any("fgl" in k or "ddf" in k for k in plain) and "loss_bbox_dn_2" in plain
    # Still D-FINE's layer: gating and no cross-attention projections.
    assert hasattr(no_fdr.decoder.layers[0], "gateway")
    assert isinstance(no_fdr.decoder.layers[0].cross_attn.value_proj, torch.nn.Identity)


def test_union_set_supervises_boxes_of_every_layer_with_the_same_pairs():
    # With GO-LSD the box losses of every matching output use the union set: feeding every layer
    # the same boxes gives the same box losses whatever their logits.
    targets = _targets()
    decoder = _decoder(num_denoising=0).train()
    out = decoder(_feats(), targets)
    for aux in out["aux_outputs"] + [out["pre_outputs"]]:
        aux["pred_boxes"] = out["pred_boxes"]
    losses = _criterion(losses=("vfl", "boxes"))(out, targets)
    for suffix in ("_aux_0", "_aux_1", "_pre"):
        assert losses["loss_bbox" + suffix] == losses["loss_bbox"]
        assert losses["loss_giou" + suffix] == losses["loss_giou"]


def test_lqe_starts_as_identity_and_reads_sharpness():
    lqe = LQE(reg_max=8)
    logits, corners = torch.randn(2, 3, 5), torch.randn(2, 3, 36)
    assert torch.equal(lqe(logits, corners), logits)
    torch.nn.init.constant_(lqe.reg_conf.layers[-1].weight, 1.0)
    sharp = torch.zeros(1, 1, 36)
    sharp[..., ::9] = 50.0  # one dominant bin per edge
    assert lqe(torch.zeros(1, 1, 1), sharp) > lqe(torch.zeros(1, 1, 1), torch.zeros(1, 1, 36))


@pytest.mark.parametrize("eval_idx", [-1, 1])
def test_deploy_keeps_predictions_and_drops_unused_layers(eval_idx):
    decoder = _decoder(eval_idx=eval_idx).eval()
    with torch.no_grad():
        for p in decoder.parameters():  # non-trivial heads, so that dropping a used one would show
            p.add_(0.01 * torch.randn_like(p))
        before = decoder(_feats())
        count = sum(p.numel() for p in decoder.parameters())
        decoder.convert_to_deploy()
        after = decoder(_feats())
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(after["pred_boxes"], before["pred_boxes"], rtol=0, atol=0)
    kept = eval_idx % 3 + 1
    assert len(decoder.decoder.layers) == kept
    assert sum(p.numel() for p in decoder.parameters()) < count
