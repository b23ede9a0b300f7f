"""The D-FINE decoder and the GO-LSD criterion on small inputs: outputs, switches and deploy form.

Numerical parity with the official model is in tests/test_parity_dfine.py; these tests pin the
structure that the ablations and the trainer rely on.
"""
import pytest
import torch

from decoders import family_criterion, family_decoder
from dfine.modeling.decoder import LQE


def _decoder(overrides=None):
    """A small D-FINE decoder (configs/common/models/dfine.py)."""
    torch.manual_seed(0)
    args = {
        "num_classes": 5,
        "hidden_dim": 32,
        "num_queries": 12,
        "input_proj.in_channels": [32, 32],
        "input_proj.in_strides": [16, 32],
        "num_levels": 2,
        "layer.cross_attn.num_points": [3, 2],
        "layer.n_head": 4,
        "num_layers": 3,
        "layer.dim_feedforward": 64,
        "denoising.num_denoising": 6,
        "query_selection.eval_spatial_size": None,
    }
    return family_decoder("dfine", {**args, **(overrides or {})})


def _feats():
    torch.manual_seed(1)
    return [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]


def _targets():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def _criterion(go_lsd=True, losses=("vfl", "boxes", "local")):
    """D-FINE's criterion (VFL, L1 + GIoU, FGL + DDF; weights 1, 5, 2, 0.15, 1.5)."""
    return family_criterion("dfine", {"go_lsd": go_lsd, "losses": list(losses)}, num_classes=5)


def test_training_outputs_carry_distributions_and_teachers():
    decoder = _decoder().train()
    out = decoder(_feats(), _targets())
    corners = 4 * (decoder.box_head.reg_max + 1)
    final = out.final
    assert final.corners.shape == (2, 12, corners) and final.reference.shape == (2, 12, 4)
    assert len(out.matching.layers[:-1]) == 2 and len(out.denoising.branch.layers) == 3
    for aux in out.matching.layers[:-1]:
        # Every layer refines the same first-layer box; the GO-LSD teacher (the criterion's) is the last layer.
        assert aux.reference is final.reference
    assert torch.equal(final.reference, out.matching.pre.boxes.detach())
    assert out.denoising.branch.pre.boxes.shape[1] == out.denoising.branch.layers[0].boxes.shape[1]
    assert float(out.geometry.up) == 0.5 and float(out.geometry.reg_scale) == 4.0
    # The frozen W(n) parameters are in the state dict twice, as in the official model.
    state = decoder.state_dict()
    assert {"up", "reg_scale", "decoder.up", "decoder.reg_scale"} <= set(state)
    assert not decoder.box_head.up.requires_grad


def test_at_initialisation_every_layer_returns_the_first_layer_box():
    # Zero-initialised corner heads give W-expectations of 0 (symmetric W), i.e. the reference box.
    decoder = _decoder({"denoising.num_denoising": 0}).train()
    out = decoder(_feats())
    for aux in out.matching.layers[:-1]:
        torch.testing.assert_close(aux.boxes, out.final.reference, atol=1e-6, rtol=0)


def test_go_lsd_criterion_keys_and_ablation_switches():
    targets = _targets()
    decoder = _decoder().train()
    losses = _criterion()(decoder(_feats(), targets), targets)
    assert {"loss_fgl", "loss_fgl_aux_0", "loss_ddf_aux_0", "loss_ddf_dn_0", "loss_bbox_pre", "loss_vfl_dn_pre",
            "loss_giou_enc_0"} <= set(losses)
    assert "loss_ddf" not in losses and "loss_fgl_pre" not in losses  # no teacher / no corners there
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert decoder.box_head.dec_bbox_head[0].layers[0].weight.grad is not None

    # GO-LSD off: own matches, FGL without distillation.
    off = _criterion(go_lsd=False)(decoder(_feats(), targets), targets)
    assert not any("ddf" in k for k in off) and "loss_fgl_aux_1" in off

    # FDR off: box deltas, no corners, so the "local" term supervises nothing.
    no_fdr = _decoder({"box_head.reg_max": None}).train()
    out = no_fdr(_feats(), targets)
    assert out.final.corners is None and out.matching.pre is None and not hasattr(no_fdr.box_head, "up")
    plain = _criterion(go_lsd=False)(out, targets)
    assert not any("fgl" in k or "ddf" in k for k in plain) and "loss_bbox_dn_2" in plain
    # Still D-FINE's layer: gating and no cross-attention projections.
    assert hasattr(no_fdr.layers[0], "gateway")
    assert isinstance(no_fdr.layers[0].cross_attn.value_proj, torch.nn.Identity)


def test_union_set_supervises_boxes_of_every_layer_with_the_same_pairs():
    # With GO-LSD the box losses of every matching output use the union set: feeding every layer
    # the same boxes gives the same box losses whatever their logits.
    targets = _targets()
    decoder = _decoder({"denoising.num_denoising": 0}).train()
    out = decoder(_feats(), targets)
    for aux in out.matching.layers[:-1] + [out.matching.pre]:
        aux.boxes = out.final.boxes
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
    decoder = _decoder({"eval_idx": eval_idx}).eval()
    with torch.no_grad():
        for p in decoder.parameters():  # non-trivial heads, so that dropping a used one would show
            p.add_(0.01 * torch.randn_like(p))
        before = decoder(_feats())
        count = sum(p.numel() for p in decoder.parameters())
        decoder.convert_to_deploy()
        after = decoder(_feats())
    torch.testing.assert_close(after.final.logits, before.final.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.final.boxes, before.final.boxes, rtol=0, atol=0)
    kept = eval_idx % 3 + 1
    assert len(decoder.layers) == kept
    assert sum(p.numel() for p in decoder.parameters()) < count
