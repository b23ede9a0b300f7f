"""Shared fixtures (small generated COCO-format data sets on disk) and the test tiers.

Tiers, by module (``-m`` selects them; CI runs everything with the README's command):

* ``e2e``: train_net.py end to end (training, resuming, several processes);
* ``parity``: whole models and their parts against the goldens of the official code and of our own
  earlier code (tests/golden/);
* ``slow``: both of these and the other modules that build full-size models, export or time them.
  ``pytest tests -m "not slow"`` is the quick loop for edits (README, Development).
"""
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

# MKL picks its vector-math and BLAS kernels by CPU vendor and ISA (AVX2 on AMD, AVX-512 on Intel), and
# float32 `log` / `exp` of the two round differently in the last bit. The official models compute
# their anchors in float32 (so do we, to match them), so a golden made on one vendor would miss on the
# other by ~1e-6 (tests/test_deimv2_decoder.py). Pinning MKL's reproducibility branch to AVX2, before
# torch loads MKL, makes these steps round alike on every x86 CPU with AVX2. Set by the caller, it wins.
os.environ.setdefault("MKL_CBWR", "AVX2")

import pytest  # noqa: E402

from dfine.data.datasets import register_coco_dataset  # noqa: E402
from dfine.data.toy_shapes import TOY_SHAPES_CLASSES, prepare_toy_shapes, toy_shapes_paths

E2E_MODULES = {"test_train_net", "test_launch", "test_resume", "test_ddp", "test_custom_data", "test_finetune"}
PARITY_MODULES = {"test_parity_rtdetrv2", "test_parity_dfine", "test_parity_deimv2", "test_refactor_golden",
                  "test_backbone_encoder", "test_hgnetv2", "test_deimv2_vit", "test_deimv2_encoders",
                  "test_dino_encoder", "test_dino_swin", "test_parity_dino", "test_parity_dn_dab_detr",
                  "test_parity_dab_deformable_detr", "test_parity_deformable_detr"}
OTHER_SLOW_MODULES = {"test_export_onnx", "test_benchmark", "test_meta_arch", "test_checkpoint", "test_predictor"}
MARKERS = {
    "e2e": "train_net.py end to end",
    "parity": "compares with goldens of the official code (tests/golden/)",
    "slow": "seconds or more per test; deselect with -m 'not slow' for a quick loop",
}


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = Path(str(item.fspath)).stem
        if module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if module in PARITY_MODULES:
            item.add_marker(pytest.mark.parity)
        if module in E2E_MODULES | PARITY_MODULES | OTHER_SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """8 train / 4 val toy-shape images of 64x64 in COCO format, registered as
    ``tiny_coco_train`` and ``tiny_coco_val`` (6 classes, see ``dfine.data.toy_shapes``)."""
    root = str(tmp_path_factory.mktemp("tiny_coco") / "toy_shapes")
    prepare_toy_shapes(root, num_train=8, num_val=4, image_size=64, seed=0)
    names = {}
    for split in ("train", "val"):
        json_file, image_root = toy_shapes_paths(root, split)
        names[split] = f"tiny_coco_{split}"
        register_coco_dataset(names[split], json_file, image_root)
    return SimpleNamespace(
        root=root,
        train=names["train"],
        val=names["val"],
        thing_classes=list(TOY_SHAPES_CLASSES),
        image_size=64,
    )


@pytest.fixture
def write_coco_json():
    """A function ``write(path, images, annotations, categories) -> str`` that writes a minimal
    COCO instances json. ``images``: dicts with id/file_name/width/height; ``annotations``: dicts
    with image_id/category_id/bbox (xywh), whose id/iscrowd/area are filled in."""

    def write(path, images, annotations, categories):
        annotations = [
            {"id": i + 1, "iscrowd": 0, "area": float(a["bbox"][2] * a["bbox"][3]), **a}
            for i, a in enumerate(annotations)
        ]
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        return str(path)

    return write


@pytest.fixture
def dfine_log(caplog):
    """``caplog`` that also sees the ``dfine`` loggers, which train_net's ``setup_logger`` detaches
    from the root logger."""
    logger = logging.getLogger("dfine")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
