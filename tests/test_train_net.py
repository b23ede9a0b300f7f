"""train_net.py end to end on a tiny generated COCO set: train with checkpoints, resume, eval-only."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_net  # noqa: E402
from test_plugins import DEIM_ABLATIONS, DENOISING, FDR_ABLATIONS, TINY_DETR_DATA, small_model  # noqa: E402

_spec = importlib.util.spec_from_file_location("convert_official", ROOT / "tools" / "convert_official.py")
convert_official = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_official)

TINY_MODEL = [
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


# D-FINE-N's two levels (strides 16 and 32) give 4x4 + 2x2 memory tokens at 64x64.
TINY_DFINE = [
    "model.encoder.hidden_dim=32",
    "model.encoder.dim_feedforward=64",
    "model.encoder.eval_spatial_size=[64,64]",
    "model.decoder.input_proj.in_channels=[32,32]",
    "model.decoder.hidden_dim=32",
    "model.decoder.layer.dim_feedforward=64",
    "model.decoder.num_queries=16",
    "model.decoder.denoising.num_denoising=10",
    "model.decoder.query_selection.eval_spatial_size=[64,64]",
    "model.num_top_queries=16",
    "model.decoder.num_classes=6",
]


def _not_given_in(extra, defaults):
    """The ``defaults`` without the lengths that ``extra`` gives: a length that ``extra`` gives in
    epochs drops both defaults of that length (in epochs and in iterations), and the other way round,
    as a user's command line would give it once (train_net refuses one given both ways)."""
    twins = {f"train.{e}": f"train.{i}" for e, i in train_net.EPOCH_KEYS}
    twins.update({i: e for e, i in twins.items()})
    lengths = {key for key in train_net.command_line_keys(extra) if key in twins}
    dropped = lengths | {twins[key] for key in lengths}
    return [opt for opt in defaults if opt.split("=", 1)[0] not in dropped]


def _args(tiny_coco, output_dir, *extra, resume=False, eval_only=False, config="quickstart/rtdetrv2_r18_toy.py",
          model=TINY_MODEL):
    defaults = [
        f"train.output_dir={output_dir}",
        "train.device=cpu",
        "train.epochs=null",
        "train.eval_epochs=null",
        "train.checkpoint_epochs=null",
        "train.max_iter=10",
        "train.checkpointer.period=5",
        "train.eval_period=10",
        "train.log_period=5",
        "train.seed=0",
        f"dataloader.train.dataset.names={tiny_coco.train}",
        f"dataloader.test.dataset.names={tiny_coco.val}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.image_size=64",
        "dataloader.test.mapper.image_size=64",
        "dataloader.train.seed=0",
    ]
    opts = list(model) + _not_given_in(extra, defaults) + list(extra)
    argv = ["--config-file", str(ROOT / "configs" / config)]
    argv += ["--resume"] if resume else []
    argv += ["--eval-only"] if eval_only else []
    return train_net.default_argument_parser().parse_args(argv + opts)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def _by_iteration(output_dir):
    """metrics.json as {iteration: every scalar written for it}."""
    merged = {}
    for m in _metrics(output_dir):
        merged.setdefault(m["iteration"], {}).update(m)
    return merged


def test_train_checkpoint_resume_and_eval_only(tiny_coco, tmp_path):
    out = str(tmp_path / "run")
    train_net.main(_args(tiny_coco, out))
    assert set(os.listdir(out)) >= {"last_checkpoint", "metrics.json", "model_0000004.pth", "model_final.pth"}
    metrics = _metrics(out)
    assert any("bbox/AP" in m for m in metrics), "the final evaluation must be logged"
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    checkpoint = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 9 and checkpoint["ema"]["updates"] == 10
    assert "grad_scaler" in checkpoint["trainer"]

    # Resume from the iteration-5 checkpoint and finish the same 10 iterations.
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000004.pth")
    train_net.main(_args(tiny_coco, out, resume=True))
    resumed = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    assert resumed["iteration"] == 9 and resumed["ema"]["updates"] == 10

    results = train_net.main(_args(tiny_coco, out, f"train.init_checkpoint={out}/model_final.pth", eval_only=True))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}


def test_background_only_images_train(tiny_coco, tmp_path, write_coco_json):
    """An image with no annotations is valid training data (empty target), not an error."""
    from dfine.data.datasets import register_coco_dataset
    from dfine.data.toy_shapes import toy_shapes_paths

    json_file, image_root = toy_shapes_paths(tiny_coco.root, "train")
    data = json.loads(Path(json_file).read_text())
    empty = write_coco_json(tmp_path / "empty.json", data["images"][:2], [], data["categories"])
    register_coco_dataset("tiny_coco_background_only", empty, image_root)
    out = str(tmp_path / "bg")
    train_net.main(_args(tiny_coco, out, "dataloader.train.dataset.names=tiny_coco_background_only", "train.max_iter=3",
                         "train.eval_period=0"))
    losses = [m["total_loss"] for m in _metrics(out) if "total_loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_category_id_out_of_range_is_a_clear_error(tiny_coco, tmp_path, write_coco_json):
    from dfine.data.datasets import register_coco_dataset
    from dfine.data.toy_shapes import toy_shapes_paths

    json_file, image_root = toy_shapes_paths(tiny_coco.root, "train")
    data = json.loads(Path(json_file).read_text())
    bad = data["annotations"][:3]
    bad[1] = dict(bad[1], category_id=42)
    path = write_coco_json(tmp_path / "bad.json", data["images"], bad, data["categories"])
    register_coco_dataset("tiny_coco_bad_category", path, image_root)
    with pytest.raises(ValueError, match="42"):
        train_net.main(_args(tiny_coco, str(tmp_path / "bad"), "dataloader.train.dataset.names=tiny_coco_bad_category"))


def test_deim_toy_recipe_runs_all_stages_and_switches(tiny_coco, tmp_path):
    """The DEIM quick-start recipe on 8 images, batch 2 (4 iterations per epoch): no-aug, Dense O2O,
    RT-DETR augmentations, no-aug, with an evaluation per epoch and the stage switch at epoch 3."""
    out = tmp_path / "deim"
    train_net.main(_args(
        tiny_coco, str(out), "train.epochs=4", "train.eval_epochs=1", "train.checkpoint_epochs=1",
        "train.stage_switch.epoch=3", "dataloader.train.mapper.policy_epoch=[1,2,3]",
        "dataloader.train.mixup_epochs=[1,2]", "dataloader.train.multi_scale_stop_epoch=3",
        "dataloader.train.multi_scale=[48,64]", "lr_multiplier.flat_epochs=2", "lr_multiplier.no_aug_epochs=1",
        "lr_multiplier.warmup_iters=2", "train.log_period=1", config="quickstart/deim_rtdetrv2_r18_toy.py",
    ))
    assert {"model_best_stage1.pth", "model_final.pth"} <= set(os.listdir(out))
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 15
    assert final["trainer"]["hooks"]["StageSwitchHook"]["switched"] is True
    losses = [m for m in _metrics(out) if "loss_mal" in m]
    assert losses and all(torch.isfinite(torch.tensor([m["total_loss"] for m in losses])))
    # Dense O2O ran in its epoch only (iterations 4-7): Mosaic on some images, MixUp on some batches.
    logged = _by_iteration(out)
    mosaic = [logged[i].get("data/mosaic", 0) for i in range(16)]
    mixup = [logged[i].get("data/mixup", 0) for i in range(16)]
    assert any(mosaic[4:8]) and not any(mosaic[:4] + mosaic[8:]), mosaic
    assert any(mixup[4:8]) and not any(mixup[:4] + mixup[8:]), mixup


# The README's quick start (command 1) gave bbox AP 47.0 to 57.7 over seeds 0-2 on 2-core CPUs (AMD
# EPYC Zen 4 and Intel Sapphire Rapids; 48.7 and 47.0 for the default seed 0 on the two); the floor
# leaves room for other machines, and still fails a model that did not learn (a few AP).
QUICKSTART_AP_FLOOR = 40.0


def test_quick_start_reaches_its_ap(tmp_path):
    """configs/quickstart/rtdetrv2_r18_toy.py as the README runs it (400 iterations on the toy set,
    minutes on 2 CPU cores), only the output folder changed."""
    out = tmp_path / "quickstart"
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(ROOT / "configs" / "quickstart" / "rtdetrv2_r18_toy.py"), f"train.output_dir={out}"])
    train_net.main(args)
    final = [m for m in _metrics(out) if "bbox/AP" in m][-1]
    assert final["bbox/AP"] >= QUICKSTART_AP_FLOOR, final


@pytest.mark.parametrize("config", ["quickstart/rtdetrv2_r18_toy.py", "quickstart/deim_rtdetrv2_r18_toy.py"])
def test_max_iter_on_the_command_line_wins_over_the_configs_epochs(tiny_coco, tmp_path, config):
    """Both toy configs set ``train.epochs``; ``train.max_iter=60`` alone trains exactly 60 iterations
    (DEIM's flat-cosine schedule and stages placed in the iterations per epoch of the data set)."""
    out = tmp_path / "run"
    args = _args(tiny_coco, str(out), "train.max_iter=60", "train.eval_period=0", "train.checkpointer.period=60",
                 "train.log_period=20", config=config)
    assert "train.epochs=null" not in args.opts
    train_net.main(args)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 59
    metrics = [m for m in _metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in metrics] == [19, 39, 59]
    # The log line gives the total and its groups; metrics.json keeps every term.
    log = (out / "log.txt").read_text()
    assert "iter: 59/60  total_loss: " in log and " (classification " in log and "loss_giou:" not in log
    assert {"loss_bbox", "loss_giou", "loss_giou_aux_0", "loss_giou_dn_0"} <= set(metrics[-1])


EPOCH_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py") if p.name.startswith(("deim", "dfine")))


@pytest.mark.parametrize("config", EPOCH_CONFIGS)
def test_epochs_null_keeps_a_schedule_in_iterations(config):
    """``train.epochs=null`` on every DEIM, D-FINE and DEIMv2 config: the run is the config's
    ``train.max_iter`` iterations, and its LR schedule (DEIM's flat-cosine, whose phases are in
    epochs, or D-FINE's warm-up) is built from the iterations per epoch of the data set."""
    from dfine.config import load_config
    from dfine.solver import FlatCosine

    cfg = load_config(str(ROOT / "configs" / config), ["train.epochs=null"])
    train_net.convert_epochs(cfg, num_images=1000, command_line={"train.epochs"})
    assert cfg.train.max_iter == 90000 and cfg.train.iters_per_epoch == 1000 / cfg.dataloader.train.total_batch_size
    schedule = instantiate(cfg.lr_multiplier)
    if isinstance(schedule, FlatCosine):
        assert schedule.max_iter == 90000
        assert schedule.flat_iters == pytest.approx(cfg.lr_multiplier.flat_epochs * cfg.train.iters_per_epoch)
        assert schedule.no_aug_iters == pytest.approx(cfg.lr_multiplier.no_aug_epochs * cfg.train.iters_per_epoch)
    assert 0 < schedule(0.0) < 1 and schedule(1.0) == pytest.approx(cfg.lr_multiplier.get("lr_gamma", 1.0))


def test_deim_r50_config_trains_on_another_data_set(tiny_coco, tmp_path):
    """configs/deim_rtdetrv2_r50.py with only data set (and size) overrides, instead of COCO."""
    out = tmp_path / "deim_r50"
    train_net.main(_args(
        tiny_coco, str(out), "train.epochs=0.5", "train.eval_period=0", "dataloader.train.multi_scale=null",
        "dataloader.train.mapper.mosaic.output_size=32", "model.decoder.num_classes=6",
        config="deim_rtdetrv2_r50.py",
    ))
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 1


def test_deim_dfine_config_trains_with_go_lsd_and_evaluates(tiny_coco, tmp_path):
    """configs/deim_dfine_hgnetv2_n.py (D-FINE-N with DEIM's recipe: Dense O2O, MAL, FGL + DDF) on the
    tiny set with a narrowed model, through the stage switch, with an evaluation per epoch."""
    out = tmp_path / "deim_dfine_n"
    train_net.main(_args(
        tiny_coco, str(out), "train.epochs=4", "train.eval_epochs=1", "train.checkpoint_epochs=1",
        "train.stage_switch.epoch=3", "dataloader.train.mapper.policy_epoch=[1,2,3]",
        "dataloader.train.mixup_epochs=[1,2]", "dataloader.train.multi_scale_stop_epoch=3",
        "dataloader.train.mapper.mosaic.output_size=32", "lr_multiplier.flat_epochs=2",
        "lr_multiplier.no_aug_epochs=1", "lr_multiplier.warmup_iters=2",
        config="deim_dfine_hgnetv2_n.py", model=TINY_DFINE,
    ))
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 15 and final["trainer"]["hooks"]["StageSwitchHook"]["switched"] is True
    metrics = _metrics(out)
    losses = [m for m in metrics if "loss_ddf_aux_0" in m]
    assert losses and all(torch.isfinite(torch.tensor([m["total_loss"] for m in losses])))
    assert {"loss_mal", "loss_fgl", "loss_ddf_dn_0", "loss_bbox_pre"} <= set(losses[-1])
    assert any("bbox/AP" in m for m in metrics)


def test_deimv2_dinov3_config_trains_with_copy_blend_and_the_matcher_switch(tiny_coco, tmp_path):
    """configs/deimv2_dinov3_s.py (ViT-Tiny + STA, DEIMv2 decoder, Copy-Blend, matcher switch) on the
    tiny set with a narrowed encoder/decoder, through every stage and the stage switch."""
    out = tmp_path / "deimv2_s"
    narrow = [o for o in TINY_MODEL if "input_proj.in_channels" not in o] + [
        "model.backbone.hidden_dim=32", "model.encoder.in_channels=[32,32,32]",
        "model.decoder.input_proj.in_channels=[32,32,32]", "model.decoder.num_classes=6"]
    train_net.main(_args(
        tiny_coco, str(out), "train.epochs=4", "train.eval_epochs=2", "train.checkpoint_epochs=2",
        "train.stage_switch.epoch=3", "dataloader.train.mapper.policy_epoch=[1,2,3]",
        "dataloader.train.mixup_epochs=[1,2]", "dataloader.train.multi_scale_stop_epoch=3",
        "dataloader.train.copy_blend.epochs=[1,3]", "dataloader.train.copy_blend.prob=1.0",
        "dataloader.train.copy_blend.area_threshold=4", "model.criterion.matcher.matcher_change_epoch=2",
        "dataloader.train.mapper.mosaic.output_size=32", "lr_multiplier.flat_epochs=2",
        "lr_multiplier.no_aug_epochs=1", "lr_multiplier.warmup_iters=2", "train.log_period=1",
        config="deimv2_dinov3_s.py", model=narrow,
    ))
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 15 and final["trainer"]["hooks"]["StageSwitchHook"]["switched"] is True
    assert "backbone.dinov3._model.blocks.11.attn.qkv.weight" in final["model"]
    metrics = _metrics(out)
    losses = [m for m in metrics if "loss_mal" in m]
    assert losses and all(torch.isfinite(torch.tensor([m["total_loss"] for m in losses])))
    assert {"loss_mal", "loss_fgl", "loss_ddf_aux_0", "loss_bbox_pre"} <= set(losses[-1])
    assert any("bbox/AP" in m for m in metrics)
    # The matcher switched to the IoU-ordered cost at epoch 2 (iteration 8), and Copy-Blend pasted
    # objects in its epochs [1, 3) only: in every batch of epoch 2, where MixUp is off.
    logged = _by_iteration(out)
    assert [logged[i]["matcher/iou_order_cost"] for i in range(16)] == [0.0] * 8 + [1.0] * 8
    pasted = [logged[i].get("data/copy_blend_objects", 0) for i in range(16)]
    assert all(pasted[8:12]) and not any(pasted[:4] + pasted[12:]), pasted


def test_ablation_config_trains_rtdetrv2_with_distributions(tiny_coco, tmp_path):
    """configs/ablations/rtdetrv2_r18_fdr.py: RT-DETRv2-R18 with D-FINE's distribution head and its
    losses, a 15-line config, trains and reports the FDR and GO-LSD losses."""
    config = ROOT / "configs" / "ablations" / "rtdetrv2_r18_fdr.py"
    assert len(config.read_text().splitlines()) <= 15
    out = tmp_path / "fdr"
    train_net.main(_args(tiny_coco, str(out), "train.max_iter=3", "train.eval_period=0", "model.decoder.num_classes=6",
                         config="ablations/rtdetrv2_r18_fdr.py"))
    losses = [m for m in _metrics(out) if "total_loss" in m][-1]
    assert {"loss_vfl", "loss_fgl", "loss_ddf_aux_0", "loss_fgl_dn_0", "loss_bbox_pre"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in losses.items() if k.startswith("loss"))


@pytest.mark.parametrize("config", sorted(FDR_ABLATIONS))
def test_fdr_golsd_ablation_trains_and_evaluates(tiny_coco, tmp_path, config):
    """configs/ablations/*_fdr_golsd.py (narrowed): 3 iterations on padded batches with finite FGL and
    DDF losses on every layer (and the denoising queries), then COCOEvaluator."""
    out = tmp_path / "fdr"
    train_net.main(_args(tiny_coco, str(out), "train.max_iter=3", "train.eval_period=3", *TINY_DETR_DATA,
                         config=config, model=small_model(config)))
    losses = [m for m in _metrics(out) if "total_loss" in m][-1]
    expected = {"loss_fgl", "loss_fgl_aux_0", "loss_ddf_aux_0", "loss_bbox_pre"}
    expected |= {"loss_fgl_dn_0", "loss_ddf_dn_0"} if config in DENOISING else set()
    assert expected <= set(losses)
    assert all(math.isfinite(v) for k, v in losses.items() if k.startswith("loss"))
    assert any("bbox/AP" in m for m in _metrics(out))


@pytest.mark.parametrize("config", sorted(DEIM_ABLATIONS))
def test_deim_ablation_trains_with_mosaic_mixup_mal_and_flat_cosine(tiny_coco, tmp_path, config):
    """configs/ablations/*_deim.py (narrowed) with the Dense O2O window moved to the first epoch and
    the flat-cosine switch: every batch is Mosaic + MixUp of padded images, MAL is finite."""
    out = tmp_path / "deim"
    train_net.main(_args(
        tiny_coco, str(out), "train.max_iter=3", "train.eval_period=0", "train.log_period=1", *TINY_DETR_DATA,
        "dataloader.train.mapper.policy_epoch=[0,6,12]", "dataloader.train.mixup_epochs=[0,6]",
        "dataloader.train.mapper.mosaic_prob=1.0", "dataloader.train.mapper.mosaic.output_size=32",
        "lr_multiplier=${deim_lr_multiplier}", config=config, model=small_model(config)))
    logged = _by_iteration(out)
    assert [(logged[i]["data/mosaic"], logged[i]["data/mixup"]) for i in range(3)] == [(1.0, 1.0)] * 3
    keys = ("loss_mal", "loss_mal_aux_0", "loss_mal_enc_0") + (("loss_mal_dn_0",) if config in DENOISING else ())
    assert all(math.isfinite(logged[i][k]) for i in range(3) for k in keys)
    assert not any("focal" in k for k in logged[2])


# The toy configs of the DETR data pipeline: the DINO and DN-DAB-Deformable-DETR quick starts and the
# toy ablation cells of the README ("FDR + GO-LSD and DEIM on the DETR lineage").
DETR_TOY_CONFIGS = ["quickstart/dino_r18_toy.py", "quickstart/dn_dab_deformable_detr_r18_toy.py"] + sorted(
    str(path.relative_to(ROOT / "configs")) for path in (ROOT / "configs" / "ablations" / "toy").glob("*.py"))


@pytest.mark.parametrize("config", DETR_TOY_CONFIGS)
def test_detr_toy_config_trains_on_padded_batches_and_evaluates(tiny_coco, tmp_path, config):
    """A toy config's recipe on images that keep their aspect ratio (random resizes and crops, batches
    padded with a mask), 3 iterations, then COCOEvaluator."""
    out = tmp_path / "toy"
    train_net.main(_args(
        tiny_coco, str(out), "train.max_iter=3", "train.eval_period=3", "train.checkpointer.period=3",
        "dataloader.train.mapper.image_size=null", "dataloader.test.mapper.image_size=null",
        config=config, model=[]))
    assert any("bbox/AP" in m for m in _metrics(out)), "the final evaluation must be logged"
    losses = [m for m in _metrics(out) if "total_loss" in m]
    assert losses and all(math.isfinite(m["total_loss"]) for m in losses)


# Official checkpoints that tools/convert_official.py takes: the golden whose key layout (keys, shapes
# and alias keys of the official build) the checkpoint is made in, the entry of that golden's "models"
# (None: the golden is one model), and our config.
OFFICIAL_CHECKPOINTS = {
    "dino": ("dino_golden.json", "4scale", "dino_r50_4scale_12ep.py"),
    "dn_dab_detr": ("dn_dab_detr_golden.json", "r50", "dn_dab_detr_r50_50ep.py"),
    "dn_dab_deformable_detr": ("dab_deformable_detr_golden.json", None, "dn_dab_deformable_detr_r50_50ep.py"),
}


@pytest.mark.parametrize("family", sorted(OFFICIAL_CHECKPOINTS))
def test_official_checkpoint_converts_and_evaluates(tiny_coco, tmp_path, family):
    """An official-layout checkpoint (the official build's keys and shapes, its class rows cut to the 6
    classes of the data set and its denoising label embedding to 7, the tensors that the official model
    holds twice under all their keys) goes through tools/convert_official.py, with its strict key and
    shape check, into our config and is evaluated by ``--eval-only`` with COCOEvaluator."""
    from golden.dino_inputs import official_weights

    golden_file, entry, config = OFFICIAL_CHECKPOINTS[family]
    golden = json.loads((ROOT / "tests" / "golden" / golden_file).read_text())
    layout = golden["models"][entry] if entry else golden
    official_classes = golden["num_classes"]
    rows = {official_classes: 6, official_classes + 1: 7}  # class rows; the label embedding's rows
    shapes = {key: [rows.get(shape[0], shape[0]), *shape[1:]] if shape else shape
              for key, shape in layout["state_dict"].items()}
    official = tmp_path / "checkpoint.pth"
    torch.save({"model": official_weights(shapes, layout["aliases"]), "epoch": 11}, official)
    converted = tmp_path / f"{family}_d2.pth"
    convert_official.main(["--config-file", str(ROOT / "configs" / config), str(official), str(converted),
                           "model.decoder.num_classes=6"])
    results = train_net.main(_args(
        tiny_coco, str(tmp_path / "eval"), f"train.init_checkpoint={converted}", "model.decoder.num_classes=6",
        "dataloader.test.mapper.image_size=null", "dataloader.test.mapper.augmentations.size=256",
        "dataloader.test.mapper.augmentations.max_size=256", config=config, model=[], eval_only=True))
    assert set(results["bbox"]) >= {"AP", "AP50"}
