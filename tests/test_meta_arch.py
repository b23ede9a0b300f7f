"""The meta-architecture's Detectron2 contract: input_format, padding, outputs in original coordinates."""
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder.hidden_dim=32",
    "model.encoder.dim_feedforward=64",
    "model.encoder.eval_spatial_size=[64,64]",
    "model.decoder.input_proj.in_channels=[32,32,32]",
    "model.decoder.hidden_dim=32",
    "model.decoder.layer.dim_feedforward=64",
    "model.decoder.num_layers=2",
    "model.decoder.num_queries=20",
    "model.decoder.denoising.num_denoising=10",
    "model.decoder.query_selection.eval_spatial_size=[64,64]",
    "model.num_top_queries=20",
]


def _model(*overrides):
    torch.manual_seed(0)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs/quickstart/rtdetrv2_r18_toy.py")),
                                     TINY + list(overrides))
    return instantiate(cfg.model).eval()


def _image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_bgr_input_is_flipped_to_rgb():
    rgb_model, bgr_model = _model(), _model("model.input_format=BGR")
    image = _image(64, 64, 0)
    with torch.no_grad():
        rgb = rgb_model([{"image": image}])[0]["instances"]
        bgr = bgr_model([{"image": image.flip(0)}])[0]["instances"]
    torch.testing.assert_close(rgb.scores, bgr.scores)
    torch.testing.assert_close(rgb.pred_boxes.tensor, bgr.pred_boxes.tensor)


def test_outputs_are_in_original_image_coordinates():
    model = _model()
    with torch.no_grad():
        small = model([{"image": _image(64, 64, 1), "height": 64, "width": 64}])[0]["instances"]
        large = model([{"image": _image(64, 64, 1), "height": 480, "width": 320}])[0]["instances"]
    assert large.image_size == (480, 320) and len(large) == 20
    torch.testing.assert_close(large.pred_boxes.tensor, small.pred_boxes.tensor * torch.tensor([5.0, 7.5, 5.0, 7.5]))
    thresholded = _model("model.score_threshold=0.5")
    with torch.no_grad():
        kept = thresholded([{"image": _image(64, 64, 1)}])[0]["instances"]
    assert (kept.scores > 0.5).all() and len(kept) == int((small.scores > 0.5).sum())


def test_padded_batch_masks_the_padding():
    model = _model()
    batch = [{"image": _image(64, 64, 2)}, {"image": _image(40, 64, 3)}]
    images = model.preprocess_image(batch)
    mask = model.padding_mask(images)
    assert mask.shape == (2, 64, 64) and not mask[0].any() and mask[1, 40:].all() and not mask[1, :40].any()
    assert model.padding_mask(model.preprocess_image(batch[:1])) is None

    feats = model.encoder(model.backbone(images.tensor))
    memory = model.decoder.input_proj(feats, mask)
    valid = memory.valid
    scored = {}
    selection = model.decoder.query_selection
    select_topk = selection._select_topk

    def spy(logits):
        scored["logits"] = logits
        return select_topk(logits)

    selection._select_topk = spy
    boxes_unact = selection(memory).reference_unact
    chosen = scored["logits"].max(-1).values.topk(model.decoder.num_queries, dim=-1).indices
    # The padded image has fewer valid tokens, and none of its proposals comes from the padding.
    assert valid[1].sum() < valid[0].sum() == valid.shape[1]
    assert valid.gather(1, chosen).all() and torch.isfinite(boxes_unact).all()
    # Without the mask, this batch's padding would be proposed (so the check above can fail).
    selection(memory._replace(valid=None))
    unmasked = scored["logits"].max(-1).values.topk(model.decoder.num_queries, dim=-1).indices
    assert not valid.gather(1, unmasked).all()
    del selection._select_topk
    with torch.no_grad():
        results = model(batch)
    assert all(torch.isfinite(r["instances"].pred_boxes.tensor).all() for r in results)

    model.train()
    for x, (h, w) in zip(batch, [(64, 64), (40, 64)]):
        x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0]])),
                                   gt_classes=torch.tensor([1]))
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_class_ids_outside_the_model_are_a_clear_error():
    """A batch built without dfine.data's loading checks (e.g. dicts handed to the model directly)
    with a class id the model does not have: an error naming the image, not a device assert."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import Boxes, Instances

    from test_train_net import ROOT, TINY_MODEL

    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs/quickstart/rtdetrv2_r18_toy.py")), TINY_MODEL)
    model = instantiate(cfg.model).train()
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 40.0, 40.0]]))
    instances.gt_classes = torch.tensor([6])
    batch = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64,
              "file_name": "bad.jpg", "instances": instances}]
    with pytest.raises(ValueError, match=r"'bad.jpg' has class ids \[6\], outside the model's 6 classes"):
        model(batch)
