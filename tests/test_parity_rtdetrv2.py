"""Our RT-DETRv2 is the official model: same weights and inputs give the same detections and losses.

Golden values: tests/golden/rtdetrv2_*.{json,npz}, computed by the official lyuwenyu/RT-DETR code
(rtdetrv2_pytorch, commit 068dfde) with tests/golden/make_rtdetrv2_golden.py on the synthetic
weights, images and targets of tests/golden/synth.py. Our side loads the same synthetic official
state dict through the official-checkpoint converter, so these tests also pin the key mapping.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from dfine.checkpoint import convert_official_state_dict
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy
from golden.synth import synth_image, synth_state_dict, synth_targets

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def _build(config, *overrides):
    """Our model from ``configs/<config>`` with the synthetic official weights of the golden files."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs" / config)), list(overrides))
    model = instantiate(cfg.model)
    name = config.split("_")[1][:-3]
    keys = json.loads((GOLDEN / f"rtdetrv2_{name}_keys.json").read_text())["state_dict"]
    weights = synth_state_dict(keys, seed=0)
    if cfg.model.decoder.denoising.num_denoising == 0:
        # The official model drops its denoising embedding too when denoising is off.
        del weights["decoder.denoising_class_embed.weight"]
    model.load_state_dict(convert_official_state_dict(weights, model))
    return model


def _image_input(seed):
    image = torch.from_numpy(synth_image(640, 640, seed)).permute(2, 0, 1).contiguous()
    return {"image": image, "height": 640, "width": 640}


@pytest.mark.parametrize("config", ["rtdetrv2_r18.py", "rtdetrv2_r50.py"])
def test_top300_predictions_equal_official(config):
    name = config.split("_")[1][:-3]
    golden = np.load(GOLDEN / f"rtdetrv2_{name}_eval.npz")
    model = _build(config).eval()
    with torch.no_grad():
        instances = model([_image_input(seed=0)])[0]["instances"]
    scores = instances.scores.numpy()
    labels = instances.pred_classes.numpy()
    boxes = instances.pred_boxes.tensor.numpy()
    assert len(scores) == 300
    np.testing.assert_allclose(scores, golden["scores"], atol=1e-4, rtol=0)
    # Detections with (nearly) equal scores may come in either order, so each official detection
    # is paired with one of ours of the same class and score (within 1e-4) and the closest box.
    unused = set(range(len(scores)))
    for label, box, score in zip(golden["labels"], golden["boxes"], golden["scores"]):
        candidates = [j for j in unused if labels[j] == label and abs(scores[j] - score) <= 1e-4]
        assert candidates, f"no detection of class {label} with score {score:.6f}"
        j = min(candidates, key=lambda j: np.abs(boxes[j] - box).max())
        np.testing.assert_allclose(boxes[j], box, atol=1e-4 * 640, rtol=0)
        unused.remove(j)


def test_training_loss_without_denoising_equals_official():
    golden = json.loads((GOLDEN / "rtdetrv2_r18_train_loss.json").read_text())
    model = _build("rtdetrv2_r18.py", "model.decoder.denoising.num_denoising=0").train()
    batch = []
    for seed, target in zip(golden["image_seeds"], synth_targets([3, 5], 80, seed=3)):
        x = _image_input(seed)
        instances = Instances((640, 640))
        instances.gt_boxes = Boxes(box_cxcywh_to_xyxy(torch.as_tensor(target["boxes"])) * 640)
        instances.gt_classes = torch.as_tensor(target["labels"])
        x["instances"] = instances
        batch.append(x)
    with EventStorage():
        losses = model(batch)
    assert set(losses) == set(golden["losses"])
    for key, value in golden["losses"].items():
        assert losses[key].item() == pytest.approx(value, rel=5e-5), key
    total = sum(losses.values()).item()
    assert total == pytest.approx(golden["total"], rel=1e-5)
