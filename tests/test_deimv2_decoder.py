"""DEIMv2's decoder (``DEIMTransformer``) as the parts of configs/common/models/deimv2.py, its RMSNorm /
SwiGLU FFN and its matcher switch, against the official DEIMv2 code.

Reference numbers: ``tests/golden/deimv2_decoder_golden.{json,npz}``, written by
``tools/golden/make_deimv2_decoder_golden.py`` from the official DEIMv2 tree (Intellindust-AI-Lab/DEIMv2,
commit in the JSON's ``official``) in float64 (modules ``.to(torch.float64)``, float64 inputs), on the
synthetic weights of ``golden/synth.py`` and the inputs ``decoder_inputs`` / ``module_inputs`` /
``matcher_inputs`` of ``golden/deimv2_synth.py``, which these tests rebuild. The official RMSNorm takes
its statistics in float32 whatever the input; for the golden it is patched to float64 on float64 inputs
(JSON ``patches``), as ours does. Our modules run in float64 too: the two sides differ only by the
order of float64 operations, at most MEASURED (absolute; values of magnitude up to ~10) over native
AVX-512, ``ATEN_CPU_CAPABILITY=avx2`` + ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=default``.
ATOL leaves a factor of about 1000 over it and is far below any real difference (1e-4 or more). The
one reduced-precision check (RMSNorm on half inputs) has its own tolerance, stated where it is made.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from decoders import family_criterion, family_decoder
from dfine.modeling.criterion.matcher import HungarianMatcher
from dfine.modeling.decoder import Branch, DecoderOutput, DetrDecoder, Predictions
from dfine.modeling.layers.common import RMSNorm, SwiGLUFFN
from dfine.modeling.meta_arch import RealTimeDETR
from golden.deimv2_synth import (
    MATCHER_ARGS,
    aliases,
    count_calls,
    decoder_inputs,
    load_synth,
    matcher_inputs,
    module_inputs,
    stored_part,
)
from golden.synth import fingerprint, synth_state_dict

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "deimv2_decoder_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "deimv2_decoder_golden.npz")
# Official frozen W(n) hyper-parameter built from the YAML's integer 4: int64 there, float32 here
# (loading casts; W(n) is the same).
INT64_IN_OFFICIAL = {"reg_scale", "decoder.reg_scale"}
MEASURED = 1e-13  # max abs difference: 3.6e-14 native AVX-512, 3.7e-14 avx2, 9.4e-14 default
ATOL = 1e-10


def deimv2_decoder(official_args: dict, overrides=None) -> DetrDecoder:
    """Our DEIMv2 decoder (configs/common/models/deimv2.py) configured as the official
    ``DEIMTransformer(**official_args)``; ``overrides`` are more config keys of the decoder."""
    a = official_args
    args = {
        "num_classes": a["num_classes"], "hidden_dim": a["hidden_dim"], "num_queries": a["num_queries"],
        "num_levels": a["num_levels"], "num_layers": a["num_layers"], "eval_idx": a["eval_idx"],
        "input_proj.in_channels": a["feat_channels"], "input_proj.in_strides": a["feat_strides"],
        "layer.cross_attn.num_points": a["num_points"], "layer.cross_attn.method": a["cross_attn_method"],
        "layer.dim_feedforward": a["dim_feedforward"], "layer.activation": a["activation"],
        "layer.target_gate": a.get("use_gateway", True), "box_head.lqe_act": a["activation"],
        "query_pos_head.act": a["mlp_act"], "query_selection.mlp_act": a["mlp_act"], "box_head.act": a["mlp_act"],
        "denoising.num_denoising": a["num_denoising"], "denoising.label_noise_ratio": a["label_noise_ratio"],
        "denoising.box_noise_scale": a["box_noise_scale"], "query_selection.eval_spatial_size": a["eval_spatial_size"],
        "query_selection.method": a["query_select_method"], "box_head.reg_max": a["reg_max"],
        "box_head.reg_scale": a["reg_scale"], "box_head.share": a.get("share_bbox_head", False),
        "class_head.share": a.get("share_score_head", False),
    }
    return family_decoder("deimv2", {**args, **(overrides or {})})


def official_output(out: DecoderOutput, key: str):
    """The field of our typed output that holds what the official output dict has under ``key``."""
    return {
        "pred_logits": out.final.logits, "pred_boxes": out.final.boxes, "pred_corners": out.final.corners,
        "ref_points": out.final.reference, "up": out.geometry.up, "reg_scale": out.geometry.reg_scale,
        "aux_outputs": out.matching.layers[:-1], "pre_outputs": out.matching.pre, "enc_aux_outputs": out.proposals,
        "enc_meta": out.proposals.class_agnostic,
    }[key]


def _case(name):
    golden = GOLDEN["decoders"][name]
    args = golden["args"]
    torch.manual_seed(0)
    decoder = deimv2_decoder(args)
    feats = decoder_inputs(name, args["feat_channels"], args["feat_strides"])
    return golden, decoder, feats


def _shapes(state):
    return {k: list(v.shape) for k, v in state.items()}


def _close(ours, key, atol=ATOL):
    """Our float64 output against the golden array ``key`` (the part of it ``stored_part`` keeps)."""
    expected = torch.from_numpy(ARRAYS[key])
    ours = stored_part(key, ours.detach())
    assert ours.dtype == torch.float64 and ours.shape == expected.shape, key
    torch.testing.assert_close(ours, expected, atol=atol, rtol=0, msg=key)


def test_rmsnorm_and_swiglu_match_official():
    """Official ``deim_utils.RMSNorm(64)`` / ``SwiGLUFFN(64, 80, 64)`` outputs (golden ``rmsnorm`` /
    ``swiglu``) on ``module_inputs()``."""
    inputs = module_inputs()
    assert fingerprint(inputs) == GOLDEN["module_inputs_crc32"]
    norm = RMSNorm(64)
    assert norm.eps == GOLDEN["rmsnorm"]["eps"] and list(dict(norm.named_parameters())) == ["scale"]
    with torch.no_grad():
        norm.scale.copy_(torch.from_numpy(inputs["rmsnorm_scale"]))
        x = torch.from_numpy(inputs["rmsnorm_x"])
        half = norm(x.half())
        norm.double().scale.copy_(torch.from_numpy(inputs["rmsnorm_scale"]))
        _close(norm(x), "rmsnorm_out")
    # Statistics in float32, cast back to half, then the float32 scale: a float32 result, within half
    # precision (relative 2^-11 per rounding, two roundings) of the float64 one.
    assert str(half.dtype) == GOLDEN["rmsnorm"]["half_output_dtype_with_float32_scale"]
    expected = torch.from_numpy(ARRAYS["rmsnorm_out"])
    torch.testing.assert_close(half.double(), expected, rtol=2 ** -10, atol=1e-3)

    ffn = SwiGLUFFN(64, 80, 64)
    assert _shapes(ffn.state_dict()) == GOLDEN["swiglu"]["state_dict"]
    ffn.load_state_dict(synth_state_dict(_shapes(ffn.state_dict()), seed=0), strict=True)
    with torch.no_grad():
        _close(ffn.double()(torch.from_numpy(inputs["swiglu_x"])), "swiglu_out")


@pytest.mark.parametrize("name", ["atto", "s"])
def test_state_dict_layout_matches_official(name):
    """Keys, order, shapes, dtypes, shared tensors and parameter count of the official
    ``DEIMTransformer`` for the Atto and DINOv3-S configs (golden ``decoders[name]``)."""
    golden, decoder, _ = _case(name)
    state = decoder.state_dict()
    # Same keys and shapes; the order differs (the query-position head is built before the
    # encoder heads here), which loading ignores.
    assert _shapes(state) == golden["state_dict"]
    dtypes = {k: str(v.dtype) for k, v in state.items() if v.dtype != torch.float32}
    assert dtypes == {k: v for k, v in golden["dtypes"].items() if k not in INT64_IN_OFFICIAL}
    assert aliases(state) == golden["aliases"]
    assert len(state) == golden["num_state_dict_entries"]
    assert sum(p.numel() for p in decoder.parameters()) == golden["num_parameters"]


@pytest.mark.parametrize("name", ["atto", "s"])
def test_eval_outputs_and_deploy_match_official(name):
    """Eval outputs of the official decoder with the same synthetic weights (golden NPZ
    ``{name}_eval_*``, float64, ATOL), then the official deploy form (``deploy`` field): same
    state dict and shared tensors, same outputs."""
    golden, decoder, feats = _case(name)
    weights = load_synth(decoder)
    assert fingerprint(weights) == golden["weights_crc32"]
    assert fingerprint(feats) == golden["feats_crc32"]
    calls = count_calls(decoder.query_pos_head)
    decoder.eval().double()
    with torch.no_grad():
        out = decoder(feats)
    assert calls[0] == golden["eval"]["query_pos_head_calls"] == 1
    _close(out.final.logits, f"{name}_eval_logits")
    _close(out.final.boxes, f"{name}_eval_boxes")

    decoder.convert_to_deploy()
    state = decoder.state_dict()
    deploy = golden["deploy"]
    assert _shapes(state) == deploy["state_dict"]
    assert aliases(state) == deploy["aliases"]
    assert sum(p.numel() for p in decoder.parameters()) == deploy["num_parameters"]
    with torch.no_grad():
        deployed = decoder(feats)
    _close(deployed.final.logits, f"{name}_eval_logits")
    _close(deployed.final.boxes, f"{name}_eval_boxes")


def test_training_outputs_match_official():
    """Training-mode outputs of the Atto decoder without denoising (golden ``atto_train_*``): every
    layer's logits and boxes, the final corners, the first layer's pre-head output and the encoder
    proposals; the official decoder embeds the query positions once (``query_pos_head_calls``)."""
    golden, decoder, feats = _case("atto")
    load_synth(decoder)
    decoder.train().double()
    decoder.denoising.num_denoising = 0
    calls = count_calls(decoder.query_pos_head)
    with torch.no_grad():
        out = decoder(feats)
    assert calls[0] == golden["train"]["query_pos_head_calls"] == 1
    assert all(official_output(out, key) is not None for key in golden["train"]["output_keys"])
    layers = out.matching.layers
    _close(torch.stack([o.logits for o in layers]), "atto_train_logits")
    _close(torch.stack([o.boxes for o in layers]), "atto_train_boxes")
    _close(out.final.corners, "atto_train_corners")
    _close(out.matching.pre.boxes, "atto_train_pre_boxes")
    _close(out.matching.pre.logits, "atto_train_pre_logits")
    _close(out.proposals.boxes, "atto_train_enc_boxes")
    _close(out.proposals.logits, "atto_train_enc_logits")


def test_query_pos_is_shared_only_with_the_option():
    """One embedding for all layers with ``share_query_pos`` (the official count is 1, see above);
    without it, D-FINE embeds every layer's own reference boxes (one call per layer)."""
    args = GOLDEN["decoders"]["atto"]["args"]
    feats = [f.float() for f in decoder_inputs("atto", args["feat_channels"], args["feat_strides"])]
    for share, expected in ((True, 1), (False, args["num_layers"])):
        decoder = deimv2_decoder(args, {"query_pos_head.shared": share}).train()
        decoder.denoising.num_denoising = 0
        calls = count_calls(decoder.query_pos_head)
        decoder(feats)
        assert calls[0] == expected


def test_share_bbox_head_is_one_module():
    """Atto's ``share_bbox_head``: one module behind every layer, in training and after deploy;
    the score heads and the S config's box heads are separate modules."""
    atto = deimv2_decoder(GOLDEN["decoders"]["atto"]["args"])
    heads = list(atto.box_head.dec_bbox_head)
    assert len(heads) == 3 and all(h is heads[0] for h in heads)
    assert len({id(h) for h in atto.class_head.dec_score_head}) == 3
    # Sharing means training one head: a change through one layer's head shows in all of them.
    with torch.no_grad():
        heads[1].layers[0].weight.add_(1.0)
    assert torch.equal(heads[0].layers[0].weight, heads[2].layers[0].weight)
    atto.convert_to_deploy()
    assert all(h is atto.box_head.dec_bbox_head[0] for h in atto.box_head.dec_bbox_head)

    s = deimv2_decoder(GOLDEN["decoders"]["s"]["args"])
    s_heads = s.box_head.dec_bbox_head
    assert len({id(h) for h in s_heads}) == len(s_heads)
    # Cloned heads: the unshared heads start equal, as the official deep copies do.
    assert all(torch.equal(h.layers[0].weight, s_heads[0].layers[0].weight) for h in s_heads)
    shared_scores = deimv2_decoder(GOLDEN["decoders"]["s"]["args"], {"class_head.share": True}).class_head
    assert all(h is shared_scores.dec_score_head[0] for h in shared_scores.dec_score_head)


def test_dfine_defaults_build_no_deimv2_module():
    """D-FINE's parts (configs/common/models/dfine.py) stay D-FINE's: LayerNorm, plain FFN,
    ``enc_output``, separate heads."""
    decoder = family_decoder("dfine", {
        "num_classes": 5, "hidden_dim": 32, "num_queries": 10, "input_proj.in_channels": [32, 32],
        "input_proj.in_strides": [16, 32], "num_levels": 2, "layer.cross_attn.num_points": [3, 2], "layer.n_head": 4,
        "num_layers": 3, "layer.dim_feedforward": 64})
    layer = decoder.layers[0]
    assert isinstance(layer.norm1, nn.LayerNorm) and isinstance(layer.gateway.norm, nn.LayerNorm)
    assert hasattr(layer, "linear1") and not hasattr(layer, "swish_ffn")
    assert hasattr(decoder.query_selection, "enc_output") and not decoder.query_pos_head.shared
    assert len({id(h) for h in decoder.box_head.dec_bbox_head}) == 3
    assert not any(k.endswith(".scale") for k in decoder.state_dict())


def _matcher_problem():
    m = matcher_inputs()
    outputs = Predictions(torch.from_numpy(m["logits"]), torch.from_numpy(m["boxes"]))
    targets = [{k: torch.from_numpy(v) for k, v in t.items()} for t in m["targets"]]
    return outputs, targets


def test_matcher_switch_matches_official():
    """Official DEIMv2 ``HungarianMatcher`` (Atto arguments) indices before epoch 450 (focal + L1 +
    GIoU) and from it on (``-(p * IoU^4)``), and that cost (golden ``matcher``, float64); the two differ."""
    outputs, targets = _matcher_problem()
    golden = GOLDEN["matcher"]
    matcher = HungarianMatcher(**golden["args"])
    assert golden["args"] == MATCHER_ARGS
    for epoch in golden["epochs"]:
        indices = matcher(outputs, targets, epoch=epoch)
        assert [[q.tolist(), g.tolist()] for q, g in indices] == golden["indices"][str(epoch)], epoch
    assert golden["indices"]["449"] != golden["indices"]["450"]
    cost = matcher.cost_matrix(outputs.logits.flatten(0, 1), outputs.boxes.flatten(0, 1),
                               torch.cat([t["labels"] for t in targets]), torch.cat([t["boxes"] for t in targets]),
                               epoch=450)
    _close(cost, "matcher_cost_on")
    # Without change_matcher the epoch changes nothing.
    plain = HungarianMatcher(**{**golden["args"], "change_matcher": False})
    assert [[q.tolist(), g.tolist()] for q, g in plain(outputs, targets, epoch=500)] == golden["indices"]["0"]


class _EpochSpy(nn.Module):
    """Wraps a matcher and records the ``epoch`` of every call."""

    def __init__(self, matcher):
        super().__init__()
        self.matcher = matcher
        self.epochs = []

    def forward(self, outputs, targets, epoch=0):
        self.epochs.append(epoch)
        return self.matcher(outputs, targets, epoch=epoch)


def test_criterion_hands_the_epoch_to_every_matcher_call():
    """Main, both aux layers, the pre head and the encoder output are all matched at the given epoch."""
    golden, decoder, feats = _case("atto")
    decoder.train()
    decoder.denoising.num_denoising = 0
    out = decoder([f.float() for f in feats])
    targets = [{"labels": torch.tensor([1, 7]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])},
               {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    spy = _EpochSpy(HungarianMatcher(**GOLDEN["matcher"]["args"]))
    criterion = family_criterion("deimv2", {"losses": ["mal", "boxes"], "go_lsd": False}, num_classes=80)
    criterion.matcher = spy
    losses = criterion(out, targets, epoch=451)
    assert spy.epochs == [451] * 5
    assert "loss_mal_pre" in losses and "loss_bbox_enc_0" in losses


class _Stub(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.num_classes = 3

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def test_meta_arch_passes_the_batch_epoch_to_the_criterion():
    """Training hands the largest ``"epoch"`` of the batch's samples to the criterion, 0 without any."""
    from detectron2.structures import Boxes, Instances

    seen = []

    def criterion(outputs, targets, epoch=None):
        seen.append(epoch)
        return {"loss": outputs.final.logits.sum()}

    def decoder(feats, targets=None, padding_mask=None):
        logits = feats[0].mean() * torch.ones(1)
        return DecoderOutput(Branch([Predictions(logits, logits)]))

    model = RealTimeDETR(backbone=_Stub(lambda x: [x]), encoder=_Stub(lambda f: f), decoder=_Stub(decoder),
                         criterion=_Stub(criterion)).train()

    def sample(epoch=None):
        instances = Instances((32, 32))
        instances.gt_boxes = Boxes(torch.tensor([[2.0, 2.0, 20.0, 20.0]]))
        instances.gt_classes = torch.tensor([1])
        x = {"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "instances": instances}
        if epoch is not None:
            x["epoch"] = epoch
        return x

    model([sample(3), sample(5)])
    model([sample(), sample()])
    assert seen == [5, 0]
