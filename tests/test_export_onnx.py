"""ONNX export (dfine.export, tools/export_onnx.py): the graph of every model family, run by
onnxruntime at batch 1 and 3, equals the deploy model in PyTorch; so does the graph without
GridSample, whose gather sampler equals grid_sample."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate

from dfine.export import (
    DeployDetector,
    compare_with_pytorch,
    disable_grid_sample,
    export_onnx,
    onnxruntime_session,
    random_images,
    toy_images,
)
from dfine.modeling.decoder.msda import _SAMPLERS, deformable_attention_core
from golden.synth import synth_state_dict
from test_train_net import TINY_DFINE, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
TOLERANCE = 1e-4
# DINO (and DN-DAB-Deformable-DETR and two-stage Deformable-DETR, whose configs have the same keys) with
# ResNet-18, 64 channels, one encoder and two decoder layers, 30 queries (a 64x64 input has 85 memory
# tokens over its 4 levels).
TINY_DINO = ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
             "model.encoder.num_layers=1", "model.encoder.dim_feedforward=64", "model.decoder.hidden_dim=64",
             "model.decoder.num_layers=2", "model.decoder.num_queries=30", "model.decoder.input_proj.in_channels="
             "[64,64,64,64]", "model.decoder.layer.dim_feedforward=64", "model.num_top_queries=30"]
# DN-DAB-DETR with ResNet-18, 64 channels, one encoder and two decoder layers, 30 anchors.
TINY_DN_DAB_DETR = ["model.backbone.depth=18", "model.encoder.in_channels=[512]", "model.encoder.hidden_dim=64",
                    "model.encoder.num_layers=1", "model.encoder.dim_feedforward=64", "model.decoder.hidden_dim=64",
                    "model.decoder.num_layers=2", "model.decoder.num_queries=30",
                    "model.decoder.input_proj.in_channels=[64]", "model.decoder.layer.dim_feedforward=64",
                    "model.num_top_queries=30"]
FAMILIES = {
    "rtdetrv2_r18": TINY_MODEL,
    "deim_rtdetrv2_r18": TINY_MODEL,
    "dfine_hgnetv2_n": TINY_DFINE,
    "deim_dfine_hgnetv2_n": TINY_DFINE,
    "dino_r50_4scale_12ep": TINY_DINO,
    "dn_dab_detr_r50_50ep": TINY_DN_DAB_DETR,
    "dn_dab_deformable_detr_r50_50ep": TINY_DINO,
    "deformable_detr_r50_50ep": TINY_DINO,
}

_spec = importlib.util.spec_from_file_location("export_onnx_tool", ROOT / "tools" / "export_onnx.py")
export_onnx_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_onnx_tool)


def tiny_model(config: str):
    """The config's model, tiny, with synthetic weights (no zero-initialised head, no identity
    BatchNorm), in eval mode."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs" / f"{config}.py")), FAMILIES[config])
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    # D-FINE's frozen bin parameters keep their configured values.
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.endswith((".up", ".reg_scale"))}
    model.load_state_dict(synth_state_dict(shapes, seed=1), strict=False)
    return model


def graph_ops(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def assert_matches(detector, session, batch_sizes=(1, 3)):
    for make in (random_images, toy_images):
        for batch in batch_sizes:
            diffs = compare_with_pytorch(detector, session, make(batch, SIZE, seed=batch))
            assert max(diffs.values()) < TOLERANCE, (make.__name__, batch, diffs)


def test_gather_sampler_equals_grid_sample():
    generator = torch.Generator().manual_seed(0)
    for height, width in [(5, 7), (8, 3), (1, 1)]:
        value = torch.randn(6, 4, height, width, generator=generator)
        # Well beyond the map on every side, plus its exact corners and centre.
        grid = torch.rand(6, 10, 5, 2, generator=generator) * 3 - 1.5
        grid[0, 0, :3] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
        expected = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        torch.testing.assert_close(_SAMPLERS["bilinear_gather"].sample(value, grid), expected)  # float32 rounding

    shapes = [(6, 5), (3, 3), (2, 1)]
    points = [2, 3, 4]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=generator)
    locations = torch.rand(2, 7, 4, sum(points), 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(2, 7, 4, sum(points), generator=generator).softmax(-1)
    outputs = [deformable_attention_core(value, shapes, locations, weights, points, method)
               for method in ("default", "bilinear_gather")]
    torch.testing.assert_close(outputs[1], outputs[0])


@pytest.mark.parametrize("config", sorted(FAMILIES))
def test_export_with_postprocessor_matches_pytorch(config, tmp_path):
    """Detections of the graph == the deploy model's in PyTorch, which == the Detectron2 model's."""
    model = tiny_model(config)
    path = tmp_path / "model.onnx"
    detector = export_onnx(model, path, SIZE)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["labels", "boxes", "scores"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Deformable attention samples with GridSample; DN-DAB-DETR's global attention has none.
    deformable = any(hasattr(m, "num_points_list") for m in model.modules())
    assert ("GridSample" in graph_ops(path)) == deformable
    assert_matches(detector, onnxruntime_session(path, threads=1))

    images = toy_images(2, SIZE)
    with torch.no_grad():
        labels, boxes, scores = detector(images)
        instances = model([{"image": image.to(torch.uint8)} for image in images])
    for i, output in enumerate(instances):
        output = output["instances"]
        assert labels.dtype == torch.int64 and torch.equal(output.pred_classes, labels[i])
        torch.testing.assert_close(output.pred_boxes.tensor, boxes[i])
        torch.testing.assert_close(output.scores, scores[i])


@pytest.mark.parametrize("config", ["rtdetrv2_r18", "dfine_hgnetv2_n", "dino_r50_4scale_12ep"])
def test_export_without_grid_sample_matches_default_sampler(config, tmp_path):
    """Raw outputs of the GridSample-free graph == the deploy model with grid_sample in PyTorch."""
    model = tiny_model(config).deploy()
    reference = DeployDetector(model, postprocess=False)
    images = toy_images(3, SIZE)
    with torch.no_grad():
        expected = reference(images)
    path = tmp_path / "model.onnx"
    detector = export_onnx(model, path, SIZE, postprocess=False, grid_sample=False)
    assert {m.method for m in model.modules() if hasattr(m, "num_points_list")} == {"bilinear_gather"}
    assert disable_grid_sample(model) == 0, "nothing left to switch"
    assert "GridSample" not in graph_ops(path)
    with torch.no_grad():
        for output, target in zip(detector(images), expected):
            torch.testing.assert_close(output, target, rtol=0, atol=1e-5)
    session = onnxruntime_session(path, threads=1)
    for output, target in zip(session.run(None, {"images": images.numpy()}), expected):
        torch.testing.assert_close(torch.from_numpy(output), target, rtol=0, atol=TOLERANCE)
    assert_matches(detector, session, batch_sizes=(1,))


def test_tool_exports_checkpoint_and_checks(tmp_path, capsys):
    model = tiny_model("rtdetrv2_r18")
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    output = tmp_path / "out" / "model.onnx"
    status = export_onnx_tool.main([
        "--config-file", str(ROOT / "configs" / "rtdetrv2_r18.py"), "--weights", str(tmp_path / "model.pth"),
        "--output", str(output), "--size", "64", "--no-grid-sample", "--check-image", str(image), *TINY_MODEL])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "check files batch 3" in printed and "within tolerance" in printed
    assert "GridSample" not in graph_ops(output)
    # The graph holds the checkpoint's weights.
    session = onnxruntime_session(output, threads=1)
    assert_matches(DeployDetector(model.deploy()), session, batch_sizes=(2,))


def test_tool_fails_above_tolerance(tmp_path, capsys):
    torch.save({"model": tiny_model("dfine_hgnetv2_n").state_dict()}, tmp_path / "model.pth")
    status = export_onnx_tool.main([
        "--config-file", str(ROOT / "configs" / "dfine_hgnetv2_n.py"), "--output", str(tmp_path / "m.onnx"),
        "--no-postprocess", "--tolerance", "-1", "--batch-sizes", "1,2", "dataloader.test.mapper.image_size=64",
        f"train.init_checkpoint={tmp_path / 'model.pth'}", *TINY_DFINE])
    printed = capsys.readouterr().out
    assert status == 1 and "ABOVE tolerance" in printed
    assert "[batch, 3, 64, 64]" in printed and "pred_logits, pred_boxes" in printed
