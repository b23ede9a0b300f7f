"""Conversion of official checkpoints: a round trip and the errors on mismatch."""
import pytest
import torch
from torch import nn

from dfine.checkpoint import CheckpointMismatchError, convert_official_state_dict, extract_official_state_dict


class _Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width))
        self.decoder = nn.Linear(width, 2)
        self.decoder.register_buffer("anchors", torch.zeros(1, 5, 4))


def test_round_trip_from_ema_module_and_model():
    source = _Tiny()
    for p in source.parameters():
        nn.init.normal_(p)
    official = {"ema": {"module": source.state_dict(), "updates": 7}, "model": {}, "date": "2024"}
    target = _Tiny()
    target.load_state_dict(convert_official_state_dict(extract_official_state_dict(official), target))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    # Without an EMA the raw model weights are used.
    assert extract_official_state_dict({"model": source.state_dict()}).keys() == source.state_dict().keys()


def test_derived_buffers_may_be_absent():
    source, target = _Tiny(), _Tiny()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith(("anchors", "num_batches_tracked"))}
    converted = convert_official_state_dict(state, target)
    assert set(converted) == set(target.state_dict())


def test_other_architecture_is_reported_in_full():
    wider = _Tiny(width=8).state_dict()
    wider["decoder.extra.weight"] = torch.zeros(1)
    del wider["decoder.bias"]
    with pytest.raises(CheckpointMismatchError) as info:
        convert_official_state_dict(wider, _Tiny())
    message = str(info.value)
    assert "backbone.0.weight: checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)" in message
    assert "decoder.extra.weight" in message and "not in the model" in message
    assert "decoder.bias" in message and "missing in the checkpoint" in message


def test_not_a_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="ema.module"):
        extract_official_state_dict({"optimizer": {}, "epoch": 3})


def test_convert_official_cli_round_trip_and_mismatch(tmp_path):
    """tools/convert_official.py on an official-layout R18 checkpoint (synthetic weights over the
    official key list recorded in tests/golden/rtdetrv2_r18_keys.json)."""
    import json
    import sys
    from pathlib import Path

    from detectron2.config import LazyConfig, instantiate

    from dfine.checkpoint import load_ema_or_model_weights
    from golden.synth import synth_state_dict

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import convert_official

    keys = json.loads((root / "tests/golden/rtdetrv2_r18_keys.json").read_text())["state_dict"]
    official = synth_state_dict(keys, seed=0)
    torch.save({"ema": {"module": official, "updates": 1000}, "date": "2024-01-01"}, tmp_path / "official.pth")
    config = str(root / "configs/rtdetrv2_r18.py")
    convert_official.main(["--config-file", config, str(tmp_path / "official.pth"), str(tmp_path / "ours.pth")])

    model = instantiate(LazyConfig.load(config).model)
    assert load_ema_or_model_weights(model, str(tmp_path / "ours.pth")) == "model"
    for key, value in official.items():
        assert torch.equal(model.state_dict()[key], value), key

    # The same file is refused for another model size (R34 has more blocks), differences listed.
    with pytest.raises(SystemExit, match=r"(?s)does not fit .*rtdetrv2_r34.py.*110 key\(s\) missing in the checkpoint"):
        convert_official.main(["--config-file", str(root / "configs/rtdetrv2_r34.py"),
                               str(tmp_path / "official.pth"), str(tmp_path / "r34.pth")])


def test_convert_official_dfine_checkpoint_with_integer_reg_scale(tmp_path):
    """An official D-FINE-N file (keys of tests/golden/dfine_model_golden.json): its reg_scale is an
    int64 parameter (the YAML value 4), ours is float; the converted model has the same W(n)."""
    import json
    import sys
    from pathlib import Path

    from detectron2.config import LazyConfig, instantiate

    from dfine.checkpoint import load_ema_or_model_weights
    from golden.synth import synth_state_dict

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import convert_official

    keys = json.loads((root / "tests/golden/dfine_model_golden.json").read_text())["counts"]["dfine"]["n"]["state_dict"]
    frozen = {"decoder.up": torch.tensor([0.5]), "decoder.decoder.up": torch.tensor([0.5]),
              "decoder.reg_scale": torch.tensor([4]), "decoder.decoder.reg_scale": torch.tensor([4])}
    official = {**synth_state_dict({k: v for k, v in keys.items() if k not in frozen}, seed=0), **frozen}
    torch.save({"ema": {"module": official}}, tmp_path / "dfine_n_coco.pth")
    config = str(root / "configs/dfine_hgnetv2_n.py")
    convert_official.main(["--config-file", config, str(tmp_path / "dfine_n_coco.pth"), str(tmp_path / "ours.pth")])

    model = instantiate(LazyConfig.load(config).model)
    load_ema_or_model_weights(model, str(tmp_path / "ours.pth"))
    reg_scale = model.decoder.box_head.reg_scale
    assert reg_scale.dtype == torch.float32 and float(reg_scale) == 4.0
    assert model.state_dict(keep_vars=True)["decoder.decoder.reg_scale"] is reg_scale
    state = model.state_dict()
    for key, value in official.items():
        if key not in frozen:
            assert torch.equal(state[key], value), key

    # The S file does not fit the N config: reported in full, nothing loaded.
    with pytest.raises(SystemExit, match=r"(?s)does not fit .*dfine_hgnetv2_s.py.*shape mismatch"):
        convert_official.main(["--config-file", str(root / "configs/dfine_hgnetv2_s.py"),
                               str(tmp_path / "dfine_n_coco.pth"), str(tmp_path / "s.pth")])


def test_convert_official_never_unpickles_arbitrary_objects(tmp_path):
    """An official training file with the LR scheduler's Counter and the command line's ``args``
    Namespace (the DETR lineage's main.py saves it) converts with the safe loader; a file holding any
    other object is refused with a clear message, without unpickling it."""
    import argparse
    import collections
    import sys
    import types
    from pathlib import Path

    from detectron2.config import LazyConfig, instantiate

    from test_train_net import TINY_MODEL

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import convert_official

    config = str(root / "configs/quickstart/rtdetrv2_r18_toy.py")
    weights = instantiate(LazyConfig.apply_overrides(LazyConfig.load(config), TINY_MODEL).model).state_dict()
    torch.save({"model": weights, "lr_scheduler": {"milestones": collections.Counter({1000: 1})},
                "args": argparse.Namespace(lr=1e-4)}, tmp_path / "official.pth")
    convert_official.main(["--config-file", config, str(tmp_path / "official.pth"), str(tmp_path / "ours.pth"),
                           *TINY_MODEL])
    assert (tmp_path / "ours.pth").exists()

    torch.save({"model": weights, "args": types.SimpleNamespace(lr=1.0)}, tmp_path / "pickled.pth")
    with pytest.raises(SystemExit, match=r"pickled.pth holds objects other than tensors, which are not unpickled"):
        convert_official.main(["--config-file", config, str(tmp_path / "pickled.pth"), str(tmp_path / "x.pth"),
                               *TINY_MODEL])


class _WithBackbone(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(3, 2)


def _randomised(state):
    generator = torch.Generator().manual_seed(1)
    return {k: torch.rand(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize(
    "name, prefix", [("vit_tiny", "backbone.dinov3._model."), ("dinov3_vits16", "backbone.dinov3.")]
)
def test_pretrained_vit_weights_go_to_the_trunk(name, prefix):
    """DEIMv2's ViT-Tiny file (vitt_distill.pt) holds the trunk without the ``_model.`` wrapper, the
    DINOv3 file the DinoVisionTransformer itself: each lands on its trunk, the rest keeps its values."""
    from dfine.checkpoint import convert_backbone_state_dict
    from dfine.modeling.backbone.sta import DINOv3STA

    model = _WithBackbone(DINOv3STA(name, interaction_indexes=[11]))
    ours = model.state_dict()
    trunk = model.backbone.dinov3._model if prefix.endswith("_model.") else model.backbone.dinov3
    pretrained = _randomised(trunk.state_dict())
    state, found, skipped = convert_backbone_state_dict(pretrained, model)
    assert found == prefix and skipped == []
    model.load_state_dict(state, strict=True)
    for key, value in pretrained.items():
        assert torch.equal(model.state_dict()[prefix + key], value), key
    for key in ("head.weight", "backbone.sta.stem.0.weight", "backbone.convs.0.weight"):
        assert torch.equal(state[key], ours[key]), key
    # One tensor of another shape: a strict error that names it.
    bad = dict(pretrained, **{"cls_token": torch.zeros(1, 1, 7)})
    with pytest.raises(CheckpointMismatchError, match="cls_token"):
        convert_backbone_state_dict(bad, model)


def test_pruned_hgnetv2_starts_from_b0_partially():
    """DEIMv2 Atto starts from the B0 ImageNet weights (official: the tensors of equal shape)."""
    from dfine.checkpoint import convert_backbone_state_dict
    from dfine.modeling.backbone.hgnetv2 import HGNetv2

    model = _WithBackbone(HGNetv2("Atto", use_lab=True, return_idx=[2]))
    b0 = _randomised(HGNetv2("B0", use_lab=True).state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"(?s)partial loading.*not in the model.*shape mismatch"):
        convert_backbone_state_dict(b0, model)
    state, prefix, skipped = convert_backbone_state_dict(b0, model, partial=True)
    assert prefix == "backbone."
    model.load_state_dict(state, strict=True)
    taken = [k for k in b0 if torch.equal(model.state_dict().get("backbone." + k, torch.empty(0)), b0[k])]
    assert "stem.stem1.conv.weight" in taken and "stages.1.blocks.0.layers.0.conv.weight" in taken
    assert any(line.startswith("stages.3.") and "not in the model" in line for line in skipped)
    # Atto's third stage is narrower than B0's: its tensors of another shape are listed, not taken.
    assert any(line.startswith("stages.2.") and "vs model" in line for line in skipped)
