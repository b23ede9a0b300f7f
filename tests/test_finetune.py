"""Fine-tuning from a checkpoint with another number of classes (dfine.checkpoint.finetune)."""
import math

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from dfine.checkpoint import CheckpointMismatchError, load_finetune_weights
from dfine.engine import ModelEMA
from test_train_net import ROOT, TINY_DFINE, TINY_MODEL, _args, _metrics, train_net

CONFIGS = {
    "rtdetrv2": ("quickstart/rtdetrv2_r18_toy.py", TINY_MODEL, 2),
    "dfine": ("deim_dfine_hgnetv2_n.py", TINY_DFINE, 3),
}


def _model(config, tiny, *overrides, seed=0):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs" / config)), list(tiny) + list(overrides))
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def _class_dependent_keys(num_layers):
    heads = [f"decoder.dec_score_head.{i}.{p}" for i in range(num_layers) for p in ("weight", "bias")]
    return {"decoder.denoising_class_embed.weight", "decoder.enc_score_head.weight", "decoder.enc_score_head.bias",
            *heads}


def _save_with_ema(model, directory, name):
    """A checkpoint like our training checkpoints: raw weights under "model", EMA weights (here the
    raw ones plus one) under "ema"."""
    ema = ModelEMA(model)
    with torch.no_grad():
        for value in ema.module.state_dict().values():
            if value.is_floating_point():
                value.add_(1.0)
    DetectionCheckpointer(model, str(directory), ema=ema).save(name)
    return ema.module.state_dict(), str(directory / f"{name}.pth")


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_class_dependent_tensors_are_reinitialised_and_listed(arch, tmp_path, dfine_log):
    config, tiny, num_layers = CONFIGS[arch]
    source, path = _save_with_ema(_model(config, tiny, "model.decoder.num_classes=80"), tmp_path, "coco")
    model = _model(config, tiny, "model.decoder.num_classes=3", seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    report = load_finetune_weights(model, path)

    expected = _class_dependent_keys(num_layers)
    assert report.weights == "ema"
    assert {line.split(":")[0] for line in report.reinitialised} == expected
    assert "decoder.denoising_class_embed.weight: checkpoint (81, 32) -> model (4, 32)" in report.reinitialised
    for key in expected:
        assert key in dfine_log.text
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh[key] if key in expected else source[key]), key


def test_other_differences_are_an_error_and_load_nothing(tmp_path):
    config, tiny, _ = CONFIGS["rtdetrv2"]
    _, path = _save_with_ema(_model(config, tiny, "model.decoder.num_classes=80"), tmp_path, "coco")
    model = _model(config, tiny, "model.decoder.num_classes=3", "model.decoder.num_layers=3",
                   "model.encoder.dim_feedforward=128")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_finetune_weights(model, path)
    message = str(err.value)
    assert path in message
    assert "key(s) missing in the checkpoint:\n    decoder.decoder.layers.2." in message
    assert "encoder.encoder.0.layers.0.linear1.weight: checkpoint (64, 32) vs model (128, 32)" in message
    assert "score_head" not in message, "class-dependent tensors are not differences"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_net_fine_tunes_from_another_class_count(tiny_coco, tmp_path, dfine_log):
    """A 9-class checkpoint (standing in for a converted COCO or Objects365 one) into the 6-class
    tiny set: loads, lists the re-initialised tensors, trains."""
    config, tiny, num_layers = CONFIGS["rtdetrv2"]
    _, path = _save_with_ema(_model(config, tiny, "model.decoder.num_classes=9"), tmp_path, "nine_classes")
    out = tmp_path / "run"
    train_net.main(_args(tiny_coco, str(out), f"train.init_checkpoint={path}", "train.max_iter=2",
                         "train.eval_period=0"))
    assert "7 class-dependent tensors are re-initialised" in dfine_log.text
    for key in _class_dependent_keys(num_layers):
        assert key in dfine_log.text
    losses = [m["total_loss"] for m in _metrics(out) if "total_loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
    assert (out / "model_final.pth").is_file()
