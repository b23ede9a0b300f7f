"""dfine.engine.Predictor and tools/demo.py on a tiny randomly initialised RT-DETRv2 saved as a checkpoint."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from PIL import Image

from dfine.data import TOY_SHAPES_CLASSES
from dfine.engine import Predictor
from test_train_net import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "rtdetrv2_r18_toy.py")
# The quick-start config keeps its test data set, toy_shapes_val, whose class names are registered.
TINY = TINY_MODEL + ["dataloader.test.mapper.image_size=64"]
# Original sizes (h, w) that differ from the 64x64 model input, so boxes are mapped back.
IMAGE_SIZES = [(72, 96), (64, 64), (90, 60)]

_spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def _image(rng, height, width):
    """A noisy BGR image with a few filled rectangles."""
    image = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        colour = tuple(int(c) for c in rng.integers(100, 256, size=3))
        cv2.rectangle(image, (x0, y0), (x0 + width // 3, y0 + height // 4), colour, -1)
    return image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A checkpoint of the tiny model (random weights, seed 0) and three PNG images."""
    root = tmp_path_factory.mktemp("predictor")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(CONFIG), TINY)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    checkpoint = str(root / "model.pth")
    torch.save({"model": model.state_dict()}, checkpoint)
    rng = np.random.default_rng(0)
    images = []
    for i, (height, width) in enumerate(IMAGE_SIZES):
        path = str(root / "images" / f"image{i}.png")
        Path(path).parent.mkdir(exist_ok=True)
        assert cv2.imwrite(path, _image(rng, height, width))
        images.append(path)
    return {"checkpoint": checkpoint, "images": images, "state": model.state_dict(), "root": root}


@pytest.fixture(scope="module")
def predictor(assets):
    return Predictor(CONFIG, assets["checkpoint"], overrides=TINY, device="cpu", batch_size=2)


def _assert_same(a, b):
    assert a.image_size == b.image_size
    assert torch.equal(a.pred_classes, b.pred_classes)
    # Batched and single-image convolutions may round differently in the last bits.
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)


def test_checkpoint_is_loaded(predictor, assets):
    state = predictor.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in assets["state"].items())
    assert not predictor.model.training and predictor.weights == assets["checkpoint"]


def test_path_array_pil_and_batch_give_the_same_detections(predictor, assets):
    paths = assets["images"]
    from_path = predictor(paths[0])
    assert from_path.image_size == IMAGE_SIZES[0] and len(from_path) == 20  # num_top_queries, no threshold
    _assert_same(from_path, predictor(cv2.imread(paths[0])))  # BGR, as cv2 reads it
    _assert_same(from_path, predictor(Image.open(paths[0])))
    batch = predictor([paths[0], cv2.imread(paths[1]), Image.open(paths[2])])  # batches of 2 and 1
    assert [b.image_size for b in batch] == IMAGE_SIZES
    for path, instances in zip(paths, batch):
        _assert_same(predictor(path), instances)


def test_predictions_equal_evaluation(predictor, assets):
    """The predictor feeds the model what the config's test mapper (evaluation) feeds it."""
    path = assets["images"][0]
    evaluation_input = predictor.mapper({"file_name": path, "image_id": 0})
    assert torch.equal(predictor.preprocess(path)["image"], evaluation_input["image"])
    with torch.no_grad():
        evaluated = predictor.model([evaluation_input])[0]["instances"]
    _assert_same(predictor(path), evaluated)


def test_gray_and_rgba_arrays_are_converted(predictor, assets):
    bgr = cv2.imread(assets["images"][0])
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    _assert_same(predictor(gray), predictor(np.repeat(gray[:, :, None], 3, axis=2)))
    _assert_same(predictor(np.dstack([bgr, np.full(gray.shape, 255, np.uint8)])), predictor(bgr))


def test_bad_inputs_are_clear_errors(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor(str(tmp_path / "missing.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(OSError, match="corrupt.jpg"):
        predictor(corrupt)
    with pytest.raises(TypeError, match="uint8"):
        predictor(np.zeros((8, 8, 3), np.float32))


def test_dict_output_and_score_threshold(predictor, assets):
    paths = assets["images"]
    full = predictor(paths, as_dict=True)
    for result in full:
        assert set(result) == {"boxes", "scores", "labels", "class_names"}
        assert len(result["boxes"]) == len(result["scores"]) == len(result["labels"]) == len(result["class_names"])
        assert all(len(box) == 4 for box in result["boxes"])
        assert result["class_names"] == [TOY_SHAPES_CLASSES[label] for label in result["labels"]]
    # Halfway between two scores, far from any (batched and single runs round differently).
    threshold = float(np.mean(sorted(full[0]["scores"])[9:11]))
    thresholded = Predictor(CONFIG, assets["checkpoint"], overrides=TINY, device="cpu", score_threshold=threshold)
    for kept, result in zip(thresholded(paths, as_dict=True), full):
        expected = [i for i, score in enumerate(result["scores"]) if score > threshold]
        assert kept["labels"] == [result["labels"][i] for i in expected]
        expected_boxes = np.reshape([result["boxes"][i] for i in expected], (-1, 4))
        np.testing.assert_allclose(kept["boxes"], expected_boxes, atol=1e-3)
    assert 0 < len(thresholded(paths[0])) < len(full[0]["scores"])


def test_class_names(predictor):
    assert predictor.class_names == list(TOY_SHAPES_CLASSES)
    assert predictor.metadata.thing_classes == list(TOY_SHAPES_CLASSES)
    names = ["a", "b", "c", "d", "e", "f"]
    assert Predictor(CONFIG, "", overrides=TINY, device="cpu", class_names=names).class_names == names
    unregistered = TINY + ["dataloader.test.dataset.names=not_registered_anywhere"]
    assert Predictor(CONFIG, "", overrides=unregistered, device="cpu").class_names == [str(i) for i in range(6)]
    with pytest.raises(ValueError, match="6 classes"):
        Predictor(CONFIG, "", overrides=TINY, device="cpu", class_names=["a", "b"])


def test_demo_on_a_folder(predictor, assets, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in assets["images"][:2]:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    demo.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out), "--weights",
               assets["checkpoint"], "--score-threshold", "0", "--batch-size", "2", "--device", "cpu", *TINY])
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "image0.jpg", "image1.jpg"]
    assert cv2.imread(str(out / "image0.jpg")).shape == (*IMAGE_SIZES[0], 3)
    result = json.loads((out / "detections.json").read_text())
    assert result["class_names"] == list(TOY_SHAPES_CLASSES) and result["weights"] == assets["checkpoint"]
    assert [Path(r["file"]).name for r in result["images"]] == ["image0.png", "image1.png"]
    for record, size, path in zip(result["images"], IMAGE_SIZES, assets["images"]):
        assert (record["height"], record["width"]) == size
        expected = predictor(path, as_dict=True)
        assert [d["label"] for d in record["detections"]] == expected["labels"]
        assert [d["class_name"] for d in record["detections"]] == expected["class_names"]
        np.testing.assert_allclose([d["box"] for d in record["detections"]], expected["boxes"], atol=1e-3)


def test_demo_on_a_video(assets, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write mp4v videos here")
    rng = np.random.default_rng(1)
    for _ in range(3):
        writer.write(_image(rng, 64, 64))
    writer.release()
    out = tmp_path / "out"
    # Weights through the config override instead of --weights.
    demo.main(["--config-file", CONFIG, "--input", video, "--output", str(out), "--score-threshold", "0.001",
               "--batch-size", "2", "--device", "cpu", *TINY, f"train.init_checkpoint={assets['checkpoint']}"])
    result = json.loads((out / "detections.json").read_text())
    assert result["weights"] == assets["checkpoint"] and result["fps"] == pytest.approx(5.0)
    assert [(f["frame"], f["height"], f["width"]) for f in result["frames"]] == [(i, 64, 64) for i in range(3)]
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
