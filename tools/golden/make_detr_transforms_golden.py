"""Write ``tests/golden/detr_transforms_golden.json`` by running the official DINO data pipeline
(``datasets/transforms.py`` and ``make_coco_transforms`` / ``ConvertCocoPolysToMask`` in
``datasets/coco.py``) on the inputs of ``tests/golden/detr_inputs.py``.

The official code is imported, only in :func:`main`, from the clean work tree given as the only
argument (its ``git rev-parse HEAD`` is recorded); nothing of it is copied here. Run from the
repository root, with a Python environment that has the official requirements::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_detr_transforms_golden.py PATH/TO/DINO

``datasets/coco.py`` imports ``util/slconfig.py``, which imports ``addict`` and ``yapf`` at module
level; neither is used by the transforms, so empty stand-ins are put in ``sys.modules`` where they
are not installed (recorded in ``stubs``).

``detr_transforms_golden.json``:

* ``official`` (``repo``, ``commit``), ``torch``, ``torchvision``, ``pillow``, ``command``, ``stubs``:
  provenance.
* ``config``: the ``data_aug_*`` values of ``config/DINO/coco_transformer.py`` (what
  ``make_coco_transforms`` reads from the args) and ``batch_size`` of ``config/DINO/DINO_4scale.py``
  (per process).
* ``sizes``: ``[new_h, new_w]`` of the official ``get_size_with_aspect_ratio`` (the function nested in
  ``resize``, called directly) for each ``(h, w, short_side, max_size)`` of ``detr_inputs.size_grid()``,
  in that order.
* ``crops``: one entry per ``detr_inputs.CROP_REGIONS`` region: the official ``crop`` of a
  ``CROP_IMAGE_SHAPE`` image with ``CROP_BOXES`` (labels = the box indices): ``region``, ``labels``
  (the kept boxes) and ``boxes`` (XYXY float32 values, exact in JSON).
* ``train``: for each shape of ``PIPELINE_SHAPES`` and seed of ``PIPELINE_SEEDS``: the image of
  ``pipeline_image`` and the annotations of ``pipeline_annotations`` through ``ConvertCocoPolysToMask``
  and the official training transform without its final ``ToTensor`` / ``Normalize``, right after
  ``random.seed(seed)`` and ``torch.manual_seed(seed)``: ``shape``, ``seed``, ``size`` (``[h, w]`` of the
  output), ``labels``, ``boxes`` (absolute XYXY float32), ``image_sha256`` (of the ``HWC`` uint8 RGB
  bytes), ``next_random`` (the next ``random.random()``) and ``next_torch`` (the next
  ``torch.rand(1)``): the same values tell that the same number of draws was made.
* ``val``: the same for the official validation transform, once per shape, without seeds.
"""
import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_FILE = REPO_ROOT / "tests" / "golden" / "detr_transforms_golden.json"
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for golden.detr_inputs

from golden import detr_inputs  # noqa: E402


def official_commit(root: Path) -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout

    if git("status", "--porcelain", "--untracked-files=no").strip():
        sys.exit(f"{root} has local changes: the golden file must come from a clean official commit")
    return git("rev-parse", "HEAD").strip()


def stub_missing(names):
    """Empty modules for the imports that the transforms do not use, where they are missing."""
    stubbed = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.Dict = dict  # addict.Dict
            module.FormatCode = None  # yapf.yapflib.yapf_api.FormatCode
            sys.modules[name] = module
            stubbed.append(name)
    return stubbed


def config_values(path: Path) -> dict:
    """The plain assignments of an official config file (they are all literals)."""
    values = {}
    exec(compile(path.read_text(), str(path), "exec"), {}, values)
    return values


def sha256(image) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)).tobytes()).hexdigest()


def float32_list(boxes: torch.Tensor):
    assert boxes.dtype == torch.float32
    return [[float(v) for v in box] for box in boxes.tolist()]


def official_sizes(transforms_module):
    (code,) = [c for c in transforms_module.resize.__code__.co_consts
               if isinstance(c, types.CodeType) and c.co_name == "get_size_with_aspect_ratio"]
    get_size_with_aspect_ratio = types.FunctionType(code, vars(transforms_module))
    return [list(get_size_with_aspect_ratio((w, h), s, m)) for h, w, s, m in detr_inputs.size_grid()]


def official_crops(transforms_module):
    from PIL import Image

    height, width = detr_inputs.CROP_IMAGE_SHAPE
    image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    boxes = torch.from_numpy(detr_inputs.CROP_BOXES)
    n = len(boxes)
    target = {"boxes": boxes, "labels": torch.arange(n), "area": torch.zeros(n), "iscrowd": torch.zeros(n)}
    crops = []
    for region in detr_inputs.CROP_REGIONS:
        cropped, out = transforms_module.crop(image, target, region)
        assert cropped.size == (region[3], region[2])
        crops.append({"region": list(region), "labels": out["labels"].tolist(), "boxes": float32_list(out["boxes"])})
    return crops


def run_pipeline(prepare, transform, height, width, seed=None):
    from PIL import Image

    image = Image.fromarray(detr_inputs.pipeline_image(height, width))
    annotations = detr_inputs.pipeline_annotations(height, width)
    image, target = prepare(image, {"image_id": 0, "annotations": annotations})
    if seed is not None:
        random.seed(seed)
        torch.manual_seed(seed)
    image, target = transform(image, target)
    out = {"shape": [height, width], "size": [image.height, image.width], "labels": target["labels"].tolist(),
           "boxes": float32_list(target["boxes"]), "image_sha256": sha256(image)}
    if seed is not None:
        out = {"seed": seed, **out, "next_random": random.random(), "next_torch": float(torch.rand(1))}
    return out


def main():
    import PIL
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="work tree of the official IDEA-Research/DINO")
    root = parser.parse_args().official.resolve()
    commit = official_commit(root)
    sys.path.insert(0, str(root))
    stubs = stub_missing(["addict", "yapf", "yapf.yapflib", "yapf.yapflib.yapf_api"])
    import datasets.transforms as official_transforms
    from datasets.coco import ConvertCocoPolysToMask, make_coco_transforms

    data_config = config_values(root / "config" / "DINO" / "coco_transformer.py")
    args = types.SimpleNamespace(**{k: v for k, v in data_config.items() if k.startswith("data_aug_")})
    model_config = config_values(root / "config" / "DINO" / "DINO_4scale.py")
    # main.py's defaults: no --fix_size; the DINO configs set no strong_aug.
    train = make_coco_transforms("train", fix_size=False, strong_aug=False, args=args)
    val = make_coco_transforms("val", fix_size=False, strong_aug=False, args=args)
    # Without the final Compose([ToTensor(), Normalize(...)]): the model normalises itself.
    train = official_transforms.Compose(train.transforms[:-1])
    val = official_transforms.Compose(val.transforms[:-1])
    prepare = ConvertCocoPolysToMask(return_masks=False)

    golden = {
        "official": {"repo": "IDEA-Research/DINO", "commit": commit},
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_detr_transforms_golden.py <official DINO>",
        "stubs": stubs,
        "config": {**{k: v for k, v in data_config.items() if k.startswith("data_aug_")},
                   "batch_size": model_config["batch_size"]},
        "sizes": official_sizes(official_transforms),
        "crops": official_crops(official_transforms),
        "train": [run_pipeline(prepare, train, h, w, seed)
                  for h, w in detr_inputs.PIPELINE_SHAPES for seed in detr_inputs.PIPELINE_SEEDS],
        "val": [run_pipeline(prepare, val, h, w) for h, w in detr_inputs.PIPELINE_SHAPES],
    }
    # Lists of numbers on one line each.
    text = re.sub(r"\[([-+0-9.eE,\s]+)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(golden, indent=1))
    GOLDEN_FILE.write_text(text + "\n")
    print(f"wrote {GOLDEN_FILE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
