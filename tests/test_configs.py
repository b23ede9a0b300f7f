"""Every config instantiates, the RT-DETRv2 and DEIM-RT-DETRv2 models have exactly the official
parameter counts, and the recipes carry the official values."""
import json
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.py")
                 if "common" not in p.parts)

# Official parameter counts (sum of numel over all parameters of the model built by the official
# code), from the issue and re-measured by tools/golden/make_rtdetrv2_golden.py (keys json files).
OFFICIAL_PARAMETERS = {
    "rtdetrv2_r18.py": 20_184_464,
    "rtdetrv2_r34.py": 31_441_668,
    "rtdetrv2_r50.py": 42_891_372,
    "rtdetrv2_r101.py": 76_556_268,
    "rtdetrv2_r50_m.py": 36_593_772,  # official RT-DETRv2 model zoo: 36.59M
    # DEIM-RT-DETRv2 (the official models built here measured 20.18M ... 76.66M).
    "deim_rtdetrv2_r18.py": 20_183_440,
    "deim_rtdetrv2_r34.py": 31_440_644,
    "deim_rtdetrv2_r50.py": 42_943_596,
    "deim_rtdetrv2_r50_m.py": 33_198_864,
    "deim_rtdetrv2_r101.py": 76_660_716,
}


def _load(name):
    return LazyConfig.load(str(ROOT / "configs" / name))


def _term(criterion, name):
    """The config of the criterion's loss term named ``name`` (``"vfl"``, ``"mal"``, ...)."""
    (term,) = [t for t in criterion.terms if t._target_.name == name]
    return term


def test_all_configs_are_covered():
    assert set(OFFICIAL_PARAMETERS) <= set(CONFIGS)
    assert {"quickstart/rtdetrv2_r18_toy.py", "quickstart/deim_rtdetrv2_r18_toy.py",
            "quickstart/dfine_hgnetv2_n_toy.py"} <= set(CONFIGS)
    # D-FINE and DEIM-D-FINE: tests/test_parity_dfine.py checks their counts against the official code.
    assert {f"{family}_hgnetv2_{size}.py" for family in ("dfine", "deim_dfine") for size in "nsmlx"} <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates(name):
    cfg = _load(name)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    # What train_net.py sets from the data set: here the official length in 10000 iterations.
    cfg.train.update(max_iter=10000, iters_per_epoch=10000 / (cfg.train.epochs or 100))
    lr_multiplier = instantiate(cfg.lr_multiplier)
    final = cfg.lr_multiplier.get("lr_gamma", 1.0)  # flat-cosine ends at lr_gamma
    if "drop_epochs" in cfg.lr_multiplier:  # StepDecay (DINO, DN-DETR) ends after all its drops
        final = cfg.lr_multiplier.get("gamma", 0.1) ** len(cfg.lr_multiplier.drop_epochs)
    assert lr_multiplier(0.0) > 0 and lr_multiplier(1.0) == pytest.approx(final)
    if name in OFFICIAL_PARAMETERS:
        assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS[name]
        # Official configs use the whole recipe: EMA, grad clipping, AMP on CUDA, epochs.
        assert cfg.train.ema.enabled and cfg.train.clip_grad.max_norm == 0.1 and cfg.train.epochs


@pytest.mark.parametrize("name", ["rtdetrv2_r18.py", "deim_rtdetrv2_r50.py"])
def test_coco_missing_gives_a_clear_error(name, tmp_path, monkeypatch):
    cfg = _load(name)
    # detectron2 registered COCO at import under $DETECTRON2_DATASETS (default ./datasets);
    # run from an empty folder so that relative path is surely missing.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        instantiate(cfg.dataloader.train)


def test_r18_official_recipe_values():
    cfg = _load("rtdetrv2_r18.py")
    # configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml + include/*.yml of the official repository.
    assert cfg.train.epochs == 120 and cfg.dataloader.train.mapper.policy_epoch == 117
    assert cfg.dataloader.train.multi_scale is None and cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.lr_multiplier.warmup_iters == 2000 and cfg.train.ema.warmups == 2000
    assert cfg.model.decoder.num_layers == 3 and not cfg.model.backbone.freeze_norm


# The official DEIM configs configs/deim_rtdetrv2/deim_*_coco.yml, merged with their includes by the
# official YAML loader (one per process): epochs, policy [e0, e1, e2], MixUp epochs, multi-scale
# (None: the R18 file's `scales: ~`) and its stop epoch, flat / no-aug epochs, LR, the backbone rule's
# LR, total batch size 16 (rt_optimizer.yml overrides dataloader.yml's 32).
DEIM_OFFICIAL = {
    "deim_rtdetrv2_r18.py": (120, [4, 64, 117], [4, 64], False, 117, 64, 3, 2e-4, None),
    "deim_rtdetrv2_r34.py": (120, [4, 64, 117], [4, 64], True, 117, 64, 3, 2e-4, 1e-4),
    "deim_rtdetrv2_r50.py": (60, [4, 34, 58], [4, 34], True, 58, 34, 2, 2e-4, 2e-5),
    "deim_rtdetrv2_r50_m.py": (60, [4, 34, 58], [4, 34], True, 58, 34, 2, 2e-4, 2e-5),
    "deim_rtdetrv2_r101.py": (60, [4, 34, 58], [4, 34], True, 58, 34, 2, 2e-4, 2e-6),
}


@pytest.mark.parametrize("name", sorted(DEIM_OFFICIAL))
def test_deim_official_recipe_values(name):
    epochs, policy, mixup, multi_scale, stop, flat, no_aug, lr, backbone_lr = DEIM_OFFICIAL[name]
    cfg = _load(name)
    train_loader = cfg.dataloader.train
    assert cfg.train.epochs == epochs and list(train_loader.mapper.policy_epoch) == policy
    assert list(train_loader.mixup_epochs) == mixup and train_loader.mixup_prob == 0.5
    assert train_loader.mapper.mosaic_prob == 0.5 and train_loader.mapper.mosaic.output_size == 320
    assert not train_loader.mapper.mosaic.use_cache and train_loader.mapper.mosaic.max_cached_images == 50
    assert train_loader.multi_scale == ([480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]
                                        if multi_scale else None)
    assert train_loader.multi_scale_stop_epoch == stop and cfg.train.stage_switch.epoch == stop
    assert cfg.train.stage_switch.ema_restart_decay == 0.9999 and train_loader.total_batch_size == 16
    assert (cfg.lr_multiplier.flat_epochs, cfg.lr_multiplier.no_aug_epochs) == (flat, no_aug)
    assert (cfg.lr_multiplier.warmup_iters, cfg.lr_multiplier.lr_gamma) == (2000, 0.5)
    assert cfg.lr_multiplier.initial_factor == 1 / 2000 and cfg.train.ema.warmups == 2000
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 1e-4
    backbone_rules = [r for r in cfg.optimizer.params.rules.values() if "backbone" in r["pattern"]]
    assert [r["lr"] for r in backbone_rules] == ([backbone_lr] if backbone_lr else [])
    assert cfg.model.backbone.freeze_at == -1 and not cfg.model.backbone.freeze_norm
    decoder = cfg.model.decoder
    assert (decoder.query_pos_head.method, decoder.layer.activation, decoder.query_pos_head.act) == (
        "as_reg",
        "silu",
        "silu",
    )
    assert decoder.box_head.act == decoder.query_selection.mlp_act == "silu"
    criterion = cfg.model.criterion
    assert list(criterion.losses) == ["mal", "boxes"] and _term(criterion, "mal").gamma == 1.5
    assert {k: criterion.weight_dict[k] for k in ("loss_mal", "loss_bbox", "loss_giou")} == {
        "loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}


# The official D-FINE configs configs/dfine/dfine_hgnetv2_*_coco.yml with include/*.yml: epochs,
# policy / multi-scale stop / stage-switch epoch, base_size_repeat (None: single-scale), EMA restart
# decay, total batch size, LR, backbone LR, weight decay.
DFINE_OFFICIAL = {
    "dfine_hgnetv2_n.py": (160, 148, None, 0.9999, 128, 8e-4, 4e-4, 1e-4),
    "dfine_hgnetv2_s.py": (132, 120, 20, 0.9999, 32, 2e-4, 1e-4, 1e-4),
    "dfine_hgnetv2_m.py": (132, 120, 6, 0.9999, 32, 2e-4, 2e-5, 1e-4),
    "dfine_hgnetv2_l.py": (80, 72, 4, 0.9999, 32, 2.5e-4, 1.25e-5, 1.25e-4),
    "dfine_hgnetv2_x.py": (80, 72, 3, 0.9998, 32, 2.5e-4, 2.5e-6, 1.25e-4),
}


@pytest.mark.parametrize("name", sorted(DFINE_OFFICIAL))
def test_dfine_official_recipe_values(name):
    from dfine.data import generate_scales

    epochs, stop, repeat, restart, batch, lr, backbone_lr, weight_decay = DFINE_OFFICIAL[name]
    cfg = _load(name)
    loader = cfg.dataloader.train
    assert cfg.train.epochs == epochs and loader.mapper.policy_epoch == stop and loader.mapper.get("mosaic") is None
    assert loader.multi_scale == (generate_scales(640, repeat) if repeat else None)
    assert loader.multi_scale_stop_epoch == stop and cfg.train.stage_switch.epoch == stop
    assert cfg.train.stage_switch.ema_restart_decay == restart and loader.total_batch_size == batch
    assert cfg.lr_multiplier.warmup_iters == 500 and cfg.train.ema.warmups == 1000
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == weight_decay
    assert cfg.optimizer.params.rules.backbone.lr == backbone_lr
    criterion = cfg.model.criterion
    assert (
        list(criterion.losses) == ["vfl", "boxes", "local"]
        and criterion.go_lsd
        and _term(criterion, "vfl").gamma == 2.0
    )
    assert dict(criterion.weight_dict) == {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15,
                                           "loss_ddf": 1.5}
    box_head = cfg.model.decoder.box_head
    assert box_head.reg_max == 32 and box_head.reg_scale == (8.0 if "_x" in name else 4.0)
    assert cfg.model.decoder.layer.activation == "relu"
    assert cfg.model.backbone.freeze_norm == (name in ("dfine_hgnetv2_l.py", "dfine_hgnetv2_x.py"))


# The official DEIM configs configs/deim_dfine/deim_hgnetv2_*_coco.yml with base/deim.yml: epochs,
# policy [e0, e1, e2] (MixUp [e0, e1), stop e2), flat and no-aug epochs, lr_gamma, LR, backbone LR.
DEIM_DFINE_OFFICIAL = {
    "deim_dfine_hgnetv2_n.py": (160, [4, 78, 148], 7800, 12, 1.0, 8e-4, 4e-4),
    "deim_dfine_hgnetv2_s.py": (132, [4, 64, 120], 64, 12, 0.5, 4e-4, 2e-4),
    "deim_dfine_hgnetv2_m.py": (102, [4, 49, 90], 49, 12, 0.5, 4e-4, 4e-5),
    "deim_dfine_hgnetv2_l.py": (58, [4, 29, 50], 29, 8, 0.5, 5e-4, 2.5e-5),
    "deim_dfine_hgnetv2_x.py": (58, [4, 29, 50], 29, 8, 0.5, 5e-4, 5e-6),
}


@pytest.mark.parametrize("name", sorted(DEIM_DFINE_OFFICIAL))
def test_deim_dfine_official_recipe_values(name):
    epochs, policy, flat, no_aug, lr_gamma, lr, backbone_lr = DEIM_DFINE_OFFICIAL[name]
    cfg = _load(name)
    loader = cfg.dataloader.train
    assert cfg.train.epochs == epochs and list(loader.mapper.policy_epoch) == policy
    assert list(loader.mixup_epochs) == policy[:2] and loader.mixup_prob == 0.5 and loader.mapper.mosaic_prob == 0.5
    assert loader.mapper.mosaic.output_size == 320
    assert loader.multi_scale_stop_epoch == policy[2] and cfg.train.stage_switch.epoch == policy[2]
    assert (cfg.lr_multiplier.flat_epochs, cfg.lr_multiplier.no_aug_epochs) == (flat, no_aug)
    assert (cfg.lr_multiplier.warmup_iters, cfg.lr_multiplier.lr_gamma) == (2000, lr_gamma)
    assert cfg.lr_multiplier.initial_factor == 1 / 500  # LinearWarmup(500) of optimizer.yml, iteration 0
    assert cfg.optimizer.lr == lr and cfg.optimizer.params.rules.backbone.lr == backbone_lr
    assert cfg.model.backbone.freeze_at == -1 and not cfg.model.backbone.freeze_norm
    decoder = cfg.model.decoder
    assert (decoder.layer.activation, decoder.box_head.act, decoder.box_head.lqe_act) == ("silu", "silu", "silu")
    assert decoder.query_pos_head.act == decoder.query_selection.mlp_act == "silu"
    criterion = cfg.model.criterion
    assert (
        list(criterion.losses) == ["mal", "boxes", "local"]
        and _term(criterion, "mal").gamma == 1.5
        and criterion.go_lsd
    )
    assert {k: criterion.weight_dict[k] for k in ("loss_mal", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")} == {
        "loss_mal": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5}


# Resolved by the official YAML loader from configs/deimv2/deimv2_*_coco.yml (Intellindust-AI-Lab/DEIMv2 at
# the JSON's official.commit) with tools/golden/make_deimv2_recipes_golden.py. YAML values, no arithmetic:
# compared exactly.
DEIMV2_RECIPES_GOLDEN = json.loads((ROOT / "tests" / "golden" / "deimv2_recipes.json").read_text())
DEIMV2_RECIPES = DEIMV2_RECIPES_GOLDEN["recipes"]


def test_deimv2_recipes_golden_names_its_official_commit():
    official = DEIMV2_RECIPES_GOLDEN["official"]
    assert official["repo"] == "Intellindust-AI-Lab/DEIMv2" and len(official["commit"]) == 40


@pytest.mark.parametrize("name", sorted(DEIMV2_RECIPES))
def test_deimv2_official_recipe_values(name):
    """Our configs/deimv2_{name}.py against the official recipe (golden ``deimv2_recipes.json``, read by
    the official YAML loader at the JSON's ``official.commit``): YAML values, no float arithmetic, so
    equal; the derived schedules (multi-scale sizes) are computed from them here."""
    from dfine.data import generate_scales

    official = DEIMV2_RECIPES[name]
    cfg = _load(f"deimv2_{name}.py")
    loader, mapper, size = cfg.dataloader.train, cfg.dataloader.train.mapper, official["size"]
    assert cfg.train.epochs == official["epochs"] and list(mapper.policy_epoch) == official["policy"]
    assert (mapper.mosaic_prob, mapper.mosaic.output_size, mapper.mosaic.use_cache) == (
        official["mosaic_prob"], official["mosaic_size"], True)
    assert mapper.min_box_size == official["min_box"] and loader.total_batch_size == official["batch"]
    assert mapper.image_size == cfg.dataloader.test.mapper.image_size == size
    assert list(cfg.model.decoder.query_selection.eval_spatial_size) == [size, size]
    assert [loader.mixup_prob, list(loader.mixup_epochs)] == official["mixup"]
    copy_blend = loader.copy_blend
    assert [copy_blend.prob, list(copy_blend.epochs)] == official["copyblend"]
    assert (
        copy_blend.area_threshold,
        copy_blend.num_objects,
        copy_blend.with_expand,
        list(copy_blend.expand_ratios),
    ) == (100, 3, True, [0.1, 0.25])
    assert loader.multi_scale == (generate_scales(size, official["repeat"]) if official["repeat"] else None)
    assert loader.multi_scale_stop_epoch == official["stop_epoch"] == cfg.train.stage_switch.epoch
    assert cfg.train.stage_switch.ema_restart_decay == official["restart"] and cfg.train.ema.warmups == 1000
    schedule = cfg.lr_multiplier
    assert (schedule.flat_epochs, schedule.no_aug_epochs, schedule.lr_gamma, schedule.warmup_iters) == (
        official["flat"], official["no_aug"], official["lr_gamma"], official["warmup"])
    assert schedule.initial_factor == 1 / 500  # LinearWarmup(500) of optimizer.yml, iteration 0
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (official["lr"], official["wd"])
    assert [
        [r["pattern"], r.get("lr"), r.get("weight_decay")] for r in cfg.optimizer.params.rules.values()
    ] == official["rules"]
    criterion = cfg.model.criterion
    assert list(criterion.losses) == official["losses"] and criterion.go_lsd == official["uni"]
    assert criterion.matcher.change_matcher and criterion.matcher.iou_order_alpha == 4.0
    assert criterion.matcher.matcher_change_epoch == official["matcher_epoch"]
    imagenet = list(cfg.model.pixel_mean) == [123.675, 116.28, 103.53]
    assert imagenet == official["normalize"] and (list(cfg.model.pixel_std)[0] == 58.395) == official["normalize"]


def test_deimv2_ablations_are_one_override_each():
    cfg = LazyConfig.apply_overrides(
        _load("deimv2_hgnetv2_n.py"),
        [
            "model.decoder.layer.norm_type=layer",
            "model.decoder.layer.ffn_type=mlp",
            "model.decoder.query_pos_head.shared=False",
            "model.criterion.matcher.change_matcher=False",
            "dataloader.train.copy_blend.prob=0",
        ],
    )
    decoder = instantiate(cfg.model.decoder)
    layer = decoder.layers[0]
    assert (
        isinstance(layer.norm1, torch.nn.LayerNorm) and hasattr(layer, "linear1") and not decoder.query_pos_head.shared
    )
    assert not instantiate(cfg.model.criterion).matcher.change_matcher
    assert instantiate(cfg.dataloader.train.copy_blend).prob == 0


def test_dfine_ablations_are_one_override_each():
    # FDR off: box deltas, and the "local" term finds no distributions to supervise.
    cfg = LazyConfig.apply_overrides(_load("dfine_hgnetv2_n.py"), ["model.decoder.box_head.reg_max=null"])
    decoder = instantiate(cfg.model.decoder)
    assert not decoder.box_head.distributions and decoder.box_head.dec_bbox_head[0].layers[-1].out_features == 4
    # GO-LSD off: own matches for the box terms, no distillation.
    cfg = LazyConfig.apply_overrides(_load("deim_dfine_hgnetv2_n.py"), ["model.criterion.go_lsd=False"])
    assert not instantiate(cfg.model.criterion).go_lsd


def test_deim_ablations_are_one_override_each():
    base = _load("deim_rtdetrv2_r50.py")
    # Dense O2O off: Mosaic and MixUp.
    cfg = LazyConfig.apply_overrides(_load("deim_rtdetrv2_r50.py"), ["dataloader.train.mapper.mosaic_prob=0"])
    assert cfg.dataloader.train.mapper.mosaic_prob == 0 and cfg.dataloader.train.mixup_prob == 0
    # MAL -> VFL, with RT-DETRv2's gamma 2.0 and a weight for loss_vfl.
    cfg = LazyConfig.apply_overrides(_load("deim_rtdetrv2_r50.py"), ["model.criterion.losses=[vfl,boxes]"])
    criterion = instantiate(cfg.model.criterion)
    assert (
        criterion.losses == ("vfl", "boxes")
        and criterion.terms["vfl"].gamma == 2.0
        and criterion.weight_dict["loss_vfl"] == 1
    )
    # RT-DETRv2's schedule: constant after the warm-up.
    cfg = LazyConfig.apply_overrides(_load("deim_rtdetrv2_r50.py"), ["lr_multiplier.lr_gamma=1.0"])
    cfg.train.update(max_iter=6000, iters_per_epoch=100)
    schedule = instantiate(cfg.lr_multiplier)
    assert [schedule(w) for w in (0.5, 0.9, 1.0)] == [1.0, 1.0, 1.0]
    assert base.dataloader.train.mixup_prob == 0.5


def test_deim_r50_starts_on_coco_when_it_is_there(tmp_path, monkeypatch):
    """A minimal COCO 2017 layout under ./datasets (detectron2's builtin registration): the DEIM
    config's train loader reads it and yields a Dense O2O batch, without any override."""
    import json

    import numpy as np
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from PIL import Image

    coco = tmp_path / "datasets" / "coco"
    (coco / "train2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    images, annotations = [], []
    for i in range(4):
        Image.fromarray(np.full((48, 64, 3), 40 * i, dtype=np.uint8)).save(coco / "train2017" / f"{i:012d}.jpg")
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 48, "width": 64})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 90, "bbox": [8, 8, 20, 16],
                            "area": 320.0, "iscrowd": 0})
    (coco / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    monkeypatch.chdir(tmp_path)
    cfg = _load("deim_rtdetrv2_r50.py")
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0)
    loader = instantiate(cfg.dataloader.train)
    loader.sampler.set_start_iter(2 * 4)  # epoch 4: the Dense O2O stage
    batch = next(iter(loader))
    assert len(loader.dataset) == 4 and len(batch) == 2 and batch[0]["epoch"] == 4
    assert {int(c) for s in batch for c in s["instances"].gt_classes} <= {79}  # COCO id 90 -> class 79


def _relative_imports(path: Path):
    """The config files that ``path`` imports with relative imports (``from ..x import y``)."""
    import ast

    files = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            files.append(base.joinpath(*(node.module or "").split(".")).with_suffix(".py"))
    return files


def _import_depth(path: Path) -> int:
    imported = _relative_imports(path)
    return 1 + max(map(_import_depth, imported)) if imported else 0


@pytest.mark.parametrize("name", CONFIGS)
def test_every_value_is_within_two_imports(name):
    """A concrete config reads all of its values in itself or through at most two imports (a concrete
    config, then the shared fragments of configs/common, which import nothing)."""
    assert _import_depth(ROOT / "configs" / name) <= 2
    for fragment in (ROOT / "configs" / "common").rglob("*.py"):
        assert not _relative_imports(fragment), f"{fragment} imports another config"


@pytest.mark.parametrize("name", CONFIGS)
def test_optimizer_rules_are_named(name):
    """Rules are overridden by name (``optimizer.params.rules.backbone.lr=...``), never by position."""
    rules = _load(name).optimizer.params.rules
    assert hasattr(rules, "keys") and all("pattern" in rule for rule in rules.values())


def test_an_override_names_the_rule_it_changes():
    from dfine.config import load_config

    cfg = load_config(str(ROOT / "configs" / "dfine_hgnetv2_n.py"), ["optimizer.params.rules.backbone.lr=1e-3"])
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    groups = {g["name"]: g for g in instantiate(cfg.optimizer).param_groups}
    assert groups["backbone"]["lr"] == 1e-3 and groups["backbone_norm"]["lr"] == 4e-4
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["default"]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.encoder.in_channels=[128,256,1024]",
            r"backbone outputs maps with channels \[128, 256, 512\].*encoder expects \[128, 256, 1024\]",
        ),
        (
            "model.decoder.input_proj.in_channels=[64,64,64]",
            r"encoder outputs maps with channels \[256, 256, 256\].*decoder.input_proj expects \[64, 64, 64\]",
        ),
        (
            "model.encoder.feat_strides=[8,16,64]",
            r"backbone outputs maps with strides \[8, 16, 32\].*encoder expects \[8, 16, 64\]",
        ),
        ("model.decoder.num_levels=4", r"num_points \[4, 4, 4\] must give one count per level of num_levels=4"),
        ("model.decoder.input_proj.in_strides=[8,16]", r"in_channels \[256, 256, 256\] and in_strides \[8, 16\]"),
        (
            "model.decoder.query_selection.in_strides=[16,32,64]",
            r"query_selection anchors levels of strides \[16, 32, 64\]"
            r".*input_proj makes levels of strides \[8, 16, 32\]",
        ),
    ],
)
def test_parts_that_do_not_fit_are_an_error_naming_both_sides(override, message):
    from dfine.config import load_config

    cfg = load_config(str(ROOT / "configs" / "rtdetrv2_r18.py"), [override])
    with pytest.raises(ValueError, match=message):
        instantiate(cfg.model)
